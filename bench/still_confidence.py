"""Does a still camera view show a dominant motion? (issue 11: a still background shown moving)

    python bench/still_confidence.py [--size 320x240] [--frames 30] [--noise 0,1,2,4] [--md PATH]
    python bench/still_confidence.py --md docs/motion/still_confidence.md   # the committed report

Each still (grey, cropped at its centre, no motion) with Gaussian camera noise of ``--noise`` /255 per
pixel and frame, and with noise of 2, 4 and 8 /255 through JPEG of quality 80 (as the dashboard's
camera sends frames), then the same still panned at 0.5 and 1 px/frame (and at 0.5 with noise of
4/255 through JPEG), then a small object (a 32 x 32 px
patch of another still: 2 x 2 cells) moving at 0.5 and 2 px/frame over it, with noise of 2/255. Per
case, medians over the frames after the eighth: the largest cell confidence, the share of cells above
0.2 and above 0.5 (the accuracy benchmark's "shown moving"), and the confidence of the frame's dominant
motion (``global_motion``) as the engine computes it (cells counted from ``MOVING_FROM``) and with
every cell's confidence counted. The dashboard shows a direction and a speed from 0.05.

Then the first frames of a stream, started on the engine as shipped (its first frame primed,
``PRIME_PASSES``) and cold (``prime_passes=0``): per frame of the stream, the share of still views
(each still, noise of 0, 2 and 4 /255, three noise seeds) whose dominant motion is confident (> 0.3)
and its largest confidence, and on held-out pans that start with the stream (8 directions, 0.5-8
px/frame) the median error of the dominant direction and its median confidence.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from v1motion.models.motion import motion_eval as me
from v1motion.models.motion import stimuli
from v1motion.models.motion.engine import (
    MOVING_FROM,
    PRIME_PASSES,
    WARMUP_FRAMES,
    MotionEngine,
    global_motion,
)

INTRO = """# Does a still camera view show a dominant motion?

Produced by `python bench/still_confidence.py --md docs/motion/still_confidence.md` (its settings
are the first line of the block below), on the engine as shipped. *dominant conf*: the confidence of
the frame's dominant motion as the engine computes it, cells counted towards it from `MOVING_FROM`
(`models/motion/engine.py`); *every cell counted*: the same consensus with every cell's confidence
summed, as it was before; both no more than the fourth most confident cell (`global_motion`: 65
cells of 0.2-0.42 had made a dominant motion 0.999 confident on the still frame after a pan stopped;
since then the objects below, 2 x 2 cells, read lower). The dashboard shows a direction and a speed
from 0.05; the accuracy benchmark counts a cell as shown moving above 0.5. *JPEG 80*: each frame,
noise added, through JPEG of quality 80, as the dashboard's camera sends it.
"""
START_FRAMES = 8
START_CONFIDENT = 0.3
START_INTRO = f"""
## The first frames of a stream

