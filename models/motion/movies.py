"""Natural movies for training: real camera clips and panned stills with known velocity."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import cv2
import numpy as np

from v1motion.models.datasets import require_shared_data
from v1motion.models.motion.stimuli import TRAIN_STILLS, load_still

log = logging.getLogger(__name__)

CLIPS = ("vtest.avi", "box.mp4", "cup.mp4", "tree.avi")


def read_grey_frames(path: Path, max_frames: int, scale: float = 0.5, start: int = 0) -> np.ndarray:
    """Decode up to ``max_frames`` frames from frame ``start`` on, as float32 grey in [0, 1], resized by
    ``scale``."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {path.name}")
    frames = []
    try:
        for _ in range(start):
            if not cap.grab():
                break
        while len(frames) < max_frames:
            ok, frame = cap.read()
            if not ok:
                break
            grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
            if scale != 1.0:
                grey = cv2.resize(grey, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frames.append(grey.astype(np.float32) / 255.0)
    finally:
        cap.release()
    if not frames:
        raise ValueError(f"video {path.name} has no decodable frames")
    return np.stack(frames)


def load_clip(name: str, max_frames: int = 300, scale: float = 0.5, start: int = 0) -> np.ndarray:
    """One of the shared real camera clips, from frame ``start`` on; ``vtest.avi`` is reassembled from
    its three parts."""
    videos = require_shared_data("videos")
    if name == "vtest.avi":
        with tempfile.TemporaryDirectory() as tmp:
            joined = Path(tmp) / "vtest.avi"
            with joined.open("wb") as out:
                for i in range(3):
                    out.write((videos / f"vtest.avi.part{i}").read_bytes())
            return read_grey_frames(joined, max_frames, scale, start)
    return read_grey_frames(videos / name, max_frames, scale, start)


def load_training_movies(max_frames: int = 300, scale: float = 0.5) -> dict[str, np.ndarray]:
    """All clips that decode, by name. Missing data raises a clear error."""
    out = {}
    for name in CLIPS:
        out[name] = load_clip(name, max_frames, scale)
        log.info("loaded %s: %d frames of %dx%d", name, *out[name].shape)
    return out


def training_stills() -> dict[str, np.ndarray]:
    return {name: load_still(name) for name in TRAIN_STILLS}
