"""Fitting the MT read-out on what the engine computes live.

Training sequences (training stills only, never the held-out ones) with per-cell ground truth:
rigid pans over the whole speed range, drifting gratings with their normal velocity, still frames
with sensor noise, and a textured object moving over a still textured background (cells inside the
object move, cells outside are still, mixed cells are not scored). Each sequence runs through the
engine's own ``encode`` with a fresh stream state, and the per-unit activity is pooled exactly as
``MotionEngine.read`` pools the projected channels (``Pooling``), so the read-out is fitted on the
features it will see.

``v1motion fit-readout`` regenerates ``models/weights/mt_readout_default.npz``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path

import cv2
import numpy as np

from v1motion.models import WEIGHTS_DIR
from v1motion.models.determinism import single_threaded
from v1motion.models.motion.mt_readout import MTReadout, Pooling
from v1motion.models.motion.stimuli import (
    TRAIN_STILLS,
    direction_vector,
    grating_sequence,
    load_still,
    pan_frame,
    pan_sequence,
    random_pan_start,
)

log = logging.getLogger(__name__)

SIZE = (240, 320)
N_FRAMES = 12
SCORED = (5, 7, 9, 11)


def _upscaled(name: str, factor: float) -> np.ndarray:
    img = load_still(name)
    if factor == 1.0:
        return img
    big = cv2.resize(img, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    return np.clip(big, 0.0, 1.0, out=big)


def _zoom(rng, max_zoom: float = 2.5) -> float:
    """Half the stills are enlarged by up to ``max_zoom`` (log-uniform): softer images, as a webcam
    out of focus or an upscaled video shows them (the synthetic source pans a 2x enlarged still)."""
    return 1.0 if rng.random() < 0.5 else float(np.exp(rng.uniform(0.0, np.log(max_zoom))))


def _cells_truth(shape, cell, direction, speed, mask=None):
    """Per-cell truth ``(dir, speed)``; with a moving ``mask``: object cells (>= 75 % inside) move,
    background cells (0 %) are still, mixed cells are NaN (not scored)."""
    ch, cw = shape[0] // cell, shape[1] // cell
    d = np.full((ch, cw), direction, np.float32)
    s = np.full((ch, cw), speed, np.float32)
    if mask is not None:
        frac = mask[: ch * cell, : cw * cell].reshape(ch, cell, cw, cell).mean((1, 3))
        s = np.where(frac >= 0.75, speed, np.where(frac == 0, 0.0, np.nan)).astype(np.float32)
    return d, s


def make_sequence(kind: str, rng, shape=SIZE, n_frames=N_FRAMES, cell=16, stills=TRAIN_STILLS):
    """One training sequence: ``frames (T, H, W)`` and a per-cell truth ``(dir, speed)`` shared by
    every scored frame (speed 0 = still, NaN = not scored), made from ``stills``."""
    h, w = shape
    if kind == "pan":
        direction = rng.uniform(-np.pi, np.pi)
        speed = float(np.exp2(rng.uniform(-2.5, 4.2)))
        name = stills[rng.integers(len(stills))]
        zoom = _zoom(rng)
        need = speed * n_frames + max(shape) + 4
        img = _upscaled(name, max(zoom, need / min(load_still(name).shape) * 1.05))
        start = random_pan_start(img, direction, speed, n_frames, shape, rng)
        frames = pan_sequence(img, start, direction, speed, n_frames, shape)
        return frames, _cells_truth(shape, cell, direction, speed)
    if kind == "grating":
        direction = rng.uniform(-np.pi, np.pi)
        period = float(np.exp2(rng.uniform(3, 5.3)))
        speed = float(min(np.exp2(rng.uniform(-2, 3)), 0.4 * period))
        frames = grating_sequence(
            shape, direction, speed, period, n_frames, kind=("square", "sine")[rng.integers(2)],
            phase=rng.uniform(0, 2 * np.pi),
        )  # fmt: skip
        contrast = rng.uniform(0.3, 1.0)
        frames = 0.5 + contrast * (frames - 0.5)
        return frames.astype(np.float32), _cells_truth(shape, cell, direction, speed)
    if kind == "still":
        img = _upscaled(stills[rng.integers(len(stills))], _zoom(rng))
        start = random_pan_start(img, 0.0, 0.0, n_frames, shape, rng)
        frame = pan_frame(img, start, shape)
        noise = rng.uniform(0.0, 0.02)
        frames = frame[None] + noise * rng.standard_normal((n_frames, h, w)).astype(np.float32)
        return np.clip(frames, 0, 1).astype(np.float32), _cells_truth(shape, cell, 0.0, 0.0)
    if kind == "object":
        bg_name, obj_name = rng.choice(stills, 2, replace=False)
        bg = pan_frame(
            load_still(bg_name), random_pan_start(load_still(bg_name), 0, 0, 1, shape, rng), shape
        )
        direction = rng.uniform(-np.pi, np.pi)
        speed = float(np.exp2(rng.uniform(-1, 3.5)))
        side = int(rng.integers(h // 4, h // 2))
        obj_img = load_still(obj_name)
        o0 = random_pan_start(obj_img, 0, 0, 1, (side, side), rng)
        obj = pan_frame(obj_img, o0, (side, side))
        dx, dy = direction_vector(direction)
        cx0 = w / 2 - dx * speed * (n_frames - 1) / 2 + rng.uniform(-w / 8, w / 8)
        cy0 = h / 2 - dy * speed * (n_frames - 1) / 2 + rng.uniform(-h / 8, h / 8)
        frames = np.empty((n_frames, h, w), np.float32)
        masks = np.empty((n_frames, h, w), np.float32)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        for t in range(n_frames):
            cx, cy = cx0 + dx * speed * t, cy0 + dy * speed * t
            # The object is a sub-pixel shifted copy of its texture (bilinear), inside a square.
            u = xx - (cx - side / 2)
            v = yy - (cy - side / 2)
            inside = (u >= 0) & (u <= side - 1) & (v >= 0) & (v <= side - 1)
            warped = cv2.remap(obj, u.astype(np.float32), v.astype(np.float32), cv2.INTER_LINEAR)
            frames[t] = np.where(inside, warped, bg)
            masks[t] = inside
        return frames, _cells_truth(shape, cell, direction, speed, mask=masks[n_frames - 1])
    raise ValueError(f"unknown sequence kind {kind!r}")


KINDS = {"pan": 0.4, "grating": 0.25, "still": 0.1, "object": 0.25}


def pooled_units(engine, frames, pooling):
    """Per frame of ``frames``, every level's running average of the dense per-unit activity plus
    total ``[(gh, gw, N + 1)]``, computed from ``engine.encode`` with a fresh stream state: the same
    pooling as ``MotionEngine.read`` applies to the projected channels. As in the live engine, the
    first frame only primes the recurrent state (``MotionEngine._first_frame``): it yields ``None``
    and the averages start from the second."""
    n_units, levels = engine.model.n_units, engine.levels
    state = engine.new_state()
    state.shape = frames.shape[1:]
    state.prev = [None] * levels
    state.rms = [None] * levels
    accs = [None] * levels
    for t, frame in enumerate(frames):
        codes = engine.encode(state, frame)
        if t == 0:
            yield None
            continue
        for lv, (code, gh, gw) in enumerate(codes):
            dense = np.zeros((gh * gw, n_units + 1), np.float32)
            rows = np.repeat(np.arange(gh * gw), code.cnt)
            mask = np.arange(code.idx.shape[1])[None, :] < code.cnt[:, None]
            np.add.at(dense, (rows, code.idx[mask]), code.val[mask])
            dense[:, n_units] = dense[:, :n_units].sum(1)
            accs[lv] = pooling.update(accs[lv], dense.reshape(gh, gw, -1))
        yield accs


def collect(engine, n_sequences: int, seed: int = 0, cells_per_frame: int = 20, pooling=None,
            progress=True):  # fmt: skip
    """Run training sequences through ``engine.encode`` and pool per-unit activity like the live read.

    Returns ``x (n, L, N)``, ``total (n, L)``, ``direction (n,)``, ``speed (n,)``, ``weight (n,)``;
    the last rows of every sequence's scored frames are whole-frame features (weighted more). ``x``
    (3.4 GB for the shipped read-out's data) is written into one array as the rows come, never
    held twice.
    """
    from tqdm import tqdm

    pooling = pooling or engine.pooling
    rng = np.random.default_rng(seed)
    kinds = list(KINDS)
    probs = np.array([KINDS[k] for k in kinds])
    n_units = engine.model.n_units
    ts, ds, ss, ws = [], [], [], []
    x, n = None, 0  # rows are written to x[n:]; it is made at the first, with room for the most

    def add(rows: np.ndarray) -> None:
        nonlocal x, n
        if x is None:
            most = n_sequences * len(SCORED) * (cells_per_frame + 1)
            x = np.empty((most, *rows.shape[1:]), np.float32)
        x[n : n + len(rows)] = rows
        n += len(rows)

    for _ in tqdm(range(n_sequences), desc="read-out data", disable=not progress):
        kind = kinds[rng.choice(len(kinds), p=probs / probs.sum())]
        frames, (tdir, tspeed) = make_sequence(kind, rng)
        for t, accs in enumerate(pooled_units(engine, frames, pooling)):
            if t not in SCORED:
                continue
            cells = pooling.cells(accs, frames.shape[1:])
            ok = np.argwhere(np.isfinite(tspeed))
            pick = ok[rng.choice(len(ok), min(cells_per_frame, len(ok)), replace=False)]
            f = cells[pick[:, 0], pick[:, 1]]
            add(f[..., :n_units])
            ts.append(f[..., n_units].copy())  # a view would keep all of f alive
            ds.append(tdir[pick[:, 0], pick[:, 1]])
            ss.append(tspeed[pick[:, 0], pick[:, 1]])
            ws.append(np.ones(len(pick), np.float32))
            if kind != "object":
                whole = pooling.whole(accs)
                add(whole[None, :, :n_units])
                ts.append(whole[None, :, n_units].copy())
                ds.append(tdir[:1, 0])
                ss.append(tspeed[:1, 0])
                ws.append(np.full(1, 4.0, np.float32))
    return (x[:n], np.concatenate(ts), np.concatenate(ds), np.concatenate(ss),
            np.concatenate(ws))  # fmt: skip


SHIPPED_READOUT = WEIGHTS_DIR / "mt_readout_default.npz"


def fit_command(out: Path, sequences: int, levels: int, hidden: int, epochs: int, seed: int,
                pool_px, tau: float) -> str:  # fmt: skip
    """The ``v1motion fit-readout`` command that remakes a read-out written to ``out``: with
    ``--out`` unless ``out`` is the shipped read-out's place (pasted from another read-out's card,
    the command without it overwrote the shipped one)."""
    where = (
        "" if Path(out).resolve() == SHIPPED_READOUT.resolve() else f" --out {Path(out).as_posix()}"
    )
    return (
        f"v1motion fit-readout{where} --sequences {sequences} --levels {levels} --hidden {hidden} "
        f"--epochs {epochs} --seed {seed} --pool-px {' '.join(map(str, pool_px))} --tau {tau}"
    )


def fit_default(out: Path, sequences: int = 2500, levels: int = 4, hidden: int = 64,
                pool_px=(32, 96), tau: float = 2.0, epochs: int = 16, seed: int = 0,
                progress: bool = True) -> dict:  # fmt: skip
    """Fit the MT read-out of the shipped ss-RNN and write it to ``out``; returns a summary.

    Data and fitting run single-threaded (``v1motion.models.determinism``, as the ss-RNN's training does) so
    that sums run in a fixed order: one seed, one file.
    """
    from v1motion.models.motion.engine import DEFAULT_WEIGHTS, MotionEngine

    base = MotionEngine.load(DEFAULT_WEIGHTS)
    pooling = Pooling(patch=base.model.patch, pool_px=tuple(pool_px), tau=tau)
    probe = MTReadout.random(levels * pooling.n_scales, base.model.n_units)
    engine = MotionEngine(base.model, base.readout, base.tuning, levels=base.readout_levels,
                          mt=probe, pooling=pooling)  # fmt: skip
    t0 = time.time()
    with single_threaded():
        x, total, d, s, w = collect(
            engine, sequences, seed=seed, pooling=pooling, progress=progress
        )
        t1 = time.time()
        log.info("read-out data: %d rows from %d sequences in %.0f s", len(x), sequences, t1 - t0)
        ro = MTReadout(n_hidden=hidden, epochs=epochs, seed=seed).fit(
            x, total, d, s, weight=w, copy=False,  # x is not used after: normalised in place
            progress=lambda e, loss: log.info("read-out epoch %d: loss %.4f", e, loss),
        )  # fmt: skip
    command = fit_command(out, sequences, levels, hidden, epochs, seed, pool_px, tau)
    summary = {
        "rows": int(len(x)),
        "collect_s": round(t1 - t0, 1),
        "fit_s": round(time.time() - t1, 1),
        "final_loss": round(float(ro.history_[-1]), 4),
        "command": command,
    }
    ro.save(out, pooling=asdict(pooling), **summary)
    Path(out).with_suffix(".md").write_text(model_card(ro, pooling, summary, sequences, seed))
    return summary


def model_card(ro: MTReadout, pooling: Pooling, summary: dict, sequences: int, seed: int) -> str:
    """The read-out's card: what it reads, what it was fitted on, and the command that remakes it."""
    shares = ", ".join(f"{k} {v:.0%}" for k, v in KINDS.items())
    n_sets, n_units, n_hidden = ro.proj_.shape
    return f"""# MT read-out of the shipped ss-RNN

Reads direction, speed and a confidence per 16-px cell (and for the whole frame) from the ss-RNN's
units: {n_sets // pooling.n_scales} pyramid levels x {pooling.n_scales} pooling boxes
({", ".join(f"{p} px" for p in pooling.pool_px)}), each level divided by its own total activity,
{n_hidden} rectified MT units, a direction vector and {len(ro.speed_classes_)} speed classes
({", ".join(f"{s:g}" for s in ro.speed_classes_)} px/frame; 0 = still). Temporal average:
exponential, {pooling.tau:g} frames. Code: `models/motion/mt_readout.py`; fitting: `models/motion/mt_fit.py`.

## Data
{sequences} sequences of {N_FRAMES} frames at {SIZE[1]}x{SIZE[0]} made from the training stills only
({", ".join(TRAIN_STILLS)}), never the held-out ones: {shares} (pans at log-uniform
0.18-18 px/frame in random directions, half of them of stills enlarged up to 2.5x, i.e. softer; drifting square and sine gratings, truth = normal velocity;
still frames with sensor noise; a textured square moving over a still textured background, cells
inside it moving, outside still, mixed cells not scored). Frames {", ".join(map(str, SCORED))} of
each sequence are scored: {summary["rows"]} cell and whole-frame rows. Each sequence runs through the
engine's own encode with a fresh stream state and is pooled as the live read pools it.

## Fit
Adam, {len(ro.history_)} epochs, seed {seed}, one BLAS thread; final loss
{summary["final_loss"]}. Data {summary["collect_s"]} s, fit {summary["fit_s"]} s on a shared 2-core
machine.

## Reproduce
    {summary["command"]}

Accuracy against ground truth and optical flow: `docs/motion/accuracy.md` (`python bench/accuracy.py`).
"""


AXIS_GRATINGS = ((12.0, 0.5), (20.0, 2.0), (32.0, 1.0))
"""(period px, speed px/frame) of the square-wave gratings the axis calibration is fitted on; the
accuracy benchmark and the live synthetic source use others (periods 16-24 px)."""


def fit_axis_calibration(engine, step_deg: float = 2.5, gratings=AXIS_GRATINGS,
                         shape=(240, 320), n_frames: int = 12, progress: bool = True) -> dict:  # fmt: skip
    """Measure the axis the aperture step reads (``MotionEngine._axis_coherence``, uncalibrated) on
    drifting gratings of every axis ``k * step_deg`` in [0, 180), both directions of each, and fit
    the offsets that map it back (``mt_readout.axis_offsets``). Returns ``offsets_deg`` on the grid
    of ``step_deg``, ``coherence_reference`` on the same grid (per true axis, the median coherence of
    the cells of its gratings: ``mt_readout.coherence_on_axis_scale``), and what was measured: per
    true axis, the estimated axis (the doubled-angle mean over its cells of coherence > 0.7 and over
    its gratings)."""
    from tqdm import tqdm

    from v1motion.models.motion.engine import to_grey
    from v1motion.models.motion.mt_readout import axis_offsets

    true_axes = np.radians(np.arange(0.0, 180.0, step_deg))
    cells = engine.pooling.grid(shape)
    saved = engine.axis_calibration, engine.coherence_reference
    engine.axis_calibration = engine.coherence_reference = None
    est, reference = [], []
    try:
        for theta in tqdm(true_axes, desc="axis calibration", disable=not progress):
            z, coherences = [], []
            for period, speed in gratings:
                for direction in (theta, theta + np.pi):
                    state = engine.new_state()
                    state.start(shape, engine.levels, engine.levels)
                    for frame in grating_sequence(shape, direction, speed, period, n_frames):
                        codes = engine.encode(state, to_grey(frame))
                    coherence, axis = engine._axis_coherence(codes[0], cells)
                    coherences.append(coherence.ravel())
                    sel = coherence > 0.7
                    z.append(np.exp(2j * axis[sel]).mean() if sel.any() else 0.0)
            est.append(np.angle(np.mean(z)) / 2)
            reference.append(np.median(np.concatenate(coherences)))
    finally:
        engine.axis_calibration, engine.coherence_reference = saved
    est = np.asarray(est)
    offsets = axis_offsets(true_axes, est, n=len(true_axes))
    return {
        "offsets_deg": [round(float(v), 4) for v in np.degrees(offsets)],
        "coherence_reference": [round(float(max(v, 0.05)), 4) for v in reference],
        "grid_step_deg": step_deg,
        "measured": {
            "true_axis_deg": [round(float(v), 2) for v in np.degrees(true_axes)],
            "estimated_axis_deg": [round(float(v), 3) for v in np.degrees(np.mod(est, np.pi))],
        },
        "gratings": [{"period_px": p, "speed_px_per_frame": s} for p, s in gratings],
        "frame": f"{shape[1]}x{shape[0]}",
        "frames_per_grating": n_frames,
    }