From the first frame of a new stream (the dashboard's camera, a live source, a video), on the engine
as shipped, whose first frame is primed (encoded {PRIME_PASSES} more times, each pass driven by the
code of the one before: `PRIME_PASSES`), and cold (`prime_passes=0`). *still views confident*: the
share of still views (noise of 0, 2 and 4 /255, three noise seeds each, on every still above) whose
dominant motion is confident (> {START_CONFIDENT}) on that frame; *largest*: the largest dominant
confidence among them; then the dominant motion of held-out pans that start with
the stream (8 directions, 0.5, 1, 2, 4 and 8 px/frame). Frame 1 shows no motion (nothing to compare
with); *2-4*: the still views confident on any of frames 2-4. As shipped, the confidence of the
{WARMUP_FRAMES - 1} frames after the first is lowered (`WARMUP_FRAMES`); *no warm-up*: without that,
what priming alone does (`warmup_frames=0`).
"""
STILLS = ("astronaut", "camera", "chelsea", "coffee", "gravel", "rocket", "grass", "brick")
EVERY_CELL = (0.0, 1e-6)
JPEG = 80
JPEG_NOISE = (2.0, 4.0, 8.0)


def frames_of(image, shape, speed, n, obj=None):
    """``n`` float frames of ``image`` panned at ``speed`` px/frame (direction 40 degrees), or still
    with ``obj = (patch, speed)`` moving right across the middle."""
    centre = (image.shape[1] / 2, image.shape[0] / 2)
    frames = stimuli.pan_sequence(image, centre, 0.7, speed, n, shape).copy()
    if obj is not None:
        patch, v = obj
        s = patch.shape[0]
        y = shape[0] // 2 - s // 2
        for t in range(n):
            x0 = shape[1] // 4 + v * t
            x = int(np.floor(x0))
            frac = x0 - x  # sub-pixel position: linear blend of two whole-pixel placements
            a = frames[t].copy()
            a[y : y + s, x : x + s] = patch
            b = frames[t].copy()
            b[y : y + s, x + 1 : x + 1 + s] = patch
            frames[t] = (1 - frac) * a + frac * b
    return frames


def with_noise(frame, noise, rng, jpeg=None):
    """``frame`` (floats in [0, 1]) with Gaussian camera noise of ``noise`` /255, as float32; with
    ``jpeg``, as uint8 through JPEG of that quality (as the dashboard's camera sends frames)."""
    noisy = np.clip(frame + rng.normal(0, noise / 255, frame.shape), 0, 1).astype(np.float32)
    if jpeg is None:
        return noisy
    u8 = np.round(noisy * 255).astype(np.uint8)
    return cv2.imdecode(cv2.imencode(".jpg", u8, [cv2.IMWRITE_JPEG_QUALITY, jpeg])[1], 0)


def measure(engine, frames, noise, rng, jpeg=None):
    state = engine.new_state()
    rows = []
    for t, f in enumerate(frames):
        mf = engine.step(state, with_noise(f, noise, rng, jpeg))
        if t < 8:
            continue
        c = mf.confidence
        every = global_motion(mf.direction, mf.speed, c, moving=EVERY_CELL)[2]
        rows.append((c.max(), (c > 0.2).mean(), (c > 0.5).mean(), mf.global_confidence, every))
    return np.median(np.asarray(rows), axis=0)


def dominant_over_time(engine, frames, noise=0.0, rng=None):
    """The dominant motion ``(direction, confidence)`` of each frame of a new stream, ``(T, 2)``."""
    state = engine.new_state()
    out = []
    for f in frames:
        f = with_noise(f, noise, rng) if noise else np.asarray(f, np.float32)
        mf = engine.step(state, f)
        out.append((mf.global_direction, mf.global_confidence))
    return np.asarray(out)


def stream_start(engine, shape) -> tuple[np.ndarray, np.ndarray]:
    """Still views and pans from the first frame of a stream: ``(still confidences (V, T), pan
    (errors in degrees, confidences) (2, P, T))``."""
    stills = []
    for name in STILLS:
        frames = frames_of(stimuli.load_still(name), shape, 0.0, START_FRAMES)
        for noise in (0.0, 2.0, 4.0):
            for seed in range(3):
                rng = np.random.default_rng(seed)
                stills.append(dominant_over_time(engine, frames, noise, rng)[:, 1])
    rng = np.random.default_rng(1)
    errs, confs = [], []
    for name in stimuli.HELDOUT_STILLS:
        image = stimuli.load_still(name)
        for d in np.arange(8) * np.pi / 4:
            for v in (0.5, 1.0, 2.0, 4.0, 8.0):
                start = stimuli.random_pan_start(image, d, v, START_FRAMES, shape, rng)
                frames = stimuli.pan_sequence(image, start, d, v, START_FRAMES, shape)
                dom = dominant_over_time(engine, frames)
                errs.append(me.angular_error_deg(dom[:, 0], d))
                confs.append(dom[:, 1])
    return np.asarray(stills), np.asarray([errs, confs])


def start_table(shape) -> list[str]:
    """The first frames of a stream, primed (as shipped) and cold, as Markdown lines."""
    runs = {
        f"primed ({PRIME_PASSES} passes)": MotionEngine.load_default(),
        "cold": MotionEngine.load_default(prime_passes=0),
        "primed, no warm-up": MotionEngine.load_default(warmup_frames=0),
        "cold, no warm-up": MotionEngine.load_default(prime_passes=0, warmup_frames=0),
    }
    rows = [
        "| start | frame | still views confident | largest | pans: dominant error (median) "
        "| pans: confidence (median) |",
        "|---|---|---|---|---|---|",
    ]
    for label, engine in runs.items():
        stills, (errs, confs) = stream_start(engine, shape)
        for t in range(1, START_FRAMES):
            rows.append(
                f"| {label} | {t + 1} | {100 * np.mean(stills[:, t] > START_CONFIDENT):.1f} % of "
                f"{len(stills)} | {stills[:, t].max():.2f} | {np.median(errs[:, t]):.1f}° "
                f"| {np.median(confs[:, t]):.2f} |"
            )
        early = stills[:, 1:4]
        rows.append(
            f"| {label} | 2-4 | {100 * np.mean((early > START_CONFIDENT).any(axis=1)):.1f} % of "
            f"{len(stills)} on any | {early.max():.2f} | - | - |"
        )
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--size", default="320x240")
    p.add_argument("--frames", type=int, default=30)
    p.add_argument("--noise", default="0,1,2,4", help="comma-separated, in 1/255")
    p.add_argument("--md", help="also write the table, with an introduction, as Markdown here")
    args = p.parse_args()
    w, h = me.parse_size(args.size)
    shape = (h, w)
    noises = [float(x) for x in args.noise.split(",")]
    engine = MotionEngine.load_default()
    engine.warmup()
    head = [
        f"python bench/still_confidence.py --size {args.size} --frames {args.frames} "
        f"--noise {args.noise}",
        f"MOVING_FROM = {MOVING_FROM}; medians over frames 8-{args.frames - 1}",
    ]
    rows = [
        "| still | case | noise /255 | max cell conf | cells > 0.2 | cells > 0.5 "
        "| dominant conf | every cell counted |",
        "|---|---|---|---|---|---|---|---|",
    ]
    print("\n".join(head + rows), flush=True)
    patch_src = stimuli.load_still("chelsea")
    for name in STILLS:
        image = stimuli.load_still(name)
        other = patch_src if name != "chelsea" else stimuli.load_still("camera")
        patch = np.asarray(other[200:232, 200:232], np.float32)
        cases = [("still", 0.0, None, nz, None) for nz in noises]
        cases += [(f"still, JPEG {JPEG}", 0.0, None, nz, JPEG) for nz in JPEG_NOISE]
        cases += [(f"pan {v:g} px/frame", v, None, 2.0, None) for v in (0.5, 1.0)]
        cases += [(f"pan {v:g} px/frame, JPEG {JPEG}", v, None, 4.0, JPEG) for v in (0.5,)]
        cases += [(f"object {v:g} px/frame", 0.0, (patch, v), 2.0, None) for v in (0.5, 2.0)]
        for label, speed, obj, noise, jpeg in cases:
            rng = np.random.default_rng(0)
            frames = frames_of(image, shape, speed, args.frames, obj)
            r = measure(engine, frames, noise, rng, jpeg)
            rows.append(
                f"| {name} | {label} | {noise:g} | {r[0]:.2f} | {100 * r[1]:.1f} % "
                f"| {100 * r[2]:.1f} % | {r[3]:.2f} | {r[4]:.2f} |"
            )
            print(rows[-1], flush=True)
    start = start_table(shape)
    print("\n" + "\n".join(start), flush=True)
    if args.md:
        text = INTRO + "\n```\n" + "\n".join(head) + "\n```\n\n" + "\n".join(rows) + "\n"
        text += START_INTRO + "\n" + "\n".join(start) + "\n"
        Path(args.md).write_text(text)


if __name__ == "__main__":
    main()
