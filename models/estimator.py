"""What the estimators of ``models`` share: scikit-learn's parameter protocol (``get_params``,
``set_params``, ``clone``, ``repr``) without scikit-learn, which every fitted model of ``models`` takes
(the ss-RNN, its whitener and read-outs, the spike models, the filter fit), and the error each raises
when used unfitted."""

from __future__ import annotations

import copy
import inspect

import numpy as np


class NotFittedError(RuntimeError):
    """Raised when a model is used before ``fit``."""


class Params:
    """The parameter protocol of scikit-learn's estimators, without scikit-learn.

    ``get_params`` reads the constructor's arguments back from the attributes of the same names
    (every estimator here stores each argument as given, under its own name), ``set_params``
    changes them, :func:`clone` builds an unfitted copy and ``repr`` shows the arguments that
    differ from their defaults, as ``sklearn.base.BaseEstimator`` does; ``sklearn.base.clone``
    works on these estimators.
    """

    @classmethod
    def _param_names(cls) -> list[str]:
        """The constructor's keyword arguments, in the signature's order."""
        init = cls.__init__
        if init is object.__init__:
            return []
        names = []
        for p in inspect.signature(init).parameters.values():
            if p.name == "self" or p.kind == p.VAR_KEYWORD:
                continue
            if p.kind == p.VAR_POSITIONAL:
                raise RuntimeError(
                    f"{cls.__name__}'s constructor takes *{p.name}: its parameters cannot be "
                    "listed (an estimator's constructor names each of them)"
                )
            names.append(p.name)
        return names

    def get_params(self, deep: bool = True) -> dict:
        """The constructor's arguments as this estimator holds them.

        Parameters
        ----------
        deep : bool, default True
            Also list the parameters of arguments that are estimators themselves, as
            ``<argument>__<parameter>`` (a :class:`~v1motion.models.spikes.glm.StimulusLocked`'s
            ``model``, an R-GLM's fitted start ``init``).

        Returns
        -------
        dict
            Argument name -> value; ``type(m)(**m.get_params(deep=False))`` builds the same
            unfitted model.
        """
        out = {}
        for name in self._param_names():
            value = getattr(self, name)
            if deep and hasattr(value, "get_params") and not isinstance(value, type):
                out.update((f"{name}__{k}", v) for k, v in value.get_params(deep=True).items())
            out[name] = value
        return out

    def set_params(self, **params):
        """Set constructor arguments (``<argument>__<parameter>`` for a nested estimator's) and
        return ``self``; an unknown name raises ``ValueError`` listing the valid ones and sets
        nothing. A fitted model keeps its fitted parameters, but its predictions read some arguments
        at once (a spike GLM's ``n_lags``, ``link``: a score changed, or failed; an ss-RNN's
        ``n_atoms``): fit it again after changing them."""
        valid = self.get_params(deep=False)
        own, nested = {}, {}
        for key, value in params.items():
            name, delim, sub = key.partition("__")
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid parameters: "
                    f"{sorted(valid)}"
                )
            if not delim:
                own[name] = value
            elif hasattr(own.get(name, valid[name]), "set_params"):
                nested.setdefault(name, {})[sub] = value
            else:
                raise ValueError(
                    f"invalid parameter {key!r} for {type(self).__name__}: {name!r} is not an "
                    "estimator with parameters of its own"
                )
        for name, value in own.items():
            setattr(self, name, value)
        for name, sub in nested.items():
            getattr(self, name).set_params(**sub)
        return self

    def __repr__(self) -> str:
        defaults = {
            k: p.default
            for k, p in inspect.signature(type(self).__init__).parameters.items()
            if k != "self"
        }
        shown = [
            f"{k}={v!r}"
            for k, v in self.get_params(deep=False).items()
            if _differs(v, defaults.get(k, inspect.Parameter.empty))
        ]
        return f"{type(self).__name__}({', '.join(shown)})"


def _differs(value, default) -> bool:
    """Whether an argument differs from its default (for ``repr``; arrays and odd types compare
    without raising)."""
    if value is default:
        return False
    if isinstance(value, np.ndarray) or isinstance(default, np.ndarray):
        return not (
            isinstance(value, np.ndarray)
            and isinstance(default, np.ndarray)
            and np.array_equal(value, default)
        )
    if type(value) is not type(default) and not (
        isinstance(value, (int, float)) and isinstance(default, (int, float))
    ):
        return True
    try:
        return bool(value != default)
    except Exception:  # a comparison that is not a truth value
        return True


def clone(estimator):
    """A new unfitted estimator with the same parameters (``sklearn.base.clone`` without
    scikit-learn): nested estimators (a ``StimulusLocked``'s ``model``) are cloned too and other
    arguments deep-copied, so fitting the clone leaves ``estimator`` as it was. The arguments an
    estimator takes fitted (``_fitted_params``: an R-GLM's ``init``, the GLM it starts from) are
    copied with their fit (``sklearn.base.clone`` clones them unfitted, and the fit then fails)."""
    keep = getattr(type(estimator), "_fitted_params", ())
    params = {
        k: clone(v)
        if hasattr(v, "get_params") and not isinstance(v, type) and k not in keep
        else copy.deepcopy(v)
        for k, v in estimator.get_params(deep=False).items()
    }
    return type(estimator)(**params)
