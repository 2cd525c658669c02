"""Is the engine's direction error on fast pans a bias of the direction, or of the image? (issue 11)

    python bench/pan_bias.py [--speed 8] [--size 320x240] [--repeats 2] [--with-training-stills]

Pans each held-out still (``HELDOUT_STILLS``) in each of the accuracy benchmark's 16 directions at one
speed, with the benchmark's sequences (16 frames, scored on frames 8, 10, 12, 14), ``--repeats`` random
starts per (still, direction). Prints, per direction and still, the median signed error of the dominant
direction, the median over scored frames of the confident cells' median signed error (degrees,
positive = counter-clockwise of the truth) and the median dominant speed (px/frame); then the
correlation between the stills' signed errors over directions. A bias of the direction alone (which a
fixed calibration could remove) would give the same signed errors, correlation near 1, on every still.
"""

from __future__ import annotations

import argparse

import numpy as np

from v1motion.models.motion import motion_eval as me
from v1motion.models.motion.engine import MotionEngine
from v1motion.models.motion.stimuli import TRAIN_STILLS


def signed_deg(a, b):
    return (np.rad2deg(np.asarray(a) - b) + 180.0) % 360.0 - 180.0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--speed", type=float, default=8.0)
    p.add_argument("--size", default="320x240")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument(
        "--with-training-stills",
        action="store_true",
        help="also pan the read-out's training stills (first), and print what subtracting their "
        "mean signed error per direction (a fixed calibration) would do to the held-out stills",
    )
    args = p.parse_args()
    w, h = me.parse_size(args.size)
    shape = (h, w)
    engine = MotionEngine.load_default()
    engine.warmup()
    rng = np.random.default_rng(0)
    n_frames, scored = 16, range(8, 16, 2)
    stills = me.HELDOUT_STILLS
    if args.with_training_stills:
        stills = TRAIN_STILLS + stills
    directions = me._directions(16)
    out = np.zeros((len(directions), len(stills), 3))
    for k, name in enumerate(stills):
        img, _ = me.still_for_travel(name, shape, max(me.PAN_SPEEDS) * (n_frames - 1))
        for i, d in enumerate(directions):
            glob, cells, speed = [], [], []
            for _ in range(args.repeats):
                v = np.tile(me._velocity(d, args.speed), (n_frames, 1))
                frames = me._to_u8(me.path_sequence(img, v, shape, rng))
                state = engine.new_state()
                for t, frame in enumerate(frames):
                    mf = engine.step(state, frame)
                    if t not in scored:
                        continue
                    glob.append(signed_deg(mf.global_direction, d))
                    speed.append(mf.global_speed)
                    ok = np.asarray(mf.confidence) > me.CONFIDENT
                    if ok.any():
                        cells.append(np.median(signed_deg(np.asarray(mf.direction)[ok], d)))
            out[i, k] = np.median(glob), np.median(cells) if cells else np.nan, np.median(speed)
    print(f"pans at {args.speed:g} px/frame, {w}x{h}: signed error of the dominant direction / "
          "median of the confident cells (degrees), dominant speed (px/frame)")  # fmt: skip
    print("direction | " + " | ".join(stills))
    for i, d in enumerate(directions):
        row = " | ".join(f"{g:+6.1f} / {c:+6.1f}, {s:4.1f}" for g, c, s in out[i])
        print(f"{np.rad2deg(d):9.1f} | {row}")
    print("median |dominant error| per still:", np.round(np.median(np.abs(out[:, :, 0]), 0), 1))
    held = [stills.index(n) for n in me.HELDOUT_STILLS]
    print("correlation of the held-out stills' signed dominant errors over directions:")
    print(np.round(np.corrcoef(out[:, held, 0].T), 2))
    if args.with_training_stills:
        train = out[:, : len(TRAIN_STILLS), 0].mean(axis=1)
        print(
            "a fixed calibration: the training stills' mean signed error per direction, subtracted"
        )
        for k in held:
            e = out[:, k, 0]
            print(
                f"{stills[k]}: correlation with it {np.corrcoef(e, train)[0, 1]:+.2f}, median "
                f"|dominant error| {np.median(np.abs(e)):.1f} -> {np.median(np.abs(e - train)):.1f}"
            )


if __name__ == "__main__":
    main()
