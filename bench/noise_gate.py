"""Which cells does the noise gate show still? (issue 11: a still background shown moving)

    python bench/noise_gate.py [--size 320x240] [--md PATH]
    python bench/noise_gate.py --md docs/motion/noise_gate.md   # the committed report

The engine as shipped but with its noise gate off (``noise_gate = None``) runs quick versions of the
accuracy benchmark's families (pans at 0.25-16 px/frame, gratings, plaids, an object over a still
background, still frames, the four real clips) and the eight stills of ``bench/still_confidence.py``
with camera noise (2, 4 and 8 /255 through JPEG of quality 80, 4/255 without, 6/255 through an mp4v
video file, whose frames between key frames carry the noise of the frames before). On every frame after
the eighth, per cell, it takes the statistics the gate reads (``MotionEngine._cell_changes``): the
mean squared change since the frame before (``s1``, grey levels squared) and its growth over two
frames, ``(s2 - s1) / s1``; and the engine's confidence. Per family, over the cells confident
without the gate (> 0.5, the accuracy benchmark's "shown moving"): percentiles of the growth and of
``s1``, and the share of them the gate (``NOISE_GATE``) would take below 0.5.

Then the four real clips (40 frames each) with camera noise added (none; 4 and 8 /255 through JPEG
of quality 80), read by the engine with and without the gate: of the cells that DIS MEDIUM, on the
clean frames, sees move more than 1 px/frame, the share shown moving (confidence > 0.5), and of
those it sees move less than 0.2 px/frame, the share shown moving (false motion), frames 8 and on.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import cv2
import numpy as np

from v1motion.models.motion import motion_eval as me
from v1motion.models.motion import stimuli
from v1motion.models.motion.engine import NOISE_GATE, MotionEngine
from v1motion.models.motion.kernels import _image_change

STILLS = ("chelsea", "astronaut", "coffee", "camera", "rocket", "brick", "gravel", "grass")
NOISY = ((2.0, 80), (4.0, 80), (4.0, None), (8.0, 80), (6.0, "mp4v"))
"""(noise /255, JPEG quality, or "mp4v": the frames through an mp4v video file, or None) of the noisy
stills."""
FAMILIES = {
    "pan": {"n_directions": 4, "speeds": (0.25, 1.0, 4.0, 16.0), "n_frames": 14},
    "clip": {"clips": ("box.mp4", "vtest.avi", "tree.avi", "cup.mp4"), "n_frames": 24},
}
WARMUP = 8
CONFIDENT = 0.5


def through_mp4v(frames: list) -> list:
    """uint8 grey ``frames`` written to an mp4v video (OpenCV's, 30 fps) and read back."""
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "still.mp4")
        h, w = frames[0].shape
        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), 30, (w, h))
        for f in frames:
            writer.write(cv2.cvtColor(f, cv2.COLOR_GRAY2BGR))
        writer.release()
        cap, out = cv2.VideoCapture(path), []
        while True:
            ok, f = cap.read()
            if not ok:
                return out
            out.append(cv2.cvtColor(f, cv2.COLOR_BGR2GRAY))


def noisy_still(name: str, size: tuple[int, int], noise: float, quality, n: int) -> list:
    """``n`` uint8 frames of the still ``name`` scaled to ``size``, noise of ``noise`` /255 per
    frame, through JPEG of ``quality``, through an mp4v video (``"mp4v"``) or neither (``None``)."""
    img = cv2.resize(
        stimuli.load_still(name).astype(np.float32), size, interpolation=cv2.INTER_AREA
    )
    rng = np.random.default_rng(0)
    frames = []
    for _ in range(n):
        u8 = np.round(np.clip(img + rng.normal(0, noise / 255, img.shape), 0, 1) * 255)
        u8 = u8.astype(np.uint8)
        if isinstance(quality, int):
            u8 = cv2.imdecode(cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)
        frames.append(u8)
    return through_mp4v(frames) if quality == "mp4v" else frames


def cell_stats(engine: MotionEngine, gated: MotionEngine, frames) -> np.ndarray:
    """Per cell of every frame after ``WARMUP``: ``(confidence without the gate, s1, growth, calm)``,
    ``(n, 4)``. ``calm``: the factor of the gate of ``gated`` (``NOISE_GATE``)."""
    state = engine.new_state()
    greys, rows = [], []
    p = engine.model.patch
    for t, f in enumerate(frames):
        mf = engine.step(state, f)
        greys = [*greys[-2:], np.asarray(f, np.float32) / 255.0]
        if t < WARMUP:
            continue
        g = greys[-1]
        sums = np.empty((3, g.shape[0] // p, g.shape[1] // p), np.float32)
        _image_change(g, greys[-2], greys[-3], p, sums)
        one, two = gated._cell_changes(sums[1], sums[2], g.shape)
        calm = gated._calm(sums[1], sums[2], g.shape)
        growth = (two - one) / np.maximum(one, 1e-6)
        rows.append(np.stack([mf.confidence, one, growth, calm], -1).reshape(-1, 4))
    return np.concatenate(rows)


CLIP_NOISE = ((0.0, None), (4.0, 80), (8.0, 80))


def with_noise(frames, noise: float, quality, rng) -> list:
    """uint8 ``frames`` with Gaussian noise of ``noise`` /255, through JPEG of ``quality`` (or not)."""
    out = []
    for f in frames:
        u8 = np.round(np.clip(f.astype(np.float32) + rng.normal(0, noise, f.shape), 0, 255))
        u8 = u8.astype(np.uint8)
        if quality:
            u8 = cv2.imdecode(cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, quality])[1], 0)
        out.append(u8)
    return out


