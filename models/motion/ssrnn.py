"""The spike-and-slab recurrent neural network (ss-RNN).

Generative model, per patch location, for a whitened ``P x P`` patch ``y^t`` (flattened, ``D = P*P``)::

    h_u^t ~ Bernoulli(sigmoid(pi_u^t)),   pi^t = R z^{t-1} + b
    x_u^t ~ N(0, tau_x^2) restricted to x >= 0 (sign-split units)
    z^t   = h^t * x^t
    y^t   ~ N(W z^t, tau_y^2 I)

Units come in sign-split pairs that share one dictionary atom (``+w`` and ``-w``, values ``x >= 0``), and each
of those in ``K`` clones that share the atom for good and differ only in ``b`` and in their rows of ``R``.
So the Bernoulli prior can see the polarity of a feature, and clones can specialise on the temporal context
they are reached from. ``W`` is stored once per atom: ``W_`` has shape ``(D, A)``; ``N = 2 A K``.

Inference is greedy filtering: at frame ``t``, with ``z^{t-1}`` fixed, maximise

    L^t = -||y - W z||^2 / 2 tau_y^2 - ||x||^2 / 2 tau_x^2 + sum_u [h_u log s(pi_u) + (1-h_u) log(1-s(pi_u))]
          - kappa * |S|

by matching pursuit: add the unit whose closed-form value gives the largest gain
``rho^2 / (2 tau_y^2 (1 + lambda)) + pi_u - kappa`` (``rho`` its residual correlation,
``lambda = tau_y^2 / tau_x^2``), ridge-refit the values on the support, stop when no gain is positive.
``kappa = 0.5 log(1 + tau_x^2 / tau_y^2)`` is the Occam cost of switching a unit on: integrating out the slab
of a single active unit gives exactly this term, and without it every unit with positive prior log-odds
switches on with ``x ~ 0`` and ``R`` runs away.
"""

from __future__ import annotations

import json
from concurrent.futures import wait
from dataclasses import dataclass
from pathlib import Path

import numba
import numpy as np

from v1motion.models.estimator import NotFittedError, Params
from v1motion.models.motion.kernels import (
    _frame_setup,
    _ssrnn_infer_chunks,
    _ssrnn_infer_frame,
    _ssrnn_infer_frame_dense,
    _ssrnn_infer_frame_parallel,
)
from v1motion.models.motion.whitening import Whitener, patch_grid

FORMAT_VERSION = 1


