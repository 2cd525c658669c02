"""Learning the ss-RNN from natural movies.

Gradient ascent on ``sum_t L^t`` at the inferred code: ``W`` by the reconstruction gradient (columns kept at
unit norm), ``R`` and ``b`` by the logistic gradient ``dL/dR_uj = (h_u^t - sigmoid(pi_u^t)) z_j^{t-1}``.
Phase 1 learns ``W`` and ``b`` with ``R = 0`` (biases tied across clones); phase 2 adds ``R``, with clone
splitting: a clone that is rarely used takes over the recurrent weights of its group's busiest clone plus
noise, so clones of one atom specialise on different temporal contexts (directions they are reached from).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import cv2
import numpy as np

from v1motion.models.determinism import numeric_environment, single_threaded
from v1motion.models.motion.ssrnn import SSRNN, SparseCode, prune_recurrent, recurrent_csr
from v1motion.models.motion.stimuli import direction_vector
from v1motion.models.motion.train_config import TrainConfig
from v1motion.models.motion.whitening import Whitener

log = logging.getLogger(__name__)


class MovieSampler:
    """Batches of whitened patch sequences ``(B, T, P*P)`` from panned stills and real clips.

    Stills are whitened once and then panned: whitening is a convolution, so it commutes with the
    sub-pixel shift. Each still sequence has one constant velocity, drawn with a uniform direction and a
    log-uniform speed; each clip sequence is a fixed window over consecutive frames.
    """

    def __init__(self, whitener: Whitener, stills: dict, clips: dict, config: TrainConfig, rng):
        self.cfg = config
        self.rng = rng
        self.whitener = whitener  # the estimator keeps it: ``SSRNN.fit(sampler.batch)``
        self.stills = [unit_rms(whitener.transform(img)) for img in stills.values()]
        self.clips = [unit_rms(whitener.transform(frames)) for frames in clips.values()]
        sizes = np.array([len(c) for c in self.clips], float)
        self.clip_p = sizes / sizes.sum() if len(sizes) else None

    def _still_sequence(self, out: np.ndarray) -> None:
        cfg, rng = self.cfg, self.rng
        img = self.stills[rng.integers(len(self.stills))]
        direction = rng.uniform(0, 2 * np.pi)
        if cfg.speed_log:
            speed = np.exp(rng.uniform(np.log(cfg.speed_min), np.log(cfg.speed_max)))
        else:
            speed = rng.uniform(cfg.speed_min, cfg.speed_max)
        dx, dy = direction_vector(direction)
        h, w = img.shape
        margin = speed * cfg.seq_len + cfg.patch
        cx = rng.uniform(margin, w - margin)
        cy = rng.uniform(margin, h - margin)
        p = cfg.patch
        for t in range(cfg.seq_len):
            crop = cv2.getRectSubPix(img, (p, p), (cx - dx * speed * t, cy - dy * speed * t))
            out[t] = crop.ravel()

    def _clip_sequence(self, out: np.ndarray) -> None:
        cfg, rng = self.cfg, self.rng
        clip = self.clips[rng.choice(len(self.clips), p=self.clip_p)]
        t0 = rng.integers(0, len(clip) - cfg.seq_len + 1)
        y = rng.integers(0, clip.shape[1] - cfg.patch + 1)
        x = rng.integers(0, clip.shape[2] - cfg.patch + 1)
        seg = clip[t0 : t0 + cfg.seq_len, y : y + cfg.patch, x : x + cfg.patch]
        out[:] = seg.reshape(cfg.seq_len, -1)

    def batch(self) -> np.ndarray:
        cfg = self.cfg
        y = np.empty((cfg.batch, cfg.seq_len, cfg.patch * cfg.patch), np.float32)
        for i in range(cfg.batch):
            if self.clips and self.rng.random() < cfg.clip_fraction:
                self._clip_sequence(y[i])
            else:
                self._still_sequence(y[i])
            if cfg.shuffle_time:
                y[i] = y[i][self.rng.permutation(cfg.seq_len)]
        return y


def unit_rms(white: np.ndarray, floor: float = 1e-3) -> np.ndarray:
    """Scale whitened frames to unit mean power: the contrast normalisation the engine applies live."""
    return (white / max(float(np.sqrt(np.mean(white**2))), floor)).astype(np.float32)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def infer_sequences(model: SSRNN, y: np.ndarray, G=None, csr=None) -> np.ndarray:
    """Dense codes ``(T, B, N)`` of patch sequences ``y`` ``(B, T, D)`` by greedy filtering."""
    b, t_len, _ = y.shape
    G = model.gram() if G is None else G
    csr = recurrent_csr(model.R_) if csr is None else csr
    z = np.zeros((t_len, b, model.n_units), np.float32)
    prev = SparseCode.empty(b, model.kmax)
    for t in range(t_len):
        code = model.infer(y[:, t] @ model.W_, prev, G, csr)
        z[t] = code.dense(model.n_units)
        prev = code
    return z


@single_threaded()
def train_ssrnn(
    config: TrainConfig, whitener: Whitener, stills: dict, clips: dict, progress: bool = True
) -> tuple[SSRNN, dict]:
    """Train an ss-RNN on natural movies; returns the model and per-step diagnostics.

    Deterministic: the same seed and inputs give the same bits whatever the caller's thread counts
    (see :mod:`v1motion.models.determinism`).
    """
    log.info("training with seed %d on %s", config.seed, numeric_environment())
    rng = np.random.default_rng(config.seed)
    sampler = MovieSampler(whitener, stills, clips, config, rng)
    model, history = fit_ssrnn(config, sampler.batch, rng, progress)
    model.whitener_ = whitener
    return model, history


class LearningRun:
    """The bookkeeping of learning on one model: which atom and sign each unit has, clone groups,
    and how often each unit was active since the last housekeeping."""

    def __init__(self, model: SSRNN, cfg: TrainConfig, rng: np.random.Generator) -> None:
        self.model, self.cfg, self.rng = model, cfg, rng
        n = model.n_units
        signs = model.unit_signs().astype(np.float32)
        self.atoms = model.unit_atoms()
        self.to_atom = np.zeros(
            (n, cfg.n_atoms), np.float32
        )  # unit value -> signed atom coefficient
        self.to_atom[np.arange(n), self.atoms] = signs
        self.groups = np.arange(n).reshape(-1, cfg.n_clones)  # (2A, K): clones of one (atom, sign)
        self.usage = np.zeros(n)

    def step(self, y: np.ndarray, phase2: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """One learning step on whitened patch sequences ``y`` ``(B, T, P*P)``.

        Phase 1 learns the atoms ``W`` and biases ``b`` (shared by the clones of an atom and sign);
        phase 2 also learns ``R``. Returns the active units ``h``, the residual, the patches and R^2.
        """
        model, cfg = self.model, self.cfg
        n = model.n_units
        G = model.gram()
        csr = recurrent_csr(model.R_)
        z = infer_sequences(model, y, G, csr)  # (T, B, N)
        t_len, b_size, _ = z.shape
        zf = z.reshape(-1, n)
        zprev = np.concatenate([np.zeros((1, b_size, n), np.float32), z[:-1]]).reshape(-1, n)
        yf = y.transpose(1, 0, 2).reshape(-1, cfg.patch**2)
        h = (zf > 0).astype(np.float32)
        self.usage += h.sum(0)
        # Dictionary: reconstruction gradient, averaged over the frames each atom was used in.
        xi = zf @ self.to_atom
        resid = yf - xi @ model.W_.T
        grad_w = resid.T @ xi / cfg.tau_y**2
        count = (xi != 0).sum(0)
        lr_w = cfg.lr_w_phase2 if phase2 else cfg.lr_w
        w = model.W_ + lr_w * grad_w / np.maximum(count, 1)
        model.W_ = (w / (np.linalg.norm(w, axis=0) + 1e-12)).astype(np.float32)
        # Prior: logistic gradient for b (and R in phase 2).
        pi = model.b_ + (zprev @ model.R_.T if phase2 else 0.0)
        err = h - _sigmoid(pi)
        grad_b = err.mean(0)
        if not phase2:
            grad_b = np.repeat(grad_b.reshape(self.groups.shape).mean(1), cfg.n_clones)
        model.b_ = (model.b_ + cfg.lr_b * grad_b).astype(np.float32)
        if phase2:
            grad_r = err.T @ zprev / len(zf)
            r = model.R_ * (1 - cfg.r_decay) + cfg.lr_r * grad_r
            model.R_ = np.clip(r, -cfg.r_clip, cfg.r_clip).astype(np.float32)
        r2 = 1.0 - float((resid**2).sum() / max((yf**2).sum(), 1e-12))
        return h, resid, yf, r2


def init_weights(model: SSRNN, y: np.ndarray, cfg: TrainConfig, rng: np.random.Generator) -> None:
    """Atoms start as random whitened patches of ``y`` (already in the right part of patch space),
    biases at ``b_init``, ``R`` at zero."""
    init = y.reshape(-1, cfg.patch**2)
    init = init[rng.choice(len(init), cfg.n_atoms, replace=False)].T.astype(np.float64)
    init /= np.linalg.norm(init, axis=0) + 1e-12
    n = model.n_units
    model.set_weights(init, np.full(n, cfg.b_init), np.zeros((n, n)))


@single_threaded()
def fit_ssrnn(config: TrainConfig, batch, rng, progress: bool = True) -> tuple[SSRNN, dict]:
    """The learning loop on any source of whitened patch sequences ``batch() -> (B, T, P*P)``.

    Runs on one BLAS and one OpenCV thread, so its sums do not depend on the machine's core count;
    all randomness comes from ``rng``.
    """
    from tqdm.auto import tqdm

    cfg = config
    model = SSRNN(cfg.n_atoms, cfg.n_clones, cfg.patch, cfg.tau_x, cfg.tau_y, cfg.kmax)
    init_weights(model, batch(), cfg, rng)
    n = model.n_units
    run = LearningRun(model, cfg, rng)
    usage, atoms, groups = run.usage, run.atoms, run.groups
    history = {"active": [], "r2": [], "b_mean": [], "r_abs_max": []}
    total = cfg.steps_w + cfg.steps_r
    split_stop = cfg.steps_w + int(cfg.split_until * cfg.steps_r)
    bar = tqdm(range(total), desc="train ss-RNN" + (" (shuffled)" if cfg.shuffle_time else ""),
               disable=not progress)  # fmt: skip
    for step in bar:
        phase2 = step >= cfg.steps_w
        if step == cfg.steps_w:
            model.R_ = (cfg.r_init * rng.standard_normal((n, n))).astype(np.float32)
            usage[:] = 0
        h, _, yf, r2 = run.step(batch(), phase2)
        # Housekeeping: revive dead atoms in phase 1, split clones in phase 2.
        if not phase2 and (step + 1) % cfg.dead_every == 0:
            atom_use = np.bincount(atoms, weights=usage, minlength=cfg.n_atoms)
            dead = np.nonzero(atom_use == 0)[0]
            if len(dead):
                fresh = yf[rng.choice(len(yf), len(dead), replace=False)].T
                model.W_[:, dead] = fresh / (np.linalg.norm(fresh, axis=0) + 1e-12)
            usage[:] = 0
        if phase2 and step < split_stop and (step + 1 - cfg.steps_w) % cfg.split_every == 0:
            _split_clones(model, groups, usage, cfg, rng)
            usage[:] = 0
        history["active"].append(float(h.sum(1).mean()))
        history["r2"].append(r2)
        history["b_mean"].append(float(model.b_.mean()))
        history["r_abs_max"].append(float(np.abs(model.R_).max()))
        if step % 20 == 0:
            bar.set_postfix(active=f"{h.sum(1).mean():.2f}", r2=f"{r2:.2f}")
    if cfg.r_density < 1:
        model.R_ = prune_recurrent(model.R_, cfg.r_density)
    model.train_config_ = asdict(cfg)
    return model, history


def _split_clones(model, groups, usage, cfg, rng) -> None:
    """A clone used less than ``split_threshold`` x its group's mean takes over the busiest clone's prior."""
    use = usage[groups]  # (groups, K)
    mean = use.mean(1, keepdims=True)
    busiest = groups[np.arange(len(groups)), use.argmax(1)]
    weak = (use < cfg.split_threshold * mean) & (mean > 0)
    for g, k in zip(*np.nonzero(weak), strict=True):
        u, src = groups[g, k], busiest[g]
        model.R_[u] = model.R_[src] + cfg.r_init * rng.standard_normal(model.n_units)
        model.b_[u] = model.b_[src]
