"""The ``v1motion stfit`` report: fit quality, eigenvalues of R, and the streaming RNN against the
feed-forward bank on a video (JSON + PNG)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict

import numpy as np

from v1motion.models.stfilter.fit import RecurrentFilterFit
from v1motion.models.stfilter.stream import FeedForwardStream, RecurrentStream

log = logging.getLogger(__name__)


def load_video(path, n_frames: int = 60, height: int = 60, width: int = 80) -> np.ndarray:
    """Read up to ``n_frames`` grey frames of a video file, resized to ``height x width``.

    Returns
    -------
    ndarray, shape (T, height, width), float32, zero mean and unit standard deviation overall.
    """
    import cv2

    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {path}")
    frames = []
    try:
        while len(frames) < n_frames:
            ok, img = cap.read()
            if not ok:
                break
            grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
            frames.append(cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA))
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"no frames could be decoded from {path}")
    return _standardise(np.asarray(frames, dtype=np.float32))


def synthetic_video(n_frames: int = 60, height: int = 60, width: int = 80, seed: int = 0):
    """Drifting gratings of random direction, speed and frequency plus white noise, ``(T, H, W)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    t = np.arange(n_frames, dtype=np.float32)[:, None, None]
    video = 0.3 * rng.normal(size=(n_frames, height, width)).astype(np.float32)
    for _ in range(6):
        theta, f = rng.uniform(0, 2 * np.pi), rng.uniform(0.04, 0.2)
        v, phase = rng.uniform(0.2, 2.0), rng.uniform(0, 2 * np.pi)
        u = xx * np.cos(theta) + yy * np.sin(theta)
        video += np.cos(2 * np.pi * f * (u - v * t) + phase).astype(np.float32)
    return _standardise(video)


def _standardise(video):
    video = video - video.mean()
    return (video / max(float(video.std()), 1e-12)).astype(np.float32)


def compare_streams(model: RecurrentFilterFit, bank: np.ndarray, video: np.ndarray) -> dict:
    """Run the fitted RNN and the feed-forward bank on ``video`` and compare their outputs.

    The relative error ``||x_rnn - x_ff|| / ||x_ff||`` is reported over all frames and over the
    frames after the first ``nt`` (where the bank sees only real frames); the latter figures are
    ``None`` for a video of ``nt`` frames or fewer.
    """
    nt, n, ly, lx = bank.shape
    rnn = RecurrentStream(model.R_, model.W0_, ly, lx)
    ff = FeedForwardStream(bank)
    err2 = np.zeros(len(video))
    ref2 = np.zeros(len(video))
    corr = []
    seconds = {"rnn": 0.0, "ff": 0.0}
    for t, frame in enumerate(video):
        t0 = time.perf_counter()
        a = rnn.step(frame)
        t1 = time.perf_counter()
        b = ff.step(frame)
        t2 = time.perf_counter()
        seconds["rnn"] += t1 - t0
        seconds["ff"] += t2 - t1
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        err2[t] = np.sum((a64 - b64) ** 2)
        ref2[t] = np.sum(b64**2)
        if t >= nt:
            corr.append(np.corrcoef(a64.ravel(), b64.ravel())[0, 1])
    steady = slice(nt, None)
    after_nt = len(video) > nt  # else no frame has a full history: nothing to report after nt
    return {
        "frames": int(len(video)),
        "frame_shape": list(video.shape[1:]),
        "locations_per_frame": int(rnn.n_locations),
        "relative_error_all_frames": float(np.sqrt(err2.sum() / ref2.sum())),
        "relative_error_after_nt": (
            float(np.sqrt(err2[steady].sum() / ref2[steady].sum())) if after_nt else None
        ),
        "output_variance_explained_after_nt": (
            float(1 - err2[steady].sum() / ref2[steady].sum()) if after_nt else None
        ),
        "correlation_after_nt": float(np.mean(corr)) if corr else None,
        "relative_error_per_frame": np.sqrt(err2 / np.maximum(ref2, 1e-30)).tolist(),
        "seconds_per_frame_rnn": seconds["rnn"] / len(video),
        "seconds_per_frame_feedforward": seconds["ff"] / len(video),
        "state_bytes_rnn": int(rnn.state_bytes),
        "state_bytes_feedforward": int(ff.state_bytes),
    }


def _group_ve(ve, params):
    groups = {}
    for key in ("spatial_frequency", "speed", "direction"):
        acc = defaultdict(list)
        for v, p in zip(ve, params, strict=True):
            acc[round(float(getattr(p, key)), 4)].append(v)
        groups[key] = {str(k): float(np.mean(v)) for k, v in sorted(acc.items())}
    return groups


def fit_summary(model: RecurrentFilterFit, params=None) -> dict:
    """The fit's numbers as a JSON-ready dict."""
    nt, n, ly, lx = model.bank_shape_
    ve = model.variance_explained_
    eig = model.eigenvalues_
    out = {
        "bank_shape": {"nt": nt, "n_filters": n, "ly": ly, "lx": lx},
        "density": float(model.R_.nnz / n**2),
        "nonzeros_R": int(model.R_.nnz),
        "init": model.init,
        "max_iter": model.max_iter,
        "iterations_run": len(model.loss_history_) - 1,
        "fit_seconds": float(model.fit_seconds_),
        "variance_explained_overall": float(model.variance_explained_total_),
        "variance_explained_overall_at_init": float(model.init_variance_explained_total_),
        "variance_explained_per_filter": {
            "min": float(ve.min()),
            "p05": float(np.percentile(ve, 5)),
            "median": float(np.median(ve)),
            "max": float(ve.max()),
            "fraction_above_0.9": float(np.mean(ve >= 0.9)),
        },
        "loss_history": [float(v) for v in model.loss_history_],
        "spectral_radius_R": float(np.abs(eig).max()),
        "eigenvalues_R": {"real": eig.real.tolist(), "imag": eig.imag.tolist()},
        "parameters": {
            "rnn": int(model.R_.nnz + model.W0_.size),
            "bank": int(nt * n * ly * lx),
        },
        "flops_per_location_and_frame": {
            "feedforward": 2 * n * lx * ly * nt,
            "recurrent": 2 * model.R_.nnz + 2 * n * lx * ly,
        },
        "variance_explained_per_filter_values": ve.tolist(),
    }
    if params is not None:
        out["variance_explained_by_group"] = _group_ve(ve, params)
    return out


def load_rnn(path):
    """Read ``rnn.npz`` written by :func:`write_report`: returns ``(R csr, W0, bank_shape)``."""
    import scipy.sparse as sp

    with np.load(path) as z:
        n = z["W0"].shape[0]
        R = sp.csr_matrix((z["R_data"], z["R_indices"], z["R_indptr"]), shape=(n, n))
        return R, z["W0"], tuple(int(v) for v in z["bank_shape"])