def noisy_clips(size: tuple[int, int]) -> list[str]:
    """The real clips with camera noise, with and without the gate, as Markdown rows."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    seqs = list(me.family_sequences("clip", size, clips=FAMILIES["clip"]["clips"], n_frames=40))
    grid = MotionEngine.load_default().pooling.grid

    def cell_speed(before, after):  # DIS MEDIUM's speed, px/frame, averaged per cell
        flow = dis.calc(before, after, None)
        rows, cols = grid(after.shape)
        speed = np.hypot(flow[..., 0], flow[..., 1])
        return cv2.resize(speed, (cols, rows), interpolation=cv2.INTER_AREA)

    truth = [
        [cell_speed(s.frames[t - 1], s.frames[t]) for t in range(WARMUP, len(s.frames))]
        for s in seqs
    ]
    rows = [
        "| added noise | moving cells shown: without / with the gate "
        "| still cells shown (false motion): without / with |",
        "|---|---|---|",
    ]
    for noise, quality in CLIP_NOISE:
        shown = {}
        for gate in (None, NOISE_GATE):
            engine = MotionEngine.load_default()
            engine.noise_gate = gate
            moving, still = [], []
            for seq, speeds in zip(seqs, truth, strict=True):
                state = engine.new_state()
                frames = with_noise(seq.frames, noise, quality, np.random.default_rng(0))
                for t, f in enumerate(frames):
                    conf = engine.step(state, f).confidence
                    if t >= WARMUP:
                        moving.append(conf[speeds[t - WARMUP] > 1.0] > CONFIDENT)
                        still.append(conf[speeds[t - WARMUP] < 0.2] > CONFIDENT)
            shown[gate] = (np.concatenate(moving).mean(), np.concatenate(still).mean())
        label = "none" if not noise else f"{noise:g}/255" + (f", JPEG {quality}" if quality else "")
        (m0, s0), (m1, s1) = shown[None], shown[NOISE_GATE]
        rows.append(
            f"| {label} | {100 * m0:.1f} % / {100 * m1:.1f} % | {100 * s0:.2f} % / {100 * s1:.2f} % |"
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="320x240")
    p.add_argument("--md", help="also write the table as Markdown here")
    args = p.parse_args()
    size = me.parse_size(args.size)
    engine, gated = MotionEngine.load_default(), MotionEngine.load_default()
    engine.noise_gate = None  # confidence as it would be without the gate
    groups = {}
    for family in ("pan", "grating", "plaid", "object", "still", "clip"):
        seqs = me.family_sequences(family, size, quick=True, **FAMILIES.get(family, {}))
        groups[family] = np.concatenate([cell_stats(engine, gated, s.frames) for s in seqs])
        print(f"{family}: {len(groups[family])} cells", flush=True)
    for noise, quality in NOISY:
        codec = {None: "", "mp4v": ", through mp4v"}.get(quality, f", JPEG {quality}")
        label = f"still, noise {noise:g}/255{codec}"
        groups[label] = np.concatenate(
            [cell_stats(engine, gated, noisy_still(n, size, noise, quality, 40)) for n in STILLS]
        )
        print(f"{label}: {len(groups[label])} cells", flush=True)
    head = f"python bench/noise_gate.py --size {args.size}\nNOISE_GATE = {NOISE_GATE}"
    rows = [
        "| cells of | cells | confident without the gate | growth of those: 5th / 25th / 50th "
        "percentile | s1 of those, grey levels²: 5th / 50th / 95th | of those, taken by the gate |",
        "|---|---|---|---|---|---|",
    ]
    for label, a in groups.items():
        conf, s1, growth, calm = a.T
        m = conf > CONFIDENT
        if not m.any():
            rows.append(f"| {label} | {len(a)} | 0 | - | - | - |")
            continue
        g = np.percentile(growth[m], [5, 25, 50])
        s = np.percentile(s1[m], [5, 50, 95])
        taken = np.mean(conf[m] * calm[m] <= CONFIDENT)
        rows.append(
            f"| {label} | {len(a)} | {100 * m.mean():.1f} % | {g[0]:.2f} / {g[1]:.2f} / {g[2]:.2f} "
            f"| {s[0]:.0f} / {s[1]:.0f} / {s[2]:.0f} | {100 * taken:.1f} % |"
        )
    print("\n" + head + "\n\n" + "\n".join(rows), flush=True)
    clip_rows = noisy_clips(size)
    if args.md:
        intro = __doc__.split("\n", 4)[4]
        text = "# Which cells does the noise gate show still?\n\nProduced by `python bench/noise_gate.py "
        text += f"--md docs/motion/noise_gate.md`.\n\n{intro}\n"
        text += "```\n" + head + "\n```\n\n" + "\n".join(rows) + "\n\n"
        text += "The real clips with camera noise added (clips' cells scored against DIS MEDIUM "
        text += "on the clean frames):\n\n" + "\n".join(clip_rows) + "\n"
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
