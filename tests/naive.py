"""Slow, obviously-right numpy twins of the Numba kernels in ``models/kernels.py`` (same names)."""

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
            used_atoms = {atom_of[u] for u in support}
            gains = np.full(n_units, -np.inf)
            for u in range(n_units):
                a = atom_of[u]
                if a in used_atoms or sign_of[u] * rho[a] <= 0:
                    continue
                gains[u] = rho[a] ** 2 * inv2ty2 / (1 + lam) + pi[u] - kappa
            u_best = int(np.argmax(gains))
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
