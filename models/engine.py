"""The per-frame motion engine used by the live service and the video jobs.

Per frame: grey float frame -> Gaussian pyramid -> whitening convolution and contrast normalisation per
level -> atom correlations of the non-overlapping patches (one BLAS GEMM) -> the ss-RNN greedy filtering
kernel with the recurrent state of the stream -> per-patch read-out contributions ``z_u * beta_u`` ->
exponential average over frames and box average over space -> motion map (direction, speed, confidence).
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numba
import numpy as np

from models.kernels import _readout_frame, _scaled_patches
from models.readout import MotionReadout
from models.ssrnn import SSRNN, SparseCode, recurrent_csr

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "ssrnn_default.npz"
SPEED_BINS = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
N_DIRECTION_BINS = 16
MAX_SIDE = 4096


@dataclass(frozen=True)
class MotionFrame:
    """The motion read out of one frame. Directions in radians: 0 = right, pi/2 = up on screen."""

    direction: np.ndarray
    speed: np.ndarray
    confidence: np.ndarray
    cell: int
    direction_hist: np.ndarray
    speed_hist: np.ndarray
    top_units: list
    global_direction: float
    global_speed: float
    global_confidence: float
    active_per_patch: float

    def to_dict(self, decimals: int = 3) -> dict:
        r = lambda a: np.round(np.asarray(a, float), decimals).tolist()  # noqa: E731
        return {
            "cell": self.cell,
            "direction": r(self.direction),
            "speed": r(self.speed),
            "confidence": r(self.confidence),
            "direction_hist": r(self.direction_hist),
            "speed_hist": r(self.speed_hist),
            "top_units": [[int(u), round(float(a), decimals)] for u, a in self.top_units],
            "global_direction": round(self.global_direction, decimals),
            "global_speed": round(self.global_speed, decimals),
            "global_confidence": round(self.global_confidence, decimals),
            "active_per_patch": round(self.active_per_patch, decimals),
        }


@dataclass
class StreamState:
    """Recurrent state of one stream; not shared between threads."""

    shape: tuple | None = None
    prev: list = field(default_factory=list)
    rms: list = field(default_factory=list)
    acc: np.ndarray | None = None
    frames: int = 0


def to_grey(frame: np.ndarray) -> np.ndarray:
    """Validate a frame and return it as float32 grey in [0, 1]; raise ValueError naming the problem."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        if frame.dtype != np.uint8:
            raise ValueError(f"colour frames must be uint8 BGR, got {frame.dtype}")
        code = cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        return cv2.cvtColor(frame, code).astype(np.float32) / 255.0
    if frame.ndim != 2:
        raise ValueError(f"frame must be (H, W) grey or (H, W, 3) BGR, got shape {frame.shape}")
    if frame.dtype == np.uint8:
        return frame.astype(np.float32) / 255.0
    if frame.dtype in (np.float32, np.float64):
        if not np.all(np.isfinite(frame)):
            raise ValueError("frame contains NaN or infinite values")
        return frame.astype(np.float32)
    raise ValueError(f"frame dtype must be uint8, float32 or float64, got {frame.dtype}")


