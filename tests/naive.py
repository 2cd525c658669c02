"""Slow, obviously-right numpy twins of the Numba kernels in ``models/motion/kernels.py`` and
``models/motion/mt_readout.py`` (same names, or the name of the function a kernel computes), and of
``MotionEngine.encode`` as it was written before it was optimised."""

import cv2
import numpy as np


def _ssrnn_infer_frame(
    C, G, R, b, prev_idx, prev_val, prev_cnt, n_clones, inv2ty2, lam, kappa, kmax
):
    """Greedy MAP of every patch, written from the definition one unit at a time.

    ``R`` here is the untransposed ``(N, N)`` recurrent matrix. Returns lists of (units, values) per patch.
    """
    n_patches, n_atoms = C.shape
    n_units = len(b)
    atom_of = np.arange(n_units) // (2 * n_clones)
    sign_of = np.where((np.arange(n_units) // n_clones) % 2 == 0, 1.0, -1.0)
    results = []
    for m in range(n_patches):
        prev = prev_idx[m, : prev_cnt[m]]
        pi = b.astype(np.float64) + R[:, prev].astype(np.float64) @ prev_val[m, : prev_cnt[m]]
        support = []  # unit ids
        coef = np.zeros(0)
        rho = C[m].astype(np.float64).copy()
        for _ in range(2 * kmax):
            if len(support) >= kmax:
                break
            # Gain of every unit whose atom is free and whose sign matches the residual correlation.
            free = ~np.isin(atom_of, [atom_of[u] for u in support])
            r = rho[atom_of]
            gains = np.where(
                free & (sign_of * r > 0), r**2 * inv2ty2 / (1 + lam) + pi - kappa, -np.inf
            )
            u_best = int(np.argmax(gains))  # the first unit on ties
            if not gains[u_best] > 0:
                break
            support.append(u_best)
            while support:
                atoms = [atom_of[u] for u in support]
                gs = G[np.ix_(atoms, atoms)] + lam * np.eye(len(atoms))
                coef = np.linalg.solve(gs, C[m, atoms].astype(np.float64))
                ok = [coef[i] * sign_of[u] > 0 for i, u in enumerate(support)]
                if all(ok):
                    break
                support = [u for u, keep in zip(support, ok, strict=True) if keep]
            atoms = [atom_of[u] for u in support]
            rho = C[m].astype(np.float64) - (G[:, atoms] @ coef if support else 0.0)
        results.append(
            (np.array(support, int), np.abs(coef[: len(support)]) if support else np.zeros(0))
        )
    return results


def _project_frame(idx, val, cnt, proj, dir_bin, speed_bin, ds_weight, n_dir, n_speed):
    """Returns ``(contrib, dir_hist, speed_hist, unit_act)`` for one frame, by explicit sums:
    ``contrib[m] = [sum_u z_u proj[u], sum_u z_u]``."""
    m_patches = len(cnt)
    contrib = np.zeros((m_patches, proj.shape[1] + 1))
    dir_hist = np.zeros(n_dir)
    speed_hist = np.zeros(n_speed)
    unit_act = np.zeros(len(proj))
    for m in range(m_patches):
        for i in range(cnt[m]):
            u, v = idx[m, i], val[m, i]
            contrib[m, :-1] += v * proj[u]
            contrib[m, -1] += v
            dir_hist[dir_bin[u]] += v * ds_weight[u]
            speed_hist[speed_bin[u]] += v * ds_weight[u]
            unit_act[u] += v
    return contrib, dir_hist, speed_hist, unit_act


def encode(engine, state, grey):
    """``MotionEngine.encode`` written level by level with the numpy twin of the kernel.

    ``state`` is a dict, ``{}`` at the start of a stream. Returns ``[(units, values) per patch]`` per level.
    Per level: pyramid, whitening convolution, RMS contrast normalisation with a running average, the
    non-overlapping patches, their atom correlations, then greedy inference patch by patch.
    """
    model, p = engine.model, engine.model.patch
    n_atoms, kmax = model.n_atoms, model.kmax
    out = []
    img = grey
    for lv in range(engine.levels):
        if lv:
            img = cv2.pyrDown(img)
        white = model.whitener_.transform(img)
        rms = float(np.sqrt(np.mean(white**2)))
        state[("rms", lv)] = (
            rms if ("rms", lv) not in state else 0.9 * state[("rms", lv)] + 0.1 * rms
        )
        white *= np.float32(1.0 / max(state[("rms", lv)], engine.rms_floor))
        gh, gw = white.shape[0] // p, white.shape[1] // p
        patches = np.array(
            [
                white[i * p : (i + 1) * p, j * p : (j + 1) * p].ravel()
                for i in range(gh)
                for j in range(gw)
            ]
        ).reshape(gh * gw, p * p)
        C = (patches @ model.W_).reshape(gh * gw, n_atoms)
        prev_idx = np.zeros((gh * gw, kmax), np.int64)
        prev_val = np.zeros((gh * gw, kmax), np.float32)
        prev_cnt = np.zeros(gh * gw, np.int64)
        for m, (units, vals) in enumerate(state.get(("prev", lv), [])):
            prev_idx[m, : len(units)] = units
            prev_val[m, : len(units)] = vals
            prev_cnt[m] = len(units)
        code = _ssrnn_infer_frame(
            C, model.gram(), model.R_, model.b_, prev_idx, prev_val, prev_cnt, model.n_clones,
            1 / (2 * model.tau_y**2), model.lam, model.kappa, kmax,
        )  # fmt: skip
        state[("prev", lv)] = code
        out.append(code)
    return out


def _best_clones(pi, n_clones):
    """Per group of ``n_clones`` consecutive units, the largest prior log-odds and the first unit that
    has it."""
    groups = np.asarray(pi).reshape(-1, n_clones)
    first = groups.argmax(1)  # argmax returns the first of equal values
    return groups.max(1), np.arange(len(groups)) * n_clones + first


def _scaled_patches(frame, scale, p):
    """The non-overlapping ``p x p`` patches of ``frame * scale``, one flattened patch per row."""
    gh, gw = frame.shape[0] // p, frame.shape[1] // p
    scaled = frame * np.float32(scale)
    return np.array(
        [
            scaled[i * p : (i + 1) * p, j * p : (j + 1) * p].ravel()
            for i in range(gh)
            for j in range(gw)
        ]
    ).reshape(gh * gw, p * p)


def code_change(prev, cur, n_units):
    """Twin of ``_code_change``: dense codes, L1 of the difference over the sum of the L1 norms."""
    a, b = prev.dense(n_units).astype(np.float64), cur.dense(n_units).astype(np.float64)
    total = np.abs(a).sum(1) + np.abs(b).sum(1)
    diff = np.abs(a - b).sum(1)
    return np.where(total > 0, diff / np.where(total > 0, total, 1.0), 0.0)


def image_change(grey, prev, older, p, rows, cols):
    """Twin of ``_image_change``: per ``p x p`` patch of the first ``rows x cols``, the mean absolute
    difference from ``prev`` and the mean squared differences from ``prev`` and ``older``, one patch
    at a time in float64, as ``(3, rows, cols)``."""
    out = np.zeros((3, rows, cols))
    for i in range(rows):
        for j in range(cols):
            cut = np.s_[i * p : (i + 1) * p, j * p : (j + 1) * p]
            g = grey[cut].astype(np.float64)
            d1, d2 = g - prev[cut], g - older[cut]
            out[:, i, j] = np.abs(d1).mean(), (d1**2).mean(), (d2**2).mean()
    return out


def axis_cell_sums(code, axis_re, axis_im, n_units, grid, f, cells):
    """Twin of ``_axis_cell_sums``: dense codes times the units' doubled-angle axes, and their total,
    per patch of the ``grid = (rows, cols)``, then summed over each cell's ``f x f`` patches."""
    a = code.dense(n_units).astype(np.float64)
    per_patch = np.stack([a @ axis_re, a @ axis_im, a.sum(1)], axis=1).reshape(*grid, 3)
    out = np.zeros((*cells, 3))
    for i in range(cells[0]):
        for j in range(cells[1]):
            out[i, j] = per_patch[i * f : (i + 1) * f, j * f : (j + 1) * f].sum(axis=(0, 1))
    return out


def box_mean(src, k):
    """The mean over the ``k x k`` window at every position of ``(h, w, c)``, edges replicated, the
    window of ``y`` covering ``y - k // 2 .. y - k // 2 + k - 1``, one window at a time."""
    half = k // 2
    pad = np.pad(
        src.astype(np.float64), ((half, k - 1 - half), (half, k - 1 - half), (0, 0)), "edge"
    )
    h, w = src.shape[:2]
    return np.mean([pad[i : i + h, j : j + w] for i in range(k) for j in range(k)], axis=0)


def _pool_cells(src, k, ys, xs):
    """Box means sampled at cells: each cell the mean of ``box_mean`` at its rows ``ys[i]`` x columns
    ``xs[j]``."""
    b = box_mean(src, k)
    out = np.empty((len(ys), len(xs), src.shape[2]))
    for i, rows in enumerate(ys):
        for j, cols in enumerate(xs):
            out[i, j] = np.mean([b[r, q] for r in rows for q in cols], axis=0)
    return out.astype(np.float32)


def _hidden_cells(pooled, norm, b1):
    """The MT units of each cell, one cell at a time: divisively normalised pooled channels summed
    over the feature sets, rectified; and each cell's summed total activity."""
    n_h = pooled.shape[-1] - 1
    hidden, totals = [], []
    for cell in pooled.astype(np.float64):
        drive = sum(cell[lv, :n_h] / (cell[lv, n_h] + norm[lv]) for lv in range(len(cell)))
        hidden.append(np.maximum(b1 + drive, 0))
        totals.append(cell[:, n_h].sum())
    return np.array(hidden), np.array(totals)


def _decode_outputs(out, totals, speed_classes, norm_sum, lo, hi):
    """The MT read-out's outputs decoded one cell at a time, from their definition: speed-class
    probabilities, the speed as the geometric mean over the moving classes, the direction of the
    vector, and the confidence as P(moving) x the vector's length (at most 1) x the evidence of the
    summed activity."""
    direction, speed, conf = [], [], []
    for o, total in zip(np.asarray(out, np.float64), totals, strict=True):
        p = np.exp(o[2:] - o[2:].max())
        p /= p.sum()
        moving = p[1:]
        speed.append(2 ** ((moving * np.log2(speed_classes[1:])).sum() / max(moving.sum(), 1e-9)))
        direction.append(np.arctan2(o[1], o[0]))
        evidence = np.clip((total / norm_sum - lo) / (hi - lo), 0, 1)
        conf.append((1 - p[0]) * min(np.hypot(o[0], o[1]), 1.0) * evidence)
    return np.array(direction), np.array(speed), np.array(conf)


def _decode_cells(pooled, norm, b1, W2, b2, speed_classes, lo, hi):
    """The MT read-out of each cell written from its definition, one cell at a time: divisively
    normalised pooled channels, rectified MT units, then their outputs decoded
    (``_decode_outputs``)."""
    hidden, totals = _hidden_cells(pooled, norm, b1)
    return _decode_outputs(hidden @ W2 + b2, totals, speed_classes, norm.sum(), lo, hi)


# The read-out's per-cell steps (``models/motion/mt_readout.py``), as numpy expressions over whole
# maps in float64 around the same Gaussian blur.


def _gauss(a, sigma):
    a = np.asarray(a, np.float32)
    return cv2.GaussianBlur(a, (0, 0), sigma, borderType=cv2.BORDER_REFLECT).reshape(a.shape)


def _on_axis_grid(table, axis):
    grid = np.arange(len(table)) * np.pi / len(table)
    return np.interp(np.mod(axis, np.pi), grid, np.asarray(table, np.float64), period=np.pi)


def integrate_cells(direction, speed, weight, sigma):
    """Weighted vector mean of the directions and geometric mean of the speeds over a Gaussian;
    a cell without weight around it keeps its own."""
    d, s = np.asarray(direction, np.float64), np.asarray(speed, np.float64)
    w = np.maximum(np.nan_to_num(np.asarray(weight, np.float64), nan=0.0), 0.0)
    sw = _gauss(w, sigma).astype(np.float64)
    vx, vy = _gauss(w * np.cos(d), sigma), _gauss(w * np.sin(d), sigma)
    log_speed = _gauss(w * np.log(np.maximum(s, 1e-3)), sigma) / np.maximum(sw, 1e-12)
    backed = sw > 1e-6
    return np.where(backed, np.arctan2(vy, vx), d), np.where(backed, np.exp(log_speed), s)


def axis_coherence(axis_sums, sigma, offsets=None):
    """Length and half-angle of each cell's blurred mean doubled-angle axis, then calibrated."""
    sums = _gauss(axis_sums, sigma).astype(np.float64) if sigma > 0 else np.float64(axis_sums)
    re, im, total = sums[..., 0], sums[..., 1], sums[..., 2]
    coherence = np.clip(np.hypot(re, im) / np.maximum(total, 1e-12), 0.0, 1.0)
    axis = 0.5 * np.arctan2(im, re)
    if offsets is not None:
        axis = axis + _on_axis_grid(offsets, axis)
    return coherence, axis


def coherence_on_axis_scale(coherence, axis, reference, floor=0.6):
    """Above ``floor``, ``[floor, reference(axis)]`` stretched to ``[floor, 1]``, clipped."""
    c = np.asarray(coherence, np.float64)
    ref = _on_axis_grid(reference, axis)
    stretched = floor + (c - floor) * (1.0 - floor) / np.maximum(ref - floor, 0.05)
    return np.clip(np.where(c > floor, stretched, c), 0.0, 1.0)


def along_one_axis(direction, speed, coherence, axis, lo, hi):
    """Each cell's velocity blended towards its component along ``axis`` by its coherence."""
    d, s = np.asarray(direction, np.float64), np.asarray(speed, np.float64)
    w = np.clip((np.asarray(coherence, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    n = np.stack([np.cos(axis), np.sin(axis)], -1).astype(np.float64)
    v = s[..., None] * np.stack([np.cos(d), np.sin(d)], -1)
    along = (v * n).sum(-1, keepdims=True) * n
    v = v + w[..., None] * (along - v)
    return np.arctan2(v[..., 1], v[..., 0]), np.hypot(v[..., 0], v[..., 1])


def constraint_solutions(direction, speed, weight, one_axis, axis, sigma, lo, hi, prior, local):
    """``(v, u, near, a)``: each cell's own velocity, its neighbourhood's solution over ``sigma``
    and over ``local`` (``None`` without one), and its one-axis share."""
    d, s = np.asarray(direction, np.float64), np.asarray(speed, np.float64)
    a = np.clip((np.asarray(one_axis, np.float64) - lo) / (hi - lo), 0.0, 1.0)
    w = np.maximum(np.nan_to_num(np.asarray(weight, np.float64), nan=0.0), 0.0)
    n = np.stack([np.cos(axis), np.sin(axis)], -1).astype(np.float64)
    v = s[..., None] * np.stack([np.cos(d), np.sin(d)], -1)
    M = a[..., None, None] * n[..., :, None] * n[..., None, :] + (1 - a)[..., None, None] * np.eye(
        2
    )
    wM = w[..., None, None] * M
    wMv = np.einsum("...ij,...j->...i", wM, v)

    def solve(g):
        S = _gauss(wM.reshape(*wM.shape[:-2], 4), g).astype(np.float64).reshape(wM.shape)
        r = _gauss(wMv, g).astype(np.float64)
        lam = prior * 0.5 * (S[..., 0, 0] + S[..., 1, 1]) + 1e-12
        A = S + lam[..., None, None] * np.eye(2)
        return np.linalg.solve(A, (r + lam[..., None] * v)[..., None])[..., 0]

    return v, solve(sigma), None if local is None else solve(local), a


def pool_constraints(direction, speed, weight, one_axis, axis, sigma, lo, hi, prior, local=None):
    """Per cell the 2 x 2 weighted least-squares velocity of its neighbourhood's constraints
    ``M_k = a_k n_k n_k^T + (1 - a_k) I`` with a prior on its own velocity, blended in by ``a``;
    where it points away from the cell's own velocity, that of the ``local`` neighbourhood if it
    does not."""
    v, u, near, a = constraint_solutions(
        direction, speed, weight, one_axis, axis, sigma, lo, hi, prior, local
    )
    if near is not None:
        take = ((u * v).sum(-1) < 0) & ((near * v).sum(-1) > 0)
        u = np.where(take[..., None], near, u)
    o = v + a[..., None] * (u - v)
    return np.arctan2(o[..., 1], o[..., 0]), np.hypot(o[..., 0], o[..., 1])
