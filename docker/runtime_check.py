"""Run every run-time feature of the service once, inside the image, at build time.

The Dockerfile runs this as the app user after the venv has been pruned, so that

- every Numba kernel the service uses is compiled into ``NUMBA_CACHE_DIR`` (the container is ready in
  seconds instead of compiling at each start), and
- an image that lacks something the service imports at run time fails to *build*, instead of failing
  on a user's first request.

It walks the features, not the code: the motion engines (trained and random), the synthetic source's
still image and the offline commands' other stills (scikit-image's data), the browser camera's optical
flow, OpenCV's LAPACK calls, a whole video job (FFmpeg decode, overlay MP4, summary figure with
matplotlib), a fit of every spike-model kind (scipy), the language model. At the end it prints the
third-party packages that were loaded, and fails if one of those ``--absent`` (pruned from the image)
was needed after all.

    python docker/runtime_check.py --absent networkx pip --require ray
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _step(name: str, fn) -> None:
    t0 = time.perf_counter()
    fn()
    print(f"runtime check: {name}: ok ({time.perf_counter() - t0:.1f} s)", flush=True)


def _import_all() -> None:
    """Import every module of the two packages (catches a missing top-level import)."""
    from v1motion import models, service

    for pkg in (models, service):
        for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            if info.name.endswith("ray_runner"):
                continue  # imports Ray lazily; only the Ray image has it
            importlib.import_module(info.name)


def _engines() -> None:
    from v1motion.models.motion.engine import MotionEngine, compile_kernels

    compile_kernels()  # the shipped engine, serial and (on a multi-core build) threaded
    MotionEngine.random().warmup()


def _stills() -> None:
    """The synthetic source's still, and every other still the offline commands read (the image
    keeps only these of scikit-image's data files, and only the part of scikit-image that loads them)."""
    from v1motion.models.motion.stimuli import STILL_NAMES, load_still

    assert load_still("astronaut").ndim == 2
    for name in STILL_NAMES:
        assert load_still(name).ndim == 2, name


def _camera_flow() -> None:
    from v1motion.models.motion.flow import DISFlow

    rng = np.random.default_rng(0)
    a = (rng.random((96, 128)) * 255).astype(np.uint8)
    flow = DISFlow()
    flow.step(a, 16)
    assert flow.step(np.roll(a, 2, axis=1), 16) is not None


def _opencv_lapack() -> None:
    """cv2's SVD and QR solvers go through LAPACK, which docker/share_blas.sh pointed at scipy's
    OpenBLAS: their results must match numpy's on random matrices, in float32 and float64."""
    import cv2

    rng = np.random.default_rng(0)
    for dtype, tol in ((np.float32, 1e-3), (np.float64, 1e-9)):
        a = rng.standard_normal((64, 64)).astype(dtype)
        b = rng.standard_normal((64, 3)).astype(dtype)
        for flag in (cv2.DECOMP_SVD, cv2.DECOMP_QR):
            ok, x = cv2.solve(a, b, flags=flag)
            assert ok and np.allclose(a.astype(np.float64) @ x, b, atol=100 * tol), flag
        w = cv2.SVDecomp(a)[0].ravel()
        expected = np.linalg.svd(a.astype(np.float64), compute_uv=False)
        assert np.allclose(np.sort(w)[::-1], expected, rtol=10 * tol, atol=10 * tol)


def _video_job() -> None:
    import cv2

    from v1motion.service.jobs.engines import engine_factory
    from v1motion.service.jobs.layout import RESULT_FILES
    from v1motion.service.jobs.limits import Limits
    from v1motion.service.jobs.process import process_video

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "clip.avi"
        writer = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (128, 96))
        tex = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        for i in range(12):
            frame = np.full((96, 128, 3), 30, np.uint8)
            frame[32:64, 8 + 2 * i : 40 + 2 * i] = tex
            writer.write(frame)
        writer.release()
        out = Path(tmp) / "out"
        result = process_video(src, out, engine_factory("random"), Limits())
        assert result["frames"] == 12, result
        missing = [n for n in RESULT_FILES if not (out / n).is_file()]
        assert not missing, f"video job wrote no {missing}"


def _spike_models() -> None:
    from v1motion.models.spikes.registry import MODEL_KINDS, fit_and_score

    rng = np.random.default_rng(0)
    counts = rng.poisson(0.3, size=(10, 40, 4)).astype(np.float64)
    for kind in MODEL_KINDS:
        fit_and_score(counts, kind)


def _language_model() -> None:
    from v1motion.models.language.scoring import LanguageScorer
    from v1motion.service.settings import Settings

    scorer = LanguageScorer.from_file(Settings.model_fields["lm_weights"].default)
    scorer.score("the cat sat on the mat")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--absent", nargs="*", default=[], help="packages pruned from the image")
    parser.add_argument("--require", nargs="*", default=[], help="modules this image must have")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    for name in args.require:
        _step(f"import {name}", lambda name=name: importlib.import_module(name))
    _step("import every module of models and service", _import_all)
    _step("motion engines (trained, random): kernels compiled", _engines)
    _step("stills (synthetic source and offline commands)", _stills)
    _step("camera optical flow", _camera_flow)
    _step("OpenCV linear algebra (scipy's OpenBLAS)", _opencv_lapack)
    _step("video job (decode, motion map, overlay, summary figure)", _video_job)
    _step("spike models, every kind", _spike_models)
    _step("language model", _language_model)
    loaded = sorted(
        {
            name.partition(".")[0]
            for name, mod in list(sys.modules.items())
            if mod is not None and "site-packages" in str(getattr(mod, "__file__", "") or "")
        }
    )
    print("runtime check: third-party packages loaded:", " ".join(loaded))
    needed = sorted(set(args.absent) & set(loaded))
    if needed:
        print(f"runtime check: pruned but needed: {needed}", file=sys.stderr)
        return 1
    print(f"runtime check: all features ran in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
