"""Training is a function of its seed: same seed, same bits, whatever thread pools the caller set up.

The learning loop is chaotic: the greedy pursuit turns a last-bit difference in ``R`` or ``b`` into a
different active unit, and over a full run into different weights. Sums split over threads are added in
another order for another thread count, so the training entry points run single-threaded themselves.
"""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import v1motion.models.motion.build as build
from v1motion.models.determinism import numeric_environment, single_threaded
from v1motion.models.motion import kernels
from v1motion.models.motion.stimuli import load_still
from v1motion.models.motion.training import TrainConfig, fit_ssrnn, train_ssrnn
from v1motion.models.motion.whitening import Whitener

STILLS = ("camera", "grass", "brick")


def _thread_counts() -> list[int]:
    """OpenCV's thread count and every BLAS / OpenMP pool's, in one list."""
    return [cv2.getNumThreads()] + [pool["num_threads"] for pool in threadpool_info()]


def _short_training(seed: int):
    """A run of seconds that goes through both phases, dead-atom revival and clone splitting."""
    stills = {name: load_still(name) for name in STILLS}
    cfg = TrainConfig(
        n_atoms=16, n_clones=2, batch=20, steps_w=20, steps_r=60, split_every=10, dead_every=10,
        seed=seed,
    )  # fmt: skip
    whitener = Whitener(cfg.whiten_size).fit(list(stills.values()), n_patches=5000, seed=seed)
    model, _ = train_ssrnn(cfg, whitener, stills, {}, progress=False)
    return model


def _params(model) -> dict:
    return {"W": model.W_, "b": model.b_, "R": model.R_, "whiten": model.whitener_.kernel_}


def _assert_identical(a, b):
    pa, pb = _params(a), _params(b)
    for name in pa:
        assert np.array_equal(pa[name], pb[name]), (
            f"{name} differs by {np.abs(pa[name] - pb[name]).max()}"
        )


@pytest.fixture
def two_threads():
    """Thread pools as a multi-core default would leave them (as far as this machine allows)."""
    previous = cv2.getNumThreads()
    cv2.setNumThreads(2)
    try:
        with threadpool_limits(limits=2):
            yield
    finally:
        cv2.setNumThreads(previous)


def test_single_threaded_pins_and_restores_the_callers_counts_even_on_error(two_threads):
    before = _thread_counts()
    with pytest.raises(RuntimeError, match="inside"):
        with single_threaded():
            assert _thread_counts() == [1] * len(before)
            with single_threaded():
                pass
            assert _thread_counts() == [1] * len(before)
            raise RuntimeError("inside")
    assert _thread_counts() == before


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    first, second = _short_training(0), _short_training(0)
    _assert_identical(first, second)
    other = _short_training(1)
    assert not np.array_equal(first.W_, other.W_)
    assert not np.array_equal(first.R_, other.R_)


def test_weights_do_not_depend_on_the_callers_thread_counts(two_threads):
    # Before the training pinned its own threads, two BLAS threads changed b here by 5e-7 (the split
    # GEMMs of phase 2). At full size the runs parted from the first phase-2 step on, and 200 steps
    # later W differed by 0.7 and R by 3.7: the size of the gap to the shipped weights.
    many = _short_training(0)
    with threadpool_limits(limits=1):
        one = _short_training(0)
    _assert_identical(many, one)


def test_learning_loop_runs_single_threaded_and_restores_the_callers_threads(two_threads):
    before = _thread_counts()
    seen = []
    rng = np.random.default_rng(0)

    def batch():
        seen.append(_thread_counts())
        return rng.standard_normal((4, 3, 16)).astype(np.float32)

    cfg = TrainConfig(n_atoms=4, n_clones=1, patch=4, batch=4, seq_len=3, steps_w=2, steps_r=2)
    fit_ssrnn(cfg, batch, rng, progress=False)
    assert seen and all(counts == [1] * len(counts) for counts in seen)
    assert _thread_counts() == before


def test_build_all_runs_every_stage_single_threaded(two_threads, monkeypatch, tmp_path):
    """The library entry point pins its own threads: callers other than the CLI get the same weights."""
    before = _thread_counts()
    seen = {}

    def record(stage, result):
        def fake(*args, **kwargs):
            seen[stage] = _thread_counts()
            return result

        return fake

    frames = np.random.default_rng(0).random((3, 40, 40)).astype(np.float32)
    history = {"active": [1.0], "r2": [0.5], "b_mean": [-3.0], "r_abs_max": [1.0]}
    info = {"config": {}}
    monkeypatch.setattr(build, "load_training_movies", record("movies", {"clip": frames}))
    monkeypatch.setattr(build, "training_stills", record("stills", {"still": frames[0]}))
    monkeypatch.setattr(build, "train_ssrnn", record("train", (None, history)))
    monkeypatch.setattr(
        build, "finish_weights", record("finish", (SimpleNamespace(metrics={}), None, info))
    )
    build.build_all(tmp_path, TrainConfig(), control=False, progress=False)
    assert set(seen) == {"movies", "stills", "train", "finish"}
    for stage, counts in seen.items():
        assert counts == [1] * len(counts), f"{stage} ran with threads {counts}"
    assert _thread_counts() == before


def test_whitener_fit_runs_single_threaded(two_threads, monkeypatch):
    seen = []
    real = np.linalg.eigh

    def eigh(a):
        seen.append(_thread_counts())
        return real(a)

    monkeypatch.setattr(np.linalg, "eigh", eigh)
    Whitener(5).fit(np.random.default_rng(0).random((2, 30, 30)), n_patches=500)
    assert seen and seen[0] == [1] * len(seen[0])


@pytest.mark.parametrize(
    "kernel",
    [
        kernels._ssrnn_infer_frame,
        kernels._infer_patches,
        kernels._pursuit_patch,
        kernels._frame_setup,
        kernels._best_clones,
        kernels._max_gain,
    ],
)
def test_training_kernels_are_serial_and_strict(kernel):
    """No ``parallel`` (thread-count-dependent reductions) and no ``fastmath`` flag that may reorder
    a sum (``reassoc``, ``contract`` or all of them): only ``nnan``/``ninf``/``nsz``, which leave a
    max, the one reduction that uses them, exact in any order."""
    options = kernel.targetoptions
    assert not options.get("parallel", False)
    fastmath = options.get("fastmath", False)
    assert fastmath is False or set(fastmath) <= {"nnan", "ninf", "nsz"}


def test_numeric_environment_names_what_fixes_the_bits():
    with single_threaded():
        env = numeric_environment()
    assert env["numpy"] == np.__version__
    assert env["opencv_threads"] == 1
    assert env["thread_pools"] and all(pool["num_threads"] == 1 for pool in env["thread_pools"])
    assert all(isinstance(f, str) for f in env["numpy_simd"])