class MotionEngine:
    """ss-RNN + read-out + tuning, applied frame by frame.

    Parameters
    ----------
    model : SSRNN
    readout : MotionReadout fitted on features of ``levels`` pyramid levels.
    tuning : dict with per-unit arrays ``pref_dir`` (N,), ``pref_speed`` (N,), ``di`` (N,),
        ``direction_curves`` (16, N), ``speed_curves`` (N, n_speeds), ``speeds`` (n_speeds,).
    levels : pyramid levels.  pool_px : side of the spatial pooling window in input pixels.
    tau : time constant (frames) of the temporal average.  cell : motion-map cell in patches.
    threads : Numba threads for the ss-RNN kernel (default 1, the reference path). With more, the patches
        of a frame are split into ``4 * threads`` chunks of whole patch rows that run in parallel, and a
        helper thread whitens half of level 0 and the coarser levels; the codes are identical. ``numba.set_num_threads`` is per-thread state in Numba, so ``encode`` sets it in
        the calling thread before every parallel call; engines with different settings can share a
        process. Concurrent calls from several Python threads need Numba's ``omp`` or ``tbb``
        threading layer (the ``workqueue`` layer is not thread-safe). On a machine shared with other
        work, run with ``OMP_WAIT_POLICY=PASSIVE``: OpenMP's default spin-waiting between frames takes
        the core the other thread needs, and two threads then ran slower than one.
    """

    def __init__(self, model: SSRNN, readout: MotionReadout, tuning: dict, levels: int = 3,
                 pool_px: int = 48, tau: float = 4.0, cell: int = 2, rms_floor: float = 0.1,
                 threads: int = 1):  # fmt: skip
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                f"(NUMBA_NUM_THREADS), got {threads}"
            )
        self.threads = threads
        self.model = model
        self.readout = readout
        self.tuning = tuning
        self.levels = levels
        self.pool_px = pool_px
        self.tau = tau
        self.cell_patches = cell
        self.rms_floor = rms_floor
        n = model.n_units
        if readout.coef_.shape != (levels * n, 3):
            raise ValueError(
                f"read-out has {readout.coef_.shape[0]} features; expected {levels} levels x {n} units"
            )
        self._beta = np.ascontiguousarray(readout.coef_.reshape(levels, n, 3))
        self._G = model.gram()
        self._layouts: dict = {}
        self._pool = (
            ThreadPoolExecutor(threads - 1, thread_name_prefix="v1motion-encode")
            if threads > 1
            else None
        )
        self._csr = recurrent_csr(model.R_)
        self._W = np.ascontiguousarray(model.W_)
        self.direction_bins = (np.arange(N_DIRECTION_BINS) * 2 * np.pi / N_DIRECTION_BINS).astype(
            np.float32
        )
        self.speed_bins = SPEED_BINS
        pref = np.asarray(tuning["pref_dir"], float)
        self._dir_bin = (
            np.round(pref / (2 * np.pi) * N_DIRECTION_BINS).astype(int) % N_DIRECTION_BINS
        )
        self._ds_weight = np.clip(np.asarray(tuning["di"], np.float32), 0, 1)
        log_speed = np.log2(np.asarray(tuning["pref_speed"], float))
        self._speed_bin = [
            np.clip(np.round(log_speed + lv - np.log2(SPEED_BINS[0])), 0, len(SPEED_BINS) - 1).astype(np.int64)
            for lv in range(levels)
        ]  # fmt: skip

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, path, **kw) -> MotionEngine:
        model = SSRNN.load(path)
        extra = model.extra_
        if "readout_coef" not in extra:
            raise ValueError(f"{Path(path).name} has no read-out: train with `v1motion train`")
        readout = MotionReadout()
        readout.coef_ = extra["readout_coef"].astype(np.float32)
        readout.intercept_ = extra["readout_intercept"].astype(np.float32)
        tuning = json.loads(str(extra["tuning"]))
        levels = int(extra["readout_levels"])
        return cls(model, readout, tuning, levels=levels, **kw)

    @classmethod
    def load_default(cls, **kw) -> MotionEngine:
        if not DEFAULT_WEIGHTS.exists():
            raise FileNotFoundError(f"{DEFAULT_WEIGHTS.name} missing: run `v1motion train`")
        return cls.load(DEFAULT_WEIGHTS, **kw)

    @classmethod
    def random(cls, seed: int = 0, n_atoms: int = 16, n_clones: int = 2, levels: int = 2, **kw):
        """A small untrained engine (random atoms, R and read-out): real pipeline, meaningless motion."""
        rng = np.random.default_rng(seed)
        model = SSRNN(n_atoms=n_atoms, n_clones=n_clones, patch=8).init_random(seed, 0.3, -1.0)
        n = model.n_units
        readout = MotionReadout()
        readout.coef_ = (0.1 * rng.standard_normal((levels * n, 3))).astype(np.float32)
        readout.intercept_ = np.zeros(3, np.float32)
        tuning = {
            "pref_dir": rng.uniform(0, 2 * np.pi, n).tolist(),
            "pref_speed": (2.0 ** rng.integers(-2, 4, n)).tolist(),
            "di": rng.uniform(0, 1, n).tolist(),
            "direction_curves": rng.uniform(0, 1, (N_DIRECTION_BINS, n)).tolist(),
            "speed_curves": rng.uniform(0, 1, (n, 6)).tolist(),
            "speeds": [0.25, 0.5, 1.0, 2.0, 4.0, 8.0],
            "responsive": [True] * n,
        }
        return cls(model, readout, tuning, levels=levels, **kw)

    # ---------------------------------------------------------------- use
    def new_state(self) -> StreamState:
        return StreamState()

    def warmup(self) -> None:
        """Compile the kernels and touch every code path once."""
        state = self.new_state()
        rng = np.random.default_rng(0)
        for _ in range(2):
            self.step(state, rng.integers(0, 255, (96, 128), dtype=np.uint8))

    @property
    def min_side(self) -> int:
        return self.model.patch * 2 ** (self.levels - 1) * 2

    def step(self, state: StreamState, frame: np.ndarray) -> MotionFrame:
        """Analyse one frame of a stream: encode it with the ss-RNN, then read the motion out."""
        grey = to_grey(frame)
        h, w = grey.shape
        if min(h, w) < self.min_side:
            raise ValueError(f"frame {w}x{h} is too small: each side needs >= {self.min_side} px")
        if max(h, w) > MAX_SIDE:
            raise ValueError(f"frame {w}x{h} is too large: each side must be <= {MAX_SIDE} px")
        if state.shape != (h, w):
            state.shape = (h, w)
            state.prev = [None] * self.levels
            state.rms = [None] * self.levels
            state.acc = None
            state.frames = 0
        codes = self.encode(state, grey)
        return self.read(state, codes, (h, w))

    def encode(self, state: StreamState, grey: np.ndarray) -> list[tuple[SparseCode, int, int]]:
        """The ss-RNN's sparse code of every pyramid level, ``[(code, rows, cols)]``; updates ``state``.

        Per level: whitening convolution, contrast normalised by a running RMS, non-overlapping
        patches, atom correlations (one GEMM). Then for all levels at once, greedy filtering with each
        patch's recurrent state (one kernel call). The codes of the levels are views of one joint
        code, rows ``[offsets[lv], offsets[lv + 1])``.
        """
        model, p = self.model, self.model.patch
        shapes, offsets, bounds = self._layout(grey.shape)
        patches = np.empty((offsets[-1], p * p), np.float32)
        C = np.empty((offsets[-1], model.n_atoms), np.float32)
        if self._pool is None:
            self._correlate_levels(state, grey, 0, shapes, offsets, patches, C)
        else:
            # A helper thread whitens the lower half of level 0, then does the coarser levels, while
            # this one whitens the upper half and finishes level 0 (OpenCV, numpy and BLAS release
            # the GIL). Every number is computed as on one thread: the bands are filtered with their
            # real neighbour rows, and each level keeps its own GEMM.
            white0 = np.empty(grey.shape, np.float32)
            cut = grey.shape[0] // 2
            whitener = model.whitener_
            lower = self._pool.submit(whitener.transform_rows, grey, white0, cut, grey.shape[0])
            rest = self._pool.submit(
                self._correlate_levels, state, grey, 1, shapes, offsets, patches, C
            )
            try:
                whitener.transform_rows(grey, white0, 0, cut)
                lower.result()
                self._correlate_levels(state, grey, 0, shapes[:1], offsets, patches, C, white0)
            finally:  # the helper writes to `state`: never return (or raise) while it still runs
                rest.result()
        if self.threads > 1:
            numba.set_num_threads(self.threads)
        code = model.infer(C, self._joint_prev(state, offsets), self._G, self._csr, bounds)
        out = []
        for lv, (gh, gw) in enumerate(shapes):
            a, b = offsets[lv], offsets[lv + 1]
            level = SparseCode(code.idx[a:b], code.val[a:b], code.cnt[a:b], code.prior[a:b])
            state.prev[lv] = level
            out.append((level, gh, gw))
        return out

    def _correlate_levels(self, state, img, first, shapes, offsets, patches, C, white=None) -> None:
        """Levels ``first <= lv < len(shapes)`` (``img`` is level ``first - 1``, or level 0 if
        ``first == 0``): whiten, normalise by the running RMS, cut out the patches into ``patches``
        and correlate them with the atoms into ``C``, at rows ``offsets[lv]:offsets[lv + 1]``.
        ``white``: the first level already whitened."""
        model, p = self.model, self.model.patch
        for lv in range(first, len(shapes)):
            if lv:
                img = cv2.pyrDown(img)
            if white is None or lv != first:
                white = model.whitener_.transform(img)
            rms = float(np.sqrt(np.mean(white**2)))
            prev_rms = state.rms[lv]
            state.rms[lv] = rms if prev_rms is None else 0.9 * prev_rms + 0.1 * rms
            # Scale and cut out the patches in one pass: the same float32 products as scaling the
            # frame first, so the correlations are unchanged.
            rows = slice(offsets[lv], offsets[lv + 1])
            scale = np.float32(1.0 / max(state.rms[lv], self.rms_floor))
            _scaled_patches(white, scale, p, patches[rows])
            # One GEMM per level: BLAS rounds a row differently depending on where it falls in the
            # matrix, so a single GEMM over all levels would change the last bits of some rows.
            np.matmul(patches[rows], self._W, out=C[rows])

    def _layout(self, shape: tuple[int, int]):
        """Patch grid of every level, their row offsets in the joint code, and the thread chunks."""
        cached = self._layouts.get(shape)
        if cached is not None:
            return cached
        p = self.model.patch
        h, w = shape
        shapes = []
        for _ in range(self.levels):
            shapes.append((h // p, w // p))
            h, w = (h + 1) // 2, (w + 1) // 2  # cv2.pyrDown's output size
        offsets = np.concatenate([[0], np.cumsum([gh * gw for gh, gw in shapes])]).astype(np.int64)
        bounds = None
        if self.threads > 1:
            # Whole patch rows, about the same number of patches per chunk, four chunks per thread.
            starts = [
                off + gw * np.arange(gh) for off, (gh, gw) in zip(offsets, shapes, strict=False)
            ]
            rows = np.concatenate([*starts, [offsets[-1]]])
            want = np.linspace(0, offsets[-1], 4 * self.threads + 1)[1:-1]
            cut = rows[np.searchsorted(rows, want)]
            bounds = np.unique(np.concatenate([[0], cut, [offsets[-1]]])).astype(np.int64)
        self._layouts[shape] = shapes, offsets, bounds
        return shapes, offsets, bounds

    def _joint_prev(self, state: StreamState, offsets: np.ndarray) -> SparseCode | None:
        """The previous frame's code of all levels as one code (``None`` at the start of a stream).

        ``encode`` leaves views of one joint code in ``state.prev``; their bases are that code.
        """
        prev = state.prev
        if any(c is None for c in prev):
            return None
        fields = ("idx", "val", "cnt", "prior")
        bases = [getattr(prev[0], f).base for f in fields]
        if all(b is not None and len(b) == offsets[-1] for b in bases) and all(
            getattr(c, f).base is b for c in prev for f, b in zip(fields, bases, strict=True)
        ):
            return SparseCode(*bases)
        return SparseCode(*(np.concatenate([getattr(c, f) for c in prev]) for f in fields))

    def read(self, state: StreamState, codes, shape: tuple[int, int]) -> MotionFrame:
        """The motion map, histograms and global motion from the codes of one frame."""
        model, p = self.model, self.model.patch
        h, w = shape
        gh0, gw0 = h // p, w // p
        total = np.zeros((gh0, gw0, 3), np.float32)
        dir_hist = np.zeros(N_DIRECTION_BINS, np.float32)
        speed_hist = np.zeros(len(SPEED_BINS), np.float32)
        unit_act = np.zeros(model.n_units, np.float32)
        scratch_act = np.zeros(model.n_units, np.float32)
        n_active, n_patches = 0, 0
        for lv, (code, gh, gw) in enumerate(codes):
            contrib = np.empty((gh * gw, 3), np.float32)
            act = unit_act if lv == 0 else scratch_act
            _readout_frame(
                code.idx, code.val, code.cnt, self._beta[lv], self._dir_bin, self._speed_bin[lv],
                self._ds_weight, contrib, dir_hist, speed_hist, act,
            )  # fmt: skip
            up = contrib.reshape(gh, gw, 3)
            if lv:
                f = 2**lv
                up = np.repeat(np.repeat(up, f, 0), f, 1)
                up = np.pad(up, ((0, gh0 - up.shape[0]), (0, gw0 - up.shape[1]), (0, 0)), "edge")
            total += up[:gh0, :gw0]
            if lv == 0:
                n_active, n_patches = int(code.cnt.sum()), gh * gw
        alpha = 1.0 / self.tau if state.acc is not None else 1.0
        state.acc = total if state.acc is None else (1 - alpha) * state.acc + alpha * total
        state.frames += 1
        k = max(1, int(round(self.pool_px / p)))
        pooled = cv2.blur(state.acc, (k, k), borderType=cv2.BORDER_REPLICATE)
        c = self.cell_patches
        ch, cw = gh0 // c, gw0 // c
        cells = pooled[: ch * c, : cw * c].reshape(ch, c, cw, c, 3).mean((1, 3))
        direction, speed, conf = MotionReadout.decode(cells + self.readout.intercept_)
        g_dir, g_speed, g_conf = MotionReadout.decode(
            state.acc.mean((0, 1)) + self.readout.intercept_
        )
        top = np.argsort(unit_act)[::-1][:10]
        top_units = [(int(u), float(unit_act[u])) for u in top if unit_act[u] > 0]
        return MotionFrame(
            direction.astype(np.float32), speed.astype(np.float32), conf.astype(np.float32),
            c * p, dir_hist, speed_hist, top_units, float(g_dir), float(g_speed), float(g_conf),
            n_active / max(n_patches, 1),
        )  # fmt: skip

    def tuning_report(self) -> dict:
        t = self.tuning
        units = []
        for u in range(self.model.n_units):
            units.append(
                {
                    "id": u,
                    "preferred_direction_deg": round(float(np.rad2deg(t["pref_dir"][u])), 1),
                    "preferred_speed": float(t["pref_speed"][u]),
                    "di": round(float(t["di"][u]), 3),
                    "responsive": bool(t["responsive"][u]),
                    "direction_tuning": [round(float(r[u]), 4) for r in t["direction_curves"]],
                    "speed_tuning": [round(float(v), 4) for v in t["speed_curves"][u]],
                }
            )
        return {
            "n_units": self.model.n_units,
            "directions_deg": [round(float(d), 1) for d in np.rad2deg(self.direction_bins)],
            "speeds": [float(s) for s in t["speeds"]],
            "units": units,
        }
