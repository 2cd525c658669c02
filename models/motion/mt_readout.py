"""MT-like motion read-out: velocity-tuned units pooled from the ss-RNN's direction-selective code.

The ss-RNN's units are direction selective but each sees one 8x8 patch of one pyramid level, and a
single linear map of their pooled activity cannot undo the aperture problem or read speeds that span
two decades. As in the classic V1 -> MT route (Simoncelli & Heeger), a second stage pools the units
over space and time, normalises each pyramid level by its own total activity (divisive normalisation),
and combines them in velocity-tuned "MT" units (a rectified linear layer) from which direction, speed
(a choice among speed classes, one of them "still") and a confidence are read.

Because pooling is linear, the first layer is applied per patch, before pooling: the kernel projects
each patch's code onto the ``H`` MT inputs plus one total-activity channel, and only ``H + 1``
channels per level are averaged over time and space, not 512 units.

Units: directions in radians inside ``models`` (0 = right, pi/2 = up on screen), speeds in px/frame.

Numba caches the compiled kernels on disk (``cache=True``) beside this file, keyed by its path and
stamp; the cached code records its module by name (``v1motion.models...``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import cv2
import numpy as np
from numba import njit

from v1motion.models.estimator import NotFittedError, Params

SPEED_CLASSES = np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
"""Speed classes in px/frame; class 0 is "still"."""


@njit(cache=True, nogil=True)
def _project_frame(idx, val, cnt, proj, dir_bin, speed_bin, ds_weight, alpha, acc, dir_hist,
                   speed_hist, unit_act, histograms):  # fmt: skip
    """Per-patch projections of one frame's code, folded into their running averages over frames.

    ``proj`` (N, S * K) holds one block of ``K`` projections per pooling scale; ``acc`` (S, M, K + 1)
    holds, per scale, each patch's running average of its block and of the total activity:
    ``acc[s, m] = (1 - alpha) acc[s, m] + alpha [sum_u z_u proj[u, sK:(s+1)K], sum_u z_u]``
    (``alpha >= 1``: the first frame, ``acc`` is overwritten). Each scale's slab is then contiguous
    for the spatial pooling. Accumulated in place if ``histograms``: the DS-weighted activity by
    preferred-direction and preferred-speed bin, and the activity of each unit (otherwise the three
    arrays are not touched; the running averages are the same either way)."""
    n_scales = acc.shape[0]
    n_k = acc.shape[2] - 1
    width = n_scales * n_k
    first = alpha >= 1.0
    keep = np.float32(1.0) - np.float32(alpha)
    a = np.float32(alpha)
    row = np.empty(width + 1, np.float32)
    # The loops run over contiguous rows (``proj[u]``, ``acc[s, m]``) with the branch on ``first``
    # outside them, so that they vectorise: 2.2x faster than indexing the 2-D arrays inside one
    # loop with the branch in it, and the same numbers.
    for m in range(cnt.shape[0]):
        for k in range(width + 1):
            row[k] = 0.0
        for i in range(cnt[m]):
            u = idx[m, i]
            v = val[m, i]
            pu = proj[u]
            for k in range(width):
                row[k] += v * pu[k]
            row[width] += v
            if histograms:
                w = v * ds_weight[u]
                dir_hist[dir_bin[u]] += w
                speed_hist[speed_bin[u]] += w
                unit_act[u] += v
        for s in range(n_scales):
            dst = acc[s, m]
            src = row[s * n_k : s * n_k + n_k]
            if first:
                for k in range(n_k):
                    dst[k] = src[k]
                dst[n_k] = row[width]
            else:
                for k in range(n_k):
                    dst[k] = dst[k] * keep + a * src[k]
                dst[n_k] = dst[n_k] * keep + a * row[width]


@njit(cache=True, nogil=True, inline="always")
def _slide(rows, at, cur, k, sums):
    """``sums`` (m,) becomes the sum of the ``k`` rows of ``rows`` (n, m) in the window of row ``at``
    (``at - k // 2 .. at - k // 2 + k - 1``, clamped to the edges), given that it holds the window of
    row ``cur``: slid one row at a time when ``at`` is a little past ``cur``, summed anew otherwise.
    Returns ``at``, the new ``cur``."""
    n, m = rows.shape
    half = k // 2
    if at < cur or at - cur > k:
        sums[:] = 0.0
        for u in range(k):
            r = rows[min(max(at - half + u, 0), n - 1)]
            for c in range(m):
                sums[c] += r[c]
        return at
    while cur < at:
        cur += 1
        gone = rows[min(max(cur - 1 - half, 0), n - 1)]
        new = rows[min(max(cur - half + k - 1, 0), n - 1)]
        for c in range(m):
            sums[c] += new[c] - gone[c]
    return at


@njit(cache=True, nogil=True)
def _pool_cells(src, k, ys, xs, out):
    """Box means of ``src`` (gh, gw, C), C-contiguous, sampled at cells, in one pass.

    ``out[i, j] = mean over t, s of B[ys[i, t], xs[j, s]]``, where ``B`` is the mean over the ``k x k``
    window at every position, edges replicated, the window of position ``y`` covering
    ``y - k // 2 .. y - k // 2 + k - 1`` (OpenCV's ``blur`` with its default anchor). Cells of a finer
    level average the ``f x f`` positions they cover (``ys`` (ch, f)); a coarser level's cells take one
    position each (``ys`` (ch, 1)). Only the rows and columns the cells need are computed, by running
    sums (float32) that slide from one wanted row to the next (``_slide``); ``ys[i]`` and ``xs[j]``
    should rise with ``i`` and ``j`` for the sums to slide (otherwise they restart: the same numbers)."""
    gh, gw, nc = src.shape
    flat = src.reshape(gh, gw * nc)
    col = np.zeros(gw * nc, np.float32)  # per column and channel, the sum over the window's rows
    row = np.empty((gw, nc), np.float32)
    rflat = row.reshape(gw * nc)
    run = np.zeros(nc, np.float32)
    acc = np.empty(nc, np.float32)
    scale = np.float32(1.0 / (k * k * ys.shape[1] * xs.shape[1]))
    cur = -(1 << 30)
    for i in range(ys.shape[0]):
        rflat[:] = 0.0
        for t in range(ys.shape[1]):
            cur = _slide(flat, ys[i, t], cur, k, col)
            for c in range(gw * nc):
                rflat[c] += col[c]
        at = -(1 << 30)
        for j in range(xs.shape[0]):
            acc[:] = 0.0
            for t in range(xs.shape[1]):
                at = _slide(row, xs[j, t], at, k, run)
                for c in range(nc):
                    acc[c] += run[c]
            o = out[i, j]
            for c in range(nc):
                o[c] = acc[c] * scale


@njit(cache=True, nogil=True)
def _hidden_cells(pooled, norm, b1, hidden, totals):
    """The MT units of every cell from its pooled projected channels, in one pass.

    ``pooled`` (n, L, H + 1): per cell and feature set, the ``H`` pooled projections and the pooled
    total activity (last). Writes ``hidden`` (n, H) ``= relu(b1 + sum_l pooled[:, l, :H] / (total_l +
    norm_l))`` (``MTReadout.hidden_from_projected``) and ``totals`` (n,), the summed total activity."""
    n, n_l, width = pooled.shape
    n_h = width - 1
    inv = np.empty(n_l, np.float32)
    for m in range(n):
        total = np.float32(0.0)
        for lv in range(n_l):
            t = pooled[m, lv, n_h]
            total += t
            inv[lv] = np.float32(1.0) / (t + norm[lv])
        h = hidden[m]
        for k in range(n_h):
            h[k] = b1[k]
        for lv in range(n_l):
            w = inv[lv]
            x = pooled[m, lv]
            for k in range(n_h):
                h[k] += w * x[k]
        for k in range(n_h):
            h[k] = max(h[k], np.float32(0.0))
        totals[m] = total


@njit(cache=True, nogil=True, inline="always")
def _ramp(x, lo, span):
    """``clip((x - lo) / span, 0, 1)`` in float32: 0 at ``lo``, 1 at ``lo + span``."""
    return min(max((x - np.float32(lo)) / span, np.float32(0.0)), np.float32(1.0))


@njit(cache=True, nogil=True)
def _decode_outputs(out, totals, log_speeds, norm_sum, lo, hi, direction, speed, conf):
    """``MTReadout.decode_hidden`` and ``evidence`` of every cell from its outputs, in one pass.

    ``out`` (n, 2 + S): per cell, the direction vector and the logits of the ``S`` speed classes
    (class 0 still); ``totals`` (n,): its summed total activity; ``log_speeds`` (S - 1,): log2 of the
    moving classes' speeds. Writes, float32 (n,): ``direction`` = atan2 of the vector (radians),
    ``speed`` = 2 ** the mean of ``log_speeds`` under the moving classes' probabilities (px/frame),
    ``conf`` = P(moving) x min(|vector|, 1) x the evidence, ``totals / norm_sum`` mapped from
    ``[lo, hi]`` to [0, 1]."""
    n, width = out.shape
    n_s = width - 2
    e = np.empty(n_s, np.float32)
    span = np.float32(hi - lo)
    for m in range(n):
        o = out[m]
        top = o[2]
        for j in range(1, n_s):
            top = max(top, o[2 + j])
        total = np.float32(0.0)
        for j in range(n_s):
            e[j] = np.exp(o[2 + j] - top)
            total += e[j]
        moving = np.float32(0.0)
        mean_log = np.float32(0.0)
        for j in range(1, n_s):
            p = e[j] / total
            moving += p
            mean_log += p * log_speeds[j - 1]
        speed[m] = np.exp2(mean_log / max(moving, np.float32(1e-9)))
        direction[m] = np.arctan2(o[1], o[0])
        ratio = totals[m] / norm_sum
        evidence = _ramp(ratio, lo, span)
        p_move = np.float32(1.0) - e[0] / total
        conf[m] = p_move * min(np.hypot(o[0], o[1]), np.float32(1.0)) * evidence


# ---------------------------------------------------------------------------------------------
# Per-cell steps of the read-out, each one pass over the cells around OpenCV's Gaussian blur (the
# numpy expressions they replace are their twins in tests/naive.py). float32 as the numpy was;
# the transcendental functions may differ from numpy's by an ulp.
_F32_MAX = np.float32(np.finfo(np.float32).max)
_NO_OFFSETS = np.zeros(0, np.float64)


@njit(cache=True, nogil=True, inline="always")
def _clean_weight(w):
    """``max(nan_to_num(w), 0)``: NaN and negative weights count 0, +inf the largest float32."""
    if not w > 0:
        return np.float32(0.0)
    return min(w, _F32_MAX)


@njit(cache=True, nogil=True, inline="always")
def _interp_axis(table, x):
    """``table`` (K,) on the grid of axes ``k pi / K`` at the axis ``x`` (radians, float64):
    interpolated linearly and periodically (period pi), as ``np.interp(x % pi, grid, table,
    period=pi)`` computes it."""
    k = table.shape[0]
    x = x % np.pi
    j = min(int(x * k / np.pi), k - 1)
    if x < j * np.pi / k:  # rounding put x just below the grid point
        j -= 1
    x0 = j * np.pi / k
    x1 = (j + 1) * np.pi / k if j + 1 < k else np.pi
    f1 = table[j + 1] if j + 1 < k else table[0]
    return (f1 - table[j]) / (x1 - x0) * (x - x0) + table[j]


@njit(cache=True, nogil=True)
def _integrate_terms(direction, speed, weight, terms):
    """``terms[m] = w (1, cos d, sin d, log max(s, 1e-3))`` of every cell (``integrate_cells``)."""
    for m in range(direction.shape[0]):
        w = _clean_weight(weight[m])
        d = direction[m]
        t = terms[m]
        t[0] = w
        t[1] = w * np.cos(d)
        t[2] = w * np.sin(d)
        t[3] = w * np.log(max(speed[m], np.float32(1e-3)))


@njit(cache=True, nogil=True)
def _integrate_finish(sums, direction, speed, out_dir, out_speed):
    """Each cell's weighted mean direction and geometric mean speed from its blurred ``terms``;
    a cell without weight around it keeps its own."""
    for m in range(direction.shape[0]):
        s = sums[m]
        if s[0] > np.float32(1e-6):
            out_dir[m] = np.arctan2(s[2], s[1])
            out_speed[m] = np.exp(s[3] / max(s[0], np.float32(1e-12)))
        else:
            out_dir[m] = direction[m]
            out_speed[m] = speed[m]


@njit(cache=True, nogil=True)
def _axis_finish(sums, offsets, coherence, axis):
    """``axis_coherence`` from the blurred sums ``(re, im, total)`` of each cell; ``offsets``: the
    axis calibration (empty: none)."""
    for m in range(sums.shape[0]):
        re, im, total = sums[m, 0], sums[m, 1], sums[m, 2]
        c = np.hypot(re, im) / max(total, np.float32(1e-12))
        coherence[m] = min(max(c, np.float32(0.0)), np.float32(1.0))
        a = np.float32(0.5) * np.arctan2(im, re)
        if offsets.shape[0]:
            a = np.float32(a + _interp_axis(offsets, np.float64(a)))
        axis[m] = a


@njit(cache=True, nogil=True)
def _on_axis_scale(coherence, axis, reference, floor, out):
    """``coherence_on_axis_scale`` of every cell (in float64)."""
    for m in range(coherence.shape[0]):
        c = np.float64(coherence[m])
        if c > floor:
            ref = _interp_axis(reference, np.float64(axis[m]))
            c = floor + (c - floor) * (1.0 - floor) / max(ref - floor, 0.05)
        out[m] = min(max(c, 0.0), 1.0)


@njit(cache=True, nogil=True)
def _along_axis(direction, speed, coherence, axis, lo, hi, out_dir, out_speed):
    """``along_one_axis`` of every cell."""
    span = np.float32(hi - lo)
    for m in range(direction.shape[0]):
        w = _ramp(coherence[m], lo, span)
        nx, ny = np.cos(axis[m]), np.sin(axis[m])
        s, d = speed[m], direction[m]
        vx, vy = s * np.cos(d), s * np.sin(d)
        along = vx * nx + vy * ny
        vx, vy = vx + w * (along * nx - vx), vy + w * (along * ny - vy)
        out_dir[m] = np.arctan2(vy, vx)
        out_speed[m] = np.hypot(vx, vy)


@njit(cache=True, nogil=True)
def _constraint_terms(direction, speed, weight, one_axis, axis, lo, hi, terms, cell):
    """Per cell, its constraint weighed (``terms`` (n, 5): ``w M`` as m11, m12, m22 and ``w M v``)
    and what ``_constraint_finish`` needs of it (``cell`` (n, 3): its one-axis share and
    velocity)."""
    span = np.float32(hi - lo)
    one = np.float32(1.0)
    for m in range(direction.shape[0]):
        a = _ramp(one_axis[m], lo, span)
        w = _clean_weight(weight[m])
        nx, ny = np.cos(axis[m]), np.sin(axis[m])
        s, d = speed[m], direction[m]
        vx, vy = s * np.cos(d), s * np.sin(d)
        m11 = a * nx * nx + (one - a)
        m12 = a * nx * ny
        m22 = a * ny * ny + (one - a)
        t = terms[m]
        t[0] = m11 * w
        t[1] = m12 * w
        t[2] = m22 * w
        t[3] = (m11 * vx + m12 * vy) * w
        t[4] = (m12 * vx + m22 * vy) * w
        cell[m, 0] = a
        cell[m, 1] = vx
        cell[m, 2] = vy


@njit(cache=True, nogil=True)
def _solve(s, prior_half, vx, vy):
    lam = prior_half * (s[0] + s[2]) + np.float32(1e-12)
    s11, s22 = s[0] + lam, s[2] + lam
    r1, r2 = s[3] + lam * vx, s[4] + lam * vy
    det = s11 * s22 - s[1] * s[1]
    return (s22 * r1 - s[1] * r2) / det, (s11 * r2 - s[1] * r1) / det


@njit(cache=True, nogil=True)
def _constraint_finish(sums, local, cell, prior, out_dir, out_speed):
    """Each cell's velocity from the 2 x 2 system of its neighbourhood's blurred ``terms`` (or, where
    that turns it by more than 90 degrees and the ``local`` one does not, from the local one),
    blended in by its one-axis share (``pool_constraints``)."""
    half = np.float32(prior) * np.float32(0.5)
    for m in range(cell.shape[0]):
        a, vx, vy = cell[m, 0], cell[m, 1], cell[m, 2]
        ux, uy = _solve(sums[m], half, vx, vy)
        if ux * vx + uy * vy < 0:  # another motion's, or the cell's reading is wrong: ask nearer
            lx, ly = _solve(local[m], half, vx, vy)
            if lx * vx + ly * vy > 0:
                ux, uy = lx, ly
        ox, oy = vx + a * (ux - vx), vy + a * (uy - vy)
        out_dir[m] = np.arctan2(oy, ox)
        out_speed[m] = np.hypot(ox, oy)


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    """Every channel of ``a`` (rows, cols[, channels]) blurred by a Gaussian of ``sigma`` cells,
    edges reflected; the shape kept."""
    return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REFLECT).reshape(a.shape)


def _f32(a) -> np.ndarray:
    return np.ascontiguousarray(a, np.float32)


def _flat(a, shape, dtype=np.float32) -> np.ndarray:
    """``a`` broadcast to ``shape``, as one contiguous row of ``dtype`` (a view where it can be)."""
    a = np.asarray(a, dtype)
    if a.shape != shape:
        a = np.broadcast_to(a, shape)
    return np.ascontiguousarray(a).reshape(-1)


def integrate_cells(direction: np.ndarray, speed: np.ndarray, weight: np.ndarray, sigma: float):
    """Each cell's motion from its neighbourhood: the weighted vector mean of the directions and the
    weighted geometric mean of the speeds, over a Gaussian of ``sigma`` cells (MST-like pooling of the
    MT units' estimates).

    A single cell on an edge sees only the motion across it (the aperture problem); its neighbours on
    other edges see other components. Weighting by ``weight`` (the cells' confidence) means that still
    or blank cells lend nothing, so a moving object's direction does not spread into a still
    background by this step, and that an unconfident cell takes the motion of the confident cells
    around it. A cell whose whole neighbourhood has no weight keeps its own estimate.

    Parameters
    ----------
    direction, speed, weight : (rows, cols) arrays
        Radians, px/frame, and non-negative weights.
    sigma : float
        Standard deviation of the Gaussian in cells; 0 returns the inputs unchanged.

    Returns
    -------
    direction (rows, cols) float32 radians, speed (rows, cols) float32 px/frame
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    if sigma == 0 or direction.size == 0:
        return direction.astype(np.float32), speed.astype(np.float32)
    shape = direction.shape
    d, s, w = (_flat(a, shape) for a in (direction, speed, weight))
    terms = np.empty((*shape, 4), np.float32)
    _integrate_terms(d, s, w, terms.reshape(-1, 4))
    out_dir, out_speed = np.empty((2, d.size), np.float32)
    _integrate_finish(_blur(terms, sigma).reshape(-1, 4), d, s, out_dir, out_speed)
    return out_dir.reshape(shape), out_speed.reshape(shape)


def unit_axes(direction_curves) -> tuple[np.ndarray, np.ndarray]:
    """Each unit's axis of motion from its direction tuning curve ``(n, N)``: responses of the ``N``
    units to gratings drifting in ``n`` equally spaced directions. The doubled-angle mean of a unit's
    rectified responses, ``sum_d r_d e^{2i theta_d} / sum_d r_d``: its angle is twice the axis (a
    grating and its reverse share one), its length in [0, 1] how selective the unit is for that axis.
    Returns the real and imaginary parts, float32 ``(N,)`` each (0 for a unit that never responds)."""
    r = np.maximum(np.asarray(direction_curves, np.float64), 0.0)
    theta = np.arange(r.shape[0]) * 2 * np.pi / r.shape[0]
    total = r.sum(0)
    z = (r * np.exp(2j * theta)[:, None]).sum(0) / np.where(total > 0, total, 1.0)
    return z.real.astype(np.float32), z.imag.astype(np.float32)


def _on_axis_grid(table, axis) -> np.ndarray:
    """``table`` (K,) given on the uniform grid ``k pi / K`` of axes in [0, pi), at ``axis`` (radians,
    any shape): interpolated linearly and periodically (period pi)."""
    table = np.asarray(table, np.float64)
    grid = np.arange(len(table)) * np.pi / len(table)
    return np.interp(np.mod(axis, np.pi), grid, table, period=np.pi)


def calibrate_axis(axis, offsets):
    """``axis`` (radians, any shape) plus the calibration offset at it: ``offsets`` (K,) radians on the
    uniform grid ``k pi / K`` of axes in [0, pi), interpolated linearly and periodically (period pi).
    ``offsets=None``: ``axis`` unchanged."""
    if offsets is None:
        return axis
    return (axis + _on_axis_grid(offsets, axis)).astype(np.float32)


CARDINAL_AXES = (0.0, np.pi / 2)
CARDINAL_WIDTH = np.radians(2.5)


def axis_offsets(true_axis, estimated_axis, n: int = 72, fixed=CARDINAL_AXES, width=CARDINAL_WIDTH):
    """The calibration ``offsets`` (``calibrate_axis``) that map estimated axes to true ones, from
    pairs measured on stimuli of known axis (radians; axes, so modulo pi): on each of ``n`` grid
    axes, the offset ``true - estimated`` interpolated between the pairs, ordered by their estimate.

    Axes read within ``width`` of a ``fixed`` axis are kept as they are read (the pairs estimated
    there are left out, and the offsets ramp from 0 at ``width`` to the measured ones): on the shipped ss-RNN the units' axes cluster at horizontal and vertical, so gratings from
    2.5 degrees on one side of either to 7.5 on the other are all read within 0.5 degree of it. No
    offset can tell them apart there; keeping the cardinal axes leaves horizontal and vertical
    motion, the commonest, read as well as before."""

    def axis_difference(a, b):  # a - b for axes (modulo pi), in (-pi/2, pi/2]
        return np.angle(np.exp(2j * (a - b))) / 2

    true_axis = np.asarray(true_axis, np.float64)
    est = np.mod(np.asarray(estimated_axis, np.float64), np.pi)
    off = axis_difference(true_axis, est)
    fixed = np.mod(np.asarray(fixed, np.float64), np.pi)
    if fixed.size:
        near = np.abs(axis_difference(est[:, None], fixed[None, :])) < width
        keep = ~near.any(1)
        kept = np.mod(np.concatenate([fixed - width, fixed, fixed + width]), np.pi)
        est = np.concatenate([est[keep], kept])
        off = np.concatenate([off[keep], np.zeros(len(kept))])
    order = np.argsort(est)
    grid = np.arange(n) * np.pi / n
    return np.interp(grid, est[order], off[order], period=np.pi)


COHERENCE_FLOOR = 0.6


def coherence_on_axis_scale(coherence, axis, reference, floor: float = COHERENCE_FLOOR):
    """``coherence`` on the scale of what a pattern of one axis gives at ``axis``: from ``floor`` up,
    ``[floor, reference(axis)]`` is stretched to ``[floor, 1]`` (clipped to 1); below ``floor`` it is
    unchanged. ``reference`` (K,) is the coherence measured on gratings of axes ``k pi / K``
    (``mt_fit.fit_axis_calibration``), interpolated linearly and periodically (period pi); ``None``:
    ``coherence`` unchanged.

    The units' axes cluster at horizontal and vertical, so the units a grating drives agree less on
    its axis when it is oblique: on the shipped ss-RNN about 0.97 on a horizontal or vertical
    grating, 0.73-0.85 on an oblique one, where the aperture step (``along_one_axis``, from 0.7 to
    0.9) kept only part of the motion along the axis and the rest of the read-out's guess (the live
    225-degree grating read 7 degrees off, a 45-degree one 14). Natural images read 0.35 (median),
    up to about 0.6 (90th percentile): below ``floor`` nothing changes, so their cells on oblique
    edges are not taken for gratings (dividing by the reference alone cost real clips 1 degree
    per cell)."""
    if reference is None:
        return coherence
    reference = np.asarray(reference, np.float64)
    if reference.ndim != 1 or len(reference) < 2 or not np.all(reference > 0):
        raise ValueError("reference must be (K >= 2,) positive coherences")
    shape = np.broadcast_shapes(np.shape(coherence), np.shape(axis))
    out = np.empty(shape, np.float32)
    _on_axis_scale(
        _flat(coherence, shape, np.float64), _flat(axis, shape, np.float64), reference, floor,
        out.reshape(-1),
    )  # fmt: skip
    return out


def axis_coherence(axis_sums, sigma: float, offsets=None) -> tuple[np.ndarray, np.ndarray]:
    """How much the units around each cell agree on one axis of motion, and that axis.

    Parameters
    ----------
    axis_sums : (rows, cols, 3) per cell, its units' activity-weighted doubled-angle axes and their
        total activity (``kernels._axis_sums`` summed over the cell's patches).
    sigma : the neighbourhood, a Gaussian of ``sigma`` cells (that of ``integrate_cells``); 0: the
        cell alone.
    offsets : the axis calibration (``calibrate_axis``, ``axis_offsets``), or ``None``.

    Returns
    -------
    coherence (rows, cols) float32 in [0, 1]: the length of the mean doubled-angle axis (about 0.9 on
    a grating, 0.35 on a natural image); axis (rows, cols) float32 radians (an axis: modulo pi).
    """
    sums = _f32(axis_sums)
    if sigma > 0 and sums.size:
        sums = _blur(sums, sigma)
    coherence, axis = np.empty((2, *sums.shape[:-1]), np.float32)
    offsets = _NO_OFFSETS if offsets is None else np.asarray(offsets, np.float64)
    _axis_finish(sums.reshape(-1, 3), offsets, coherence.reshape(-1), axis.reshape(-1))
    return coherence, axis


def pool_constraints(
    direction,
    speed,
    weight,
    one_axis,
    axis,
    sigma: float,
    lo: float,
    hi: float,
    prior: float,
    local: float | None = None,
):
    """The aperture problem, solved over a neighbourhood (intersection of constraints). A cell whose
    units see one axis of motion measures only the velocity's component along that axis (a horizontal
    strand of hair moving up and to the left is seen moving up); a cell whose units see several
    axes measures the whole velocity. Each cell's velocity becomes the weighted least-squares velocity
    that best meets the constraints of the cells around it, blended in as far as the cell itself
    sees one axis only; where every neighbour sees the same axis (a grating) nothing fixes the motion
    along it, and the cell keeps its own reading.

    Parameters
    ----------
    direction, speed : (rows, cols) radians, px/frame: each cell's motion (after ``along_one_axis``).
    weight : (rows, cols) >= 0, how much each cell's constraint counts (its confidence).
    one_axis : (rows, cols) in [0, 1], the cells' coherence on the scale of gratings of their axis
        (``coherence_on_axis_scale``); ``axis`` (rows, cols) radians, their axis (``axis_coherence``).
    sigma : the neighbourhood, a Gaussian of ``sigma`` cells.
    lo, hi : a cell's constraint goes from the whole velocity to the component along its axis, and
        its blend towards the neighbourhood's solution from 0 to 1, as ``one_axis`` goes from ``lo`` to
        ``hi``.
    prior : weight of each cell's own velocity in its solution, relative to the mean weight of its
        neighbourhood's constraints: it keeps nearly parallel constraints (a grating, whose cells' axes
        differ by a few degrees) from swinging the solution along the stripes.
    local : or None, a smaller Gaussian (cells). Where the neighbourhood's solution turns a cell by
        more than 90 degrees, that of its ``local`` neighbourhood is taken if it does not: the cell
        belongs to another motion (a lane of cars beside a faster one going the other way), which
        a cell whose own reading is wrong does not have around it. ``None``: always the first.

    Notes
    -----
    Cell ``k`` with axis ``n_k`` and one-axis share ``a_k`` constrains a velocity ``u`` by
    ``M_k = a_k n_k n_k^T + (1 - a_k) I``: it asks ``M_k u = M_k v_k``. Cell ``c`` takes
    ``u_c = argmin sum_k g_ck w_k |M_k^(1/2) (u - v_k)|^2 + lam_c |u - v_c|^2`` with ``g`` the Gaussian
    and ``lam_c = prior * trace(sum_k g_ck w_k M_k) / 2``, a 2 x 2 linear system per cell, and shows
    ``(1 - a_c) v_c + a_c u_c``.

    Returns
    -------
    direction (rows, cols) float32 radians, speed (rows, cols) float32 px/frame
    """
    if not 0 <= lo < hi:
        raise ValueError(f"need 0 <= lo < hi, got lo={lo}, hi={hi}")
    if not sigma > 0 or not prior > 0 or not (local is None or local > 0):
        raise ValueError(f"sigma, prior and local must be > 0, got {sigma}, {prior} and {local}")
    if direction.size == 0:
        return direction.astype(np.float32), speed.astype(np.float32)
    shape = np.shape(direction)
    # per cell: w M and w M v (summed over the neighbourhood by the blur), and its a and v
    terms = np.empty((*shape, 5), np.float32)
    cell = np.empty((direction.size, 3), np.float32)
    inputs = (_flat(a, shape) for a in (direction, speed, weight, one_axis, axis))
    _constraint_terms(*inputs, lo, hi, terms.reshape(-1, 5), cell)
    out_dir, out_speed = np.empty((2, *shape), np.float32)
    sums = _blur(terms, sigma).reshape(-1, 5)
    near = sums if local is None else _blur(terms, local).reshape(-1, 5)
    _constraint_finish(sums, near, cell, prior, out_dir.reshape(-1), out_speed.reshape(-1))
    return out_dir, out_speed


def along_one_axis(direction, speed, coherence, axis, lo: float, hi: float):
    """The aperture problem, stated where it holds. Where the units around a cell respond to one axis
    of motion only (a grating, a long straight edge), they measure only the motion along that axis
    (normal to the stripes); the motion along the stripes is a guess, which the MT read-out makes from
    its priors and which wanders with the grating's phase. There each cell's velocity is replaced by
    its component along ``axis``, blended in as ``coherence`` (``axis_coherence``) goes from ``lo`` to
    ``hi``; elsewhere (natural textures, plaids, objects) it is unchanged.

    ``direction``, ``speed``, ``coherence``, ``axis``: (rows, cols), radians, px/frame, [0, 1], radians.
    Returns direction (rows, cols) float32 radians, speed (rows, cols) float32 px/frame.
    """
    if not 0 <= lo < hi:
        raise ValueError(f"need 0 <= lo < hi, got lo={lo}, hi={hi}")
    shape = np.broadcast_shapes(*(np.shape(a) for a in (direction, speed, coherence, axis)))
    out_dir, out_speed = np.empty((2, *shape), np.float32)
    cells = (_flat(a, shape) for a in (direction, speed, coherence, axis))
    _along_axis(*cells, lo, hi, out_dir.reshape(-1), out_speed.reshape(-1))
    return out_dir, out_speed


@functools.lru_cache(maxsize=256)
def _sample_at(side: int, cell_px: int, grid: tuple[int, int], cells: tuple[int, int]):
    out = []
    for n, size in zip(cells, grid, strict=True):
        if side <= cell_px:
            f = cell_px // side
            at = np.arange(n)[:, None] * f + np.arange(f)[None, :]
        else:
            at = ((np.arange(n) + 0.5) * cell_px // side).astype(np.int64)[:, None]
        at = np.ascontiguousarray(np.minimum(at, size - 1), np.int64)
        at.flags.writeable = False
        out.append(at)
    return tuple(out)


@dataclass(frozen=True)
class Pooling:
    """How per-patch channels become per-cell features (the same live and in training).

    Each level's channels are averaged over time (exponential, ``tau`` frames) at the level's own
    resolution, then over space by a box of about ``pool_px`` input pixels (one feature set per
    entry: several entries give the read-out local detail and wider context side by side), then
    sampled at the cells (``cell_px`` side): finer levels average the patches of a cell, coarser
    levels take the patch under the cell's centre. Features are ordered level-major:
    ``index = level * n_scales + scale``.
    """

    patch: int = 8
    cell_px: int = 16
    pool_px: tuple[int, ...] = (48,)
    tau: float = 2.0

    def __post_init__(self):
        object.__setattr__(self, "pool_px", tuple(int(p) for p in np.atleast_1d(self.pool_px)))

    @property
    def n_scales(self) -> int:
        return len(self.pool_px)

    def box(self, level: int, scale: int = 0) -> int:
        return max(1, int(round(self.pool_px[scale] / (self.patch * 2**level))))

    def grid(self, shape: tuple[int, int]) -> tuple[int, int]:
        return shape[0] // self.cell_px, shape[1] // self.cell_px

    def update(self, acc: np.ndarray | None, contrib: np.ndarray) -> np.ndarray:
        """The running average of one level's ``(gh, gw, C)`` channels after a new frame."""
        if acc is None or acc.shape != contrib.shape:
            return contrib.copy()
        a = np.float32(1.0 / self.tau)
        acc *= 1 - a
        acc += a * contrib
        return acc

    @staticmethod
    def _scale_channels(acc: np.ndarray, scale: int, blocks: int | None) -> np.ndarray:
        if blocks is None:
            return acc
        return np.concatenate([acc[..., scale * blocks : (scale + 1) * blocks], acc[..., -1:]], -1)

    def sample_at(self, level: int, grid: tuple[int, int], cells: tuple[int, int]):
        """Which positions of a level's ``grid = (gh, gw)`` patches each of the ``cells = (ch, cw)``
        samples, as ``(ys (ch, f), xs (cw, f))`` for ``_pool_cells``: on levels finer than the cells,
        the ``f x f`` patches of each cell (past the grid's edge, its last row or column); on coarser
        levels, the patch under the cell's centre. Read-only arrays, computed once per layout."""
        return _sample_at(self.patch * 2**level, self.cell_px, tuple(grid), tuple(cells))

    def cells(self, accs: list[np.ndarray], shape: tuple[int, int], blocks: int | None = None):
        """Per-cell features ``(ch, cw, L * S, C)`` from the running averages of every level.

        ``blocks=None``: every scale pools the same channels (fitting: per-unit activity + total).
        ``blocks=K``: the channels are ``S`` blocks of ``K`` (one projection per scale) and a total;
        scale ``s`` pools its block and the total, so ``C = K + 1``.
        """
        n_s = self.n_scales
        return self.cells_by_scale(
            [[self._scale_channels(acc, sc, blocks) for sc in range(n_s)] for acc in accs], shape
        )

    def cells_by_scale(self, accs, shape: tuple[int, int], executor=None) -> np.ndarray:
        """Per-cell features ``(ch, cw, L * S, C)`` from ``accs[level][scale]``, the ``(gh, gw, C)``
        running average of the channels that scale pools (the live engine keeps them apart, see
        ``_project_frame``). With an ``executor`` (``concurrent.futures``), the finest level's widest
        box is pooled on the calling thread and the others on the executor (OpenCV releases the
        GIL); the numbers are the same."""
        ch, cw = self.grid(shape)
        n_s = self.n_scales
        n_c = accs[0][0].shape[-1]
        out = np.empty((ch, cw, len(accs) * n_s, n_c), np.float32)

        def pool(tasks):
            for lv, sc in tasks:
                src = np.ascontiguousarray(accs[lv][sc], np.float32)
                ys, xs = self.sample_at(lv, src.shape[:2], (ch, cw))
                _pool_cells(src, self.box(lv, sc), ys, xs, out[:, :, lv * n_s + sc])

        tasks = [(lv, sc) for lv in range(len(accs)) for sc in range(n_s)]
        if executor is None or len(tasks) == 1:
            pool(tasks)
            return out
        # The finest level's widest box is about half of the work (measured at 640x480 with boxes
        # of 32 and 96 px: 0.4 ms of 0.8): it stays on this thread, the rest goes to the helper.
        mine = (0, n_s - 1)
        rest = executor.submit(pool, [t for t in tasks if t != mine])
        try:
            pool([mine])
        finally:  # `out` is written by the helper: never return while it still runs
            rest.result()
        return out

    def whole(self, accs: list[np.ndarray], blocks: int | None = None) -> np.ndarray:
        """Features of the whole frame ``(L * S, C)``: the mean of every level's running average."""
        rows = []
        for acc in accs:
            mean = acc.reshape(-1, acc.shape[-1]).mean(0)
            rows += [self._scale_channels(mean, sc, blocks) for sc in range(self.n_scales)]
        return np.stack(rows)


class MTReadout(Params):
    """Velocity-tuned second stage on divisively normalised, pooled ss-RNN activity.

    Parameters
    ----------
    n_hidden : int
        Number of MT-like units.
    epochs, batch, lr, weight_decay, seed : training settings (Adam on minibatches).

    Attributes
    ----------
    proj_ : (L, N, H) float32
        First layer per level, folded with the input standardisation; applied per patch.
    norm_ : (L,) float32
        Semi-saturation constant of each level's divisive normalisation.
    b1_ : (H,) float32.  W2_ : (H, 2 + S) float32.  b2_ : (2 + S,) float32.
    speed_classes_ : (S,) float32, px/frame; class 0 = still.

    Notes
    -----
    For a cell with pooled unit activity ``x_l`` (N,) and total ``t_l`` at level ``l``, the MT units
    are ``h = relu(sum_l P_l^T x_l / (t_l + c_l) + b1)``; the outputs are a direction vector
    ``v = W2[:, :2]^T h`` (trained towards ``(cos, sin)`` of the true direction on moving cells) and
    speed-class logits. Direction = ``atan2(v)``; speed = ``2 ** E[log2 s | moving]`` over the class
    probabilities; confidence = ``P(moving) * min(|v|, 1) * evidence``, evidence rising from 0 to 1 as ``sum_l t_l / sum_l c_l``
    goes through ``EVIDENCE_RANGE`` (no activity, no confidence).
    """

    def __init__(self, n_hidden: int = 64, epochs: int = 12, batch: int = 512, lr: float = 2e-3,
                 weight_decay: float = 1e-4, seed: int = 0):  # fmt: skip
        self.n_hidden = n_hidden
        self.epochs = epochs
        self.batch = batch
        self.lr = lr
        self.weight_decay = weight_decay
        self.seed = seed

    # ------------------------------------------------------------------ training
    @staticmethod
    def speed_targets(speed: np.ndarray, classes: np.ndarray = SPEED_CLASSES) -> np.ndarray:
        """Soft class labels: still = class 0; a speed between two classes splits in log2 space."""
        speed = np.asarray(speed, np.float64)
        y = np.zeros((len(speed), len(classes)), np.float32)
        moving = speed > 0
        y[~moving, 0] = 1.0
        logc = np.log2(classes[1:].astype(np.float64))
        ls = np.clip(np.log2(np.where(moving, speed, 1.0)), logc[0], logc[-1])
        pos = np.interp(ls, logc, np.arange(len(logc)))
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, len(logc) - 1)
        frac = (pos - lo).astype(np.float32)
        rows = np.nonzero(moving)[0]
        y[rows, 1 + lo[rows]] += 1 - frac[rows]
        y[rows, 1 + hi[rows]] += frac[rows]
        return y

    def _normalise(self, x: np.ndarray, total: np.ndarray, out=None) -> np.ndarray:
        """``(n, L * N)``: each level's activity over its total plus the semi-saturation constant
        (written to ``out``, which may be ``x``, if given)."""
        return np.divide(x, total[..., None] + self.norm_[None, :, None], out=out).reshape(
            len(x), -1
        )

    def fit(self, x, total, direction, speed, weight=None, progress=None, copy=True) -> MTReadout:
        """Fit on pooled features.

        Parameters
        ----------
        x : (n, L, N) pooled unit activity per level.  total : (n, L) pooled total activity.
        direction : (n,) radians (ignored where ``speed == 0``).  speed : (n,) px/frame, 0 = still.
        weight : (n,) optional row weights.
        copy : if False and ``x`` is a C-contiguous float32 array, it is normalised and standardised
            in place (overwritten): one copy of the data fewer in memory (as scikit-learn's
            ``copy_X``). The fit is the same either way.
        """
        x = np.asarray(x, np.float32)
        total = np.asarray(total, np.float32)
        n, n_levels, n_units = x.shape
        if total.shape != (n, n_levels) or len(direction) != n or len(speed) != n:
            raise ValueError("x (n, L, N), total (n, L), direction (n,) and speed (n,) must agree")
        rng = np.random.default_rng(self.seed)
        self.speed_classes_ = SPEED_CLASSES.copy()
        self.norm_ = (0.25 * np.maximum(total.mean(0), 1e-6)).astype(np.float32)
        in_place = not copy and x.flags.c_contiguous and x.flags.writeable
        fs = self._normalise(x, total, out=x if in_place else None)
        mu = fs.mean(0)
        sd = fs.std(0) + 1e-3
        # standardised in place: the same float32 operations as (f - mu) / sd, two copies of the
        # data fewer at the peak (the shipped read-out's 207,540 rows take 3.4 GB a copy)
        fs -= mu
        fs /= sd
        d = fs.shape[1]
        h = self.n_hidden
        s = len(self.speed_classes_)
        ys = self.speed_targets(speed, self.speed_classes_)
        moving = (np.asarray(speed) > 0).astype(np.float32)
        yv = (
            np.stack([np.cos(direction), np.sin(direction)], 1).astype(np.float32) * moving[:, None]
        )
        w = np.ones(n, np.float32) if weight is None else np.asarray(weight, np.float32)
        params = {
            "W1": (rng.standard_normal((d, h)) * np.sqrt(2.0 / d)).astype(np.float32),
            "b1": np.zeros(h, np.float32),
            "W2": (rng.standard_normal((h, 2 + s)) * np.sqrt(1.0 / h)).astype(np.float32),
            "b2": np.zeros(2 + s, np.float32),
        }
        m = {k: np.zeros_like(v) for k, v in params.items()}
        v2 = {k: np.zeros_like(v) for k, v in params.items()}
        step = 0
        self.history_ = []
        for epoch in range(self.epochs):
            order = rng.permutation(n)
            lr = self.lr * 0.5 * (1 + np.cos(np.pi * epoch / self.epochs))
            tot = 0.0
            for start in range(0, n, self.batch):
                bi = order[start : start + self.batch]
                xb, wb = fs[bi], w[bi][:, None]
                a1 = xb @ params["W1"] + params["b1"]
                h1 = np.maximum(a1, 0)
                out = h1 @ params["W2"] + params["b2"]
                vec, logit = out[:, :2], out[:, 2:]
                logit = logit - logit.max(1, keepdims=True)
                p = np.exp(logit)
                p /= p.sum(1, keepdims=True)
                mv = moving[bi][:, None]
                g_vec = 2 * (vec - yv[bi]) * mv * wb
                g_logit = (p - ys[bi]) * wb
                loss = (
                    ((vec - yv[bi]) ** 2 * mv * wb).sum() - (ys[bi] * np.log(p + 1e-9) * wb).sum()
                ) / len(bi)
                tot += loss * len(bi)
                g_out = np.concatenate([g_vec, g_logit], 1) / len(bi)
                grads = {"W2": h1.T @ g_out, "b2": g_out.sum(0)}
                g_h = (g_out @ params["W2"].T) * (a1 > 0)
                grads["W1"] = xb.T @ g_h
                grads["b1"] = g_h.sum(0)
                step += 1
                for k in params:
                    g = grads[k] + (self.weight_decay * params[k] if k[0] == "W" else 0)
                    m[k] = 0.9 * m[k] + 0.1 * g
                    v2[k] = 0.999 * v2[k] + 0.001 * g * g
                    mh = m[k] / (1 - 0.9**step)
                    vh = v2[k] / (1 - 0.999**step)
                    params[k] -= (lr * mh / (np.sqrt(vh) + 1e-8)).astype(np.float32)
            self.history_.append(tot / n)
            if progress is not None:
                progress(epoch, tot / n)
        # Fold the standardisation into the first layer, so that it applies to raw normalised input.
        w1 = params["W1"] / sd[:, None]
        self.proj_ = np.ascontiguousarray(w1.reshape(n_levels, n_units, h), np.float32)
        self.b1_ = (params["b1"] - (mu / sd) @ params["W1"]).astype(np.float32)
        self.W2_ = params["W2"].astype(np.float32)
        self.b2_ = params["b2"].astype(np.float32)
        return self

    # ------------------------------------------------------------------ use
    def _check_fitted(self):
        if not hasattr(self, "proj_"):
            raise NotFittedError("MTReadout is not fitted: call fit() or load one")

    @property
    def n_features(self) -> int:
        """Feature sets read (pyramid levels x pooling scales)."""
        self._check_fitted()
        return self.proj_.shape[0]

    def hidden_from_projected(self, pooled: np.ndarray) -> np.ndarray:
        """MT units from pooled projected channels ``(..., L, H + 1)`` (last channel = total)."""
        self._check_fitted()
        inv_total = 1.0 / (pooled[..., -1] + self.norm_)
        # sum_l x_l / total_l as one batched (1, L) x (L, H) product: 5x faster than divide-then-sum
        a = np.matmul(inv_total[..., None, :], pooled[..., :-1])[..., 0, :] + self.b1_
        return np.maximum(a, 0, out=a)

    #: Activity (summed totals relative to the summed semi-saturation constants) at which a cell's
    #: confidence starts, and at which it is no longer reduced. On a held-out pan seen through JPEG,
    #: cells at ratios 1-2 erred by 27 deg (median), at 2-4 by 9 deg, above 4 by 8 deg.
    EVIDENCE_RANGE = (0.5, 3.0)

    def evidence(self, total: np.ndarray, evidence_range: tuple[float, float] | None = None):
        """How much activity backs a read-out, in [0, 1]: the summed total over feature sets
        ``(..., L)`` relative to the summed semi-saturation constants, mapped linearly from
        ``EVIDENCE_RANGE`` to [0, 1]. No activity, no confidence: a blank or nearly flat region is
        never shown as confidently moving, whatever the MT units say."""
        lo, hi = evidence_range or self.EVIDENCE_RANGE
        ratio = total.sum(-1) / self.norm_.sum()
        return np.clip((ratio - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)

    def decode_projected(self, pooled: np.ndarray, evidence_range=None):
        """``(direction rad, speed px/frame, confidence)``, float32 ``(...)``, from pooled projected
        channels ``(..., L, H + 1)``: ``hidden_from_projected``, ``decode_hidden`` and ``evidence``,
        with the MT units and the decoding of their outputs each computed in one compiled pass
        (what the live engine calls every frame)."""
        self._check_fitted()
        shape = pooled.shape[:-2]
        flat = np.ascontiguousarray(pooled, np.float32).reshape(-1, *pooled.shape[-2:])
        hidden = np.empty((len(flat), flat.shape[-1] - 1), np.float32)
        totals = np.empty(len(flat), np.float32)
        _hidden_cells(flat, self.norm_, self.b1_, hidden, totals)
        out = hidden @ self.W2_
        out += self.b2_
        lo, hi = evidence_range or self.EVIDENCE_RANGE
        maps = np.empty((3, len(flat)), np.float32)
        _decode_outputs(
            out, totals, np.log2(self.speed_classes_[1:]), np.float32(self.norm_.sum()), lo, hi,
            *maps,
        )  # fmt: skip
        return tuple(a.reshape(shape) for a in maps)

    def decode_hidden(self, h: np.ndarray):
        """``(direction rad, speed px/frame, confidence, P(moving))`` from MT units ``(..., H)``."""
        out = h @ self.W2_ + self.b2_
        vec, logit = out[..., :2], out[..., 2:]
        logit = logit - logit.max(-1, keepdims=True)
        p = np.exp(logit)
        p /= p.sum(-1, keepdims=True)
        p_move = 1.0 - p[..., 0]
        logs = np.log2(self.speed_classes_[1:])
        pm = p[..., 1:]
        speed = np.exp2((pm * logs).sum(-1) / np.maximum(pm.sum(-1), 1e-9))
        direction = np.arctan2(vec[..., 1], vec[..., 0])
        conf = p_move * np.minimum(np.hypot(vec[..., 0], vec[..., 1]), 1.0)
        return direction, speed.astype(np.float32), conf.astype(np.float32), p_move

    def predict(self, x: np.ndarray, total: np.ndarray, evidence_range=None):
        """Decode raw pooled unit activity ``(n, L, N)`` with totals ``(n, L)`` (training space);
        ``evidence_range`` as in :meth:`evidence`."""
        self._check_fitted()
        f = np.asarray(x, np.float32) / (
            np.asarray(total, np.float32)[..., None] + self.norm_[:, None]
        )
        a = np.einsum("nlu,luh->nh", f, self.proj_) + self.b1_
        direction, speed, conf, p_move = self.decode_hidden(np.maximum(a, 0))
        ev = self.evidence(np.asarray(total, np.float32), evidence_range)
        return direction, speed, conf * ev, p_move

    # ------------------------------------------------------------------ storage
    FIELDS = ("proj_", "norm_", "b1_", "W2_", "b2_", "speed_classes_")

    def save(self, path, **meta) -> None:
        self._check_fitted()
        import json

        np.savez_compressed(
            path,
            format=np.array("v1motion-mt-readout"),
            meta=np.array(json.dumps(meta)),
            **{k.rstrip("_"): getattr(self, k) for k in self.FIELDS},
        )

    @classmethod
    def load(cls, path) -> MTReadout:
        import json

        with np.load(path, allow_pickle=False) as f:
            if "format" not in f.files or str(f["format"]) != "v1motion-mt-readout":
                raise ValueError(f"{path} is not a v1motion MT read-out file")
            r = cls()
            for k in cls.FIELDS:
                setattr(r, k, f[k.rstrip("_")].astype(np.float32))
            r.meta_ = json.loads(str(f["meta"]))
        return r

    @classmethod
    def random(cls, n_levels: int, n_units: int, n_hidden: int = 16, seed: int = 0) -> MTReadout:
        """An untrained read-out with random weights (tests and the ``random`` engine)."""
        rng = np.random.default_rng(seed)
        r = cls(n_hidden=n_hidden, seed=seed)
        r.proj_ = (0.3 * rng.standard_normal((n_levels, n_units, n_hidden))).astype(np.float32)
        r.norm_ = np.ones(n_levels, np.float32)
        r.b1_ = (0.1 * rng.standard_normal(n_hidden)).astype(np.float32)
        r.speed_classes_ = SPEED_CLASSES.copy()
        r.W2_ = rng.standard_normal((n_hidden, 2 + len(SPEED_CLASSES))).astype(np.float32)
        r.b2_ = np.zeros(2 + len(SPEED_CLASSES), np.float32)
        return r