def chunk_shares(bounds: np.ndarray, threads: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """The chunks ``bounds[c] <= m < bounds[c + 1]`` dealt to ``threads`` threads, ``(starts, ends)``
    per thread: thread ``k`` takes ``c = k, k + threads, k + 2 threads, ...``, chunks from all over
    the frame. Patches cost more where the image has texture: with the chunks in frame order, one
    thread took the busy half of the frame (the kernel on two threads at 640x480 ran 1.64x faster
    than on one; interleaved, 1.9x)."""
    bounds = np.asarray(bounds, np.int64)
    starts, ends = bounds[:-1], bounds[1:]
    t = max(1, threads)
    return [
        (np.ascontiguousarray(starts[k::t]), np.ascontiguousarray(ends[k::t])) for k in range(t)
    ]


def interleaved_chunks(bounds: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
    """``chunk_shares`` one thread's after the other, as ``(starts, ends)``: ``c = 0, threads,
    2 threads, ...``, then ``1, 1 + threads, ...``. Numba's parallel loop hands each thread one
    contiguous run of its iterations (a chunk size of 1 did not change that), so this order gives
    each thread its share."""
    shares = chunk_shares(bounds, threads)
    return np.concatenate([s for s, _ in shares]), np.concatenate([e for _, e in shares])


def _infer_on_threads(args: tuple, bounds: np.ndarray, executor, threads: int) -> None:
    """``_ssrnn_infer_frame(*args)`` split over the calling thread and ``threads - 1`` of
    ``executor``'s (``chunk_shares``), share 0 on this thread."""
    C, G, ptr, idx, val, b, p_idx, p_val, p_cnt, n_clones = args[:10]
    rest = args[10:]
    Gt, base_pi, base_u = _frame_setup(G, b, n_clones, C.shape[1])
    head = (C, G, Gt, base_pi, base_u, ptr, idx, val, b, p_idx, p_val, p_cnt, n_clones, *rest)
    share = chunk_shares(bounds, threads)
    helpers = [executor.submit(_ssrnn_infer_chunks, *head, *sh) for sh in share[1:] if len(sh[0])]
    try:
        _ssrnn_infer_chunks(*head, *share[0])
    finally:  # the helpers write to the output: never return (or raise) while one still runs
        wait(helpers)
    for h in helpers:
        h.result()


@dataclass
class SparseCode:
    """Sparse code of ``M`` patches: unit ids, values (>= 0) and counts; ``kmax`` slots per patch."""

    idx: np.ndarray  # (M, kmax) int64
    val: np.ndarray  # (M, kmax) float32
    cnt: np.ndarray  # (M,) int64
    prior: np.ndarray  # (M,) float64, summed prior log-odds of the active units

    DTYPES = (np.int64, np.float32, np.int64, np.float64)

    @classmethod
    def empty(cls, m: int, kmax: int) -> SparseCode:
        return cls(
            np.zeros((m, kmax), np.int64),
            np.zeros((m, kmax), np.float32),
            np.zeros(m, np.int64),
            np.zeros(m),
        )

    def arrays(self) -> tuple:
        return self.idx, self.val, self.cnt, self.prior

    def dense(self, n_units: int) -> np.ndarray:
        """``(M, N)`` dense code ``z``."""
        z = np.zeros((len(self.cnt), n_units), np.float32)
        for i in range(self.idx.shape[1]):
            rows = np.nonzero(self.cnt > i)[0]
            z[rows, self.idx[rows, i]] = self.val[rows, i]
        return z


def recurrent_csr(R: np.ndarray):
    """``R^T`` in CSR form: for each unit ``j``, the units it drives at the next frame and the weights.

    Zeros of ``R`` (after pruning) are left out, so a pruned ``R`` gives a cheaper recurrent drive.
    """
    rt = np.asarray(R, np.float32).T
    mask = rt != 0
    ptr = np.zeros(rt.shape[0] + 1, np.int64)
    ptr[1:] = np.cumsum(mask.sum(1))
    rows, cols = np.nonzero(mask)
    return ptr, cols.astype(np.int64), rt[rows, cols].astype(np.float32)


def prune_recurrent(R: np.ndarray, density: float) -> np.ndarray:
    """Keep the ``density`` fraction of entries of ``R`` with the largest magnitude, zero the rest."""
    if not 0 < density <= 1:
        raise ValueError(f"density must be in (0, 1], got {density}")
    r = np.asarray(R, np.float32)
    k = max(1, int(round(density * r.size)))
    if k >= r.size:
        return r.copy()
    cut = np.partition(np.abs(r).ravel(), r.size - k)[r.size - k]
    return np.where(np.abs(r) >= cut, r, 0).astype(np.float32)


def unit_atom(u, n_clones):
    return np.asarray(u) // (2 * n_clones)


def unit_sign(u, n_clones):
    return np.where((np.asarray(u) // n_clones) % 2 == 0, 1.0, -1.0)


NO_WHITENER = (
    "this ss-RNN has no whitening filter (whitener_): pass fit(..., whitener=) the fitted "
    "Whitener that whitened its training patches, or set model.whitener_"
)


class SSRNN(Params):
    """Spike-and-slab RNN with sign-split, cloned units.

    Parameters
    ----------
    n_atoms : int, default 64
        Dictionary atoms ``A``.
    n_clones : int, default 4
        Clones ``K`` per (atom, sign); ``N = 2 A K`` units.
    patch : int, default 8
        Patch side ``P``.
    tau_x, tau_y : float
        Slab and observation noise scales.
    kmax : int, default 10
        Most active units per patch.
    train_config : TrainConfig, optional
        The learning settings of :meth:`fit` and :meth:`partial_fit` (default ``TrainConfig()``, the
        shipped model's); its architecture fields are overridden by this estimator's.

    Attributes
    ----------
    W_ : (D, A) float32, unit-norm atoms in whitened space.
    b_ : (N,) float32 biases.  R_ : (N, N) float32 recurrent weights, ``pi = R z^{t-1} + b``.
    whitener_ : Whitener, the filter that whitens frames into the model's input (``fit``'s
        ``whitener``, or loaded; ``save`` and the engine need it).
    """

    def __init__(
        self,
        n_atoms: int = 64,
        n_clones: int = 4,
        patch: int = 8,
        tau_x: float = 3.0,
        tau_y: float = 0.6,
        kmax: int = 10,
        train_config=None,
    ):
        self.train_config = train_config
        self.n_atoms = n_atoms
        self.n_clones = n_clones
        self.patch = patch
        self.tau_x = tau_x
        self.tau_y = tau_y
        self.kmax = kmax

    # ---------------------------------------------------------------- derived constants
    @property
    def n_units(self) -> int:
        return 2 * self.n_atoms * self.n_clones

    @property
    def lam(self) -> float:
        return self.tau_y**2 / self.tau_x**2

    @property
    def kappa(self) -> float:
        return 0.5 * float(np.log1p(self.tau_x**2 / self.tau_y**2))

    def unit_atoms(self) -> np.ndarray:
        return unit_atom(np.arange(self.n_units), self.n_clones)

    def unit_signs(self) -> np.ndarray:
        return unit_sign(np.arange(self.n_units), self.n_clones)

    def unit_filters(self) -> np.ndarray:
        """``(D, N)`` signed filter of every unit."""
        return self.W_[:, self.unit_atoms()] * self.unit_signs()[None, :].astype(np.float32)

    def _check_fitted(self):
        if not hasattr(self, "W_"):
            raise NotFittedError("SSRNN has no parameters: fit it, load weights, or init_random()")
        want = (self.patch * self.patch, self.n_atoms), (self.n_units,)
        if (self.W_.shape, self.b_.shape) != want:
            raise NotFittedError(
                f"SSRNN's weights (W_ {self.W_.shape}, b_ {self.b_.shape}) were learned with other "
                f"settings than these (patch={self.patch}, n_atoms={self.n_atoms}, "
                f"n_clones={self.n_clones}): fit it again after set_params"
            )

    # ---------------------------------------------------------------- parameters
    def init_random(self, seed: int = 0, r_scale: float = 0.0, b: float = -3.0) -> SSRNN:
        """Random unit-norm atoms, constant bias, Gaussian ``R`` of sd ``r_scale``; centre-surround whitening."""
        rng = np.random.default_rng(seed)
        d = self.patch * self.patch
        w = rng.standard_normal((d, self.n_atoms))
        self.W_ = (w / np.linalg.norm(w, axis=0)).astype(np.float32)
        self.b_ = np.full(self.n_units, b, np.float32)
        self.R_ = (r_scale * rng.standard_normal((self.n_units, self.n_units))).astype(np.float32)
        if not hasattr(self, "whitener_"):
            # A zero-sum centre-surround filter: a crude whitening that, like a fitted one, removes DC.
            wh = Whitener(size=3)
            wh.kernel_ = np.full((3, 3), -1 / 8, np.float32)
            wh.kernel_[1, 1] = 1.0
            wh.scale_ = 1.0
            self.whitener_ = wh
        return self

    # ---------------------------------------------------------------- estimator (scikit-learn's manner)
    # get_params, set_params, clone and repr: ``Params``, from the constructor's arguments

    def _learning_config(self):
        from dataclasses import replace

        from v1motion.models.motion.training import TrainConfig

        arch = {k: getattr(self, k) for k in self._param_names() if k != "train_config"}
        return replace(self.train_config or TrainConfig(), **arch)

    def _check_sequences(self, X) -> np.ndarray:
        X = np.asarray(X, np.float32)
        d = self.patch * self.patch
        if X.ndim != 3 or X.shape[2] != d or X.shape[0] < 1 or X.shape[1] < 1:
            raise ValueError(f"X must be whitened patch sequences (B, T, {d}), got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or infinite values")
        return X

    def fit(self, X, y=None, *, whitener=None, progress: bool = False) -> SSRNN:
        """Learn ``W_``, ``b_`` and ``R_`` from whitened patch sequences (the whole learning run).

        Parameters
        ----------
        X : (S, T, P*P) array or callable
            Whitened patch sequences, from which each step draws ``train_config.batch`` of them; or a
            callable returning such a batch (e.g. ``MovieSampler.batch``, which draws fresh movies).
        y : ignored
        whitener : Whitener, optional
            The fitted filter that whitened ``X``, kept as ``whitener_``: :meth:`save` and the
            engine need it. Default: the sampler's when ``X`` is a ``MovieSampler``'s ``batch``,
            else the one this model has (loaded or ``init_random``), else none.
        progress : bool
            Show a progress bar.

        Returns
        -------
        self
        """
        from v1motion.models.motion.training import fit_ssrnn

        cfg = self._learning_config()
        rng = np.random.default_rng(cfg.seed)
        if callable(X):
            batch = X
        else:
            X = self._check_sequences(X)
            replace = len(X) < cfg.batch

            def batch():
                return X[rng.choice(len(X), cfg.batch, replace=replace)]

        model, history = fit_ssrnn(cfg, batch, rng, progress)
        self.set_weights(model.W_, model.b_, model.R_)
        self._keep_whitener(whitener, X)
        self.train_config_ = model.train_config_
        self.history_ = history
        self.__dict__.pop("_learning_run", None)
        return self

    def partial_fit(self, X, y=None, *, whitener=None) -> SSRNN:
        """One learning step on a batch of whitened patch sequences ``X`` ``(B, T, P*P)``.

        Online learning with the rules of the run's second phase (``W``, ``b`` and ``R`` together, no
        clone housekeeping). On an unfitted model the first call starts the atoms from patches of
        ``X``. ``whitener``: the filter that whitened ``X``, as in :meth:`fit`. Returns ``self``.
        """
        from v1motion.models.motion.training import LearningRun, init_weights

        X = self._check_sequences(X)
        self._keep_whitener(whitener, X)
        run = self.__dict__.get("_learning_run")
        if run is None:
            cfg = self._learning_config()
            rng = np.random.default_rng(cfg.seed)
            if not hasattr(self, "W_"):
                init_weights(self, X, cfg, rng)
            run = self._learning_run = LearningRun(self, cfg, rng)
        run.step(X, phase2=True)
        return self

    def _keep_whitener(self, whitener, X) -> None:
        """``whitener_`` from ``fit``'s argument, else from the sampler whose ``batch`` is ``X``."""
        if whitener is None:
            whitener = getattr(getattr(X, "__self__", None), "whitener", None)
        if whitener is not None:
            if getattr(whitener, "kernel_", None) is None:
                raise ValueError("whitener must be a fitted Whitener (it has no kernel_)")
            self.whitener_ = whitener

    def set_weights(self, W, b, R) -> SSRNN:
        """Set the learned weights ``W_`` (D, A), ``b_`` (N,) and ``R_`` (N, N) (loading, tests)."""
        self.W_ = np.ascontiguousarray(W, np.float32)
        self.b_ = np.ascontiguousarray(b, np.float32)
        self.R_ = np.ascontiguousarray(R, np.float32)
        return self

    # ---------------------------------------------------------------- inference
    def gram(self) -> np.ndarray:
        self._check_fitted()
        return (self.W_.T.astype(np.float64) @ self.W_.astype(np.float64)).astype(np.float64)

    def infer(
        self,
        C: np.ndarray,
        prev: SparseCode | None,
        G: np.ndarray | None = None,
        csr: tuple | None = None,
        bounds: np.ndarray | None = None,
        executor=None,
        threads: int = 2,
    ) -> SparseCode:
        """One greedy filtering step for ``M`` patches given their atom correlations ``C`` ``(M, A)``.

        ``bounds`` (increasing int64 from 0 to ``M``) splits the patches into chunks
        ``bounds[c] <= m < bounds[c + 1]`` that run in parallel; the code is identical to the serial
        one for any split. Without an ``executor`` they run on Numba's threads, as many as Numba's
        per-thread setting of the calling thread (``numba.set_num_threads``). With one (a
        ``concurrent.futures`` executor of ``threads - 1`` threads), chunk ``c`` runs on the calling
        thread if ``c % threads == 0`` and on an executor thread otherwise (``chunk_shares``):
        threads that the caller owns and can place.
        """
        self._check_fitted()
        C = np.ascontiguousarray(C, np.float32)
        if C.ndim != 2 or C.shape[1] != self.n_atoms:
            raise ValueError(f"C must have shape (M, {self.n_atoms}), got {C.shape}")
        m = C.shape[0]
        if prev is None:
            prev = SparseCode.empty(m, self.kmax)
        if len(prev.cnt) != m:
            raise ValueError("previous code has a different number of patches")
        G = self.gram() if G is None else np.ascontiguousarray(G, np.float64)
        ptr, idx, val = recurrent_csr(self.R_) if csr is None else csr
        prev = SparseCode(
            *(
                np.ascontiguousarray(a, t)
                for a, t in zip(prev.arrays(), SparseCode.DTYPES, strict=True)
            )
        )
        out = SparseCode.empty(m, self.kmax)
        args = (
            C, G, ptr, idx, val, self.b_, prev.idx, prev.val, prev.cnt, self.n_clones,
            1.0 / (2 * self.tau_y**2), self.lam, self.kappa, self.kmax,
            out.idx, out.val, out.cnt, out.prior,
        )  # fmt: skip
        if bounds is None:
            _ssrnn_infer_frame(*args)
            return out
        bounds = np.asarray(bounds, np.int64)
        if bounds[0] != 0 or bounds[-1] != m or np.any(np.diff(bounds) < 0):
            raise ValueError(f"bounds must increase from 0 to {m}, got {bounds}")
        if executor is None:
            _ssrnn_infer_frame_parallel(*args, *interleaved_chunks(bounds, numba.get_num_threads()))
            return out
        _infer_on_threads(args, bounds, executor, max(1, int(threads)))
        return out

    def infer_dense(self, C: np.ndarray, prev: SparseCode | None, G=None) -> SparseCode:
        """The same step with the recurrent drive computed densely, ``b + Z^{t-1} R^T`` by BLAS."""
        self._check_fitted()
        C = np.ascontiguousarray(C, np.float32)
        m = C.shape[0]
        z = np.zeros((m, self.n_units), np.float32) if prev is None else prev.dense(self.n_units)
        pi = np.ascontiguousarray(z @ self.R_.T + self.b_, np.float64)
        out = SparseCode.empty(m, self.kmax)
        _ssrnn_infer_frame_dense(
            C, self.gram() if G is None else G, pi, self.n_clones, 1.0 / (2 * self.tau_y**2),
            self.lam, self.kappa, self.kmax, out.idx, out.val, out.cnt, out.prior,
        )  # fmt: skip
        return out

    def correlations(self, white: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
        """Atom correlations of the non-overlapping patches of a whitened frame, and the grid shape."""
        grid = patch_grid(white, self.patch)
        gh, gw, d = grid.shape
        return grid.reshape(gh * gw, d) @ self.W_, (gh, gw)

    def objective(self, y: np.ndarray, code: SparseCode, pi: np.ndarray) -> np.ndarray:
        """``L^t`` per patch (up to constants), for checks: ``y (M, D)``, ``pi (M, N)`` prior log-odds."""
        z = code.dense(self.n_units).astype(np.float64)
        h = (z > 0).astype(np.float64)
        recon = z @ self.unit_filters().T.astype(np.float64)
        data = -((y - recon) ** 2).sum(1) / (2 * self.tau_y**2) - (z**2).sum(1) / (
            2 * self.tau_x**2
        )
        log_prior = -np.logaddexp(0, -pi) * h - np.logaddexp(0, pi) * (1 - h)
        return data + log_prior.sum(1) - self.kappa * h.sum(1)

    # ---------------------------------------------------------------- persistence
    def hyperparams(self) -> dict:
        return {
            "n_atoms": self.n_atoms,
            "n_clones": self.n_clones,
            "patch": self.patch,
            "tau_x": self.tau_x,
            "tau_y": self.tau_y,
            "kmax": self.kmax,
        }

    def save(self, path, **extra_arrays) -> None:
        """Versioned ``.npz``: hyper-parameters as JSON, parameters and whitening as arrays."""
        self._check_fitted()
        if getattr(self, "whitener_", None) is None:
            raise ValueError(NO_WHITENER)
        meta = {"format": "v1motion-ssrnn", "format_version": FORMAT_VERSION, **self.hyperparams()}
        np.savez_compressed(
            path,
            meta=np.array(json.dumps(meta)),
            W=self.W_,
            b=self.b_,
            R=self.R_,
            whiten_kernel=self.whitener_.kernel_,
            whiten_scale=np.float32(self.whitener_.scale_),
            **extra_arrays,
        )

    @classmethod
    def load(cls, path) -> SSRNN:
        path = Path(path)
        with np.load(path, allow_pickle=False) as f:
            try:
                meta = json.loads(str(f["meta"]))
            except KeyError as e:
                raise ValueError(f"{path.name} is not a v1motion ss-RNN weights file") from e
            if meta.get("format") != "v1motion-ssrnn":
                raise ValueError(f"{path.name} is not a v1motion ss-RNN weights file")
            if meta["format_version"] > FORMAT_VERSION:
                raise ValueError(
                    f"{path.name} has format version {meta['format_version']}; "
                    f"this v1motion reads up to {FORMAT_VERSION}"
                )
            hp = {k: meta[k] for k in ("n_atoms", "n_clones", "patch", "tau_x", "tau_y", "kmax")}
            model = cls(**hp)
            model.set_weights(f["W"], f["b"], f["R"])
            wh = Whitener(size=f["whiten_kernel"].shape[0])
            wh.kernel_ = f["whiten_kernel"].astype(np.float32)
            wh.scale_ = float(f["whiten_scale"])
            model.whitener_ = wh
            model.extra_ = {k: f[k] for k in f.files if k not in {"meta", "W", "b", "R"}}
        return model
