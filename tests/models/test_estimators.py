"""Every fitted model of ``models`` speaks scikit-learn's parameter protocol: the read-outs, the
whitener and the filter fit printed as ``<... object at 0x...>`` and had no ``get_params``, so a
grid search or ``clone`` over them failed where it worked on the ss-RNN and the spike models."""

from __future__ import annotations

import numpy as np
import pytest

from v1motion.models.estimator import NotFittedError, Params, clone
from v1motion.models.motion.mt_readout import MTReadout
from v1motion.models.motion.readout import MotionReadout
from v1motion.models.motion.whitening import Whitener
from v1motion.models.stfilter.fit import RecurrentFilterFit

CASES = [
    (MTReadout, {"n_hidden": 16, "epochs": 3, "seed": 4}),
    (MotionReadout, {"alphas": (0.5, 5.0)}),
    (Whitener, {"size": 7, "eps_rel": 0.1}),
    (RecurrentFilterFit, {"density": 0.1, "init": "random", "max_iter": 7, "seed": 2}),
]


@pytest.mark.parametrize(("cls", "args"), CASES, ids=[c.__name__ for c, _ in CASES])
def test_parameters_are_read_back_changed_and_cloned(cls, args):
    m = cls(**args)
    assert isinstance(m, Params)
    params = m.get_params()
    assert {k: params[k] for k in args} == args
    assert set(params) == set(cls._param_names())
    # repr names what differs from the defaults, and only that
    assert repr(m) == f"{cls.__name__}({', '.join(f'{k}={v!r}' for k, v in args.items())})"
    twin = clone(m)
    assert type(twin) is cls and twin is not m and twin.get_params() == params
    name, value = next(iter(args.items()))
    other = type(value)(value * 2) if not isinstance(value, str | tuple) else value
    assert m.set_params(**{name: other}) is m and m.get_params()[name] == other
    with pytest.raises(ValueError, match="invalid parameter 'nope'"):
        m.set_params(nope=1)


def test_a_clone_of_a_fitted_model_is_unfitted_and_leaves_the_fit_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    direction = rng.uniform(0, 2 * np.pi, 200)
    speed = rng.uniform(0.5, 3.0, 200)
    fitted = MotionReadout(alphas=(1.0,)).fit(x, direction, speed)
    before = fitted.predict(x[:3])
    twin = clone(fitted)
    with pytest.raises(NotFittedError):
        twin.predict(x[:3])
    assert np.array_equal(fitted.predict(x[:3]), before)
