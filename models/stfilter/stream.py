"""Streaming filtering of a video by a filter bank at every location (stride 1, valid positions).

Three paths with one interface, ``step(frame) -> (N, H - ly + 1, W - lx + 1)``:

- :class:`RecurrentStream`: the fitted RNN ``x^t = W0 y^t + R x^{t-1}`` per location, sparse ``R``.
  State: ``N`` numbers per location, whatever ``nt``.
- :class:`FeedForwardStream`: the bank itself, ``x^t = sum_tau W_tau y^{t-tau}``, for any bank: a ring
  buffer of the last ``nt`` patch matrices and one BLAS product per frame.
- :class:`SeparableStream`: the bank made space-time separable per filter (rank ``r`` SVD, exact for
  a Gabor bank at ``r = 2``): one BLAS product for the spatial parts, then a temporal convolution
  over a ring buffer of the last ``nt`` spatial responses.

Frames before the first are taken as zeros in all three. Each ``step`` returns an internal buffer
that the next call overwrites; copy it to keep it.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from v1motion.models.stfilter.bank import as_bank
from v1motion.models.stfilter.kernels import DEFAULT_BLOCK, csr_step, temporal_ring


def frame_patches(frame: np.ndarray, ly: int, lx: int, dtype=np.float32) -> np.ndarray:
    """All ``ly x lx`` patches of a frame as columns.

    Parameters
    ----------
    frame : ndarray, shape (H, W)

    Returns
    -------
    ndarray, shape (ly * lx, (H - ly + 1) * (W - lx + 1)), C-contiguous
    """
    frame = np.asarray(frame)
    if frame.ndim != 2:
        raise ValueError(f"a frame must be a 2-D grey image (H, W), got shape {frame.shape}")
    if frame.shape[0] < ly or frame.shape[1] < lx:
        raise ValueError(f"frame {frame.shape} is smaller than the {ly} x {lx} filters")
    win = np.lib.stride_tricks.sliding_window_view(frame, (ly, lx))  # (Ho, Wo, ly, lx)
    return np.ascontiguousarray(win.transpose(2, 3, 0, 1), dtype=dtype).reshape(ly * lx, -1)


class _Stream:
    """Shared bookkeeping: frame shape, output shape, dtype."""

    def __init__(self, ly: int, lx: int, dtype):
        self.ly, self.lx = int(ly), int(lx)
        self.dtype = np.dtype(dtype)
        self.frame_shape = None

    def _start(self, frame_shape):
        h, w = frame_shape
        self.frame_shape = (h, w)
        self.out_shape = (h - self.ly + 1, w - self.lx + 1)
        self.n_locations = self.out_shape[0] * self.out_shape[1]
        self._allocate()

    def _patches(self, frame):
        frame = np.asarray(frame)
        if self.frame_shape is None:
            self._start(frame.shape)
        elif frame.shape != self.frame_shape:
            raise ValueError(
                f"frame shape {frame.shape} differs from the stream's {self.frame_shape}; call reset()"
            )
        return frame_patches(frame, self.ly, self.lx, self.dtype)

    def reset(self):
        """Forget the past (and the frame shape)."""
        self.frame_shape = None

    def run(self, video) -> np.ndarray:
        """Filter a whole video ``(T, H, W)``; returns ``(T, N, H - ly + 1, W - lx + 1)``."""
        video = np.asarray(video)
        if video.ndim != 3:
            raise ValueError(f"a video must be (T, H, W), got shape {video.shape}")
        self.reset()
        return np.stack([self.step(f).copy() for f in video])


class RecurrentStream(_Stream):
    """The fitted RNN as a streaming filter: ``x^t = W0 y^t + R x^{t-1}`` at every location.

    Parameters
    ----------
    R : array or scipy.sparse matrix, shape (N, N)
    W0 : ndarray, shape (N, ly * lx)
    ly, lx : int
    dtype : default float32
    block : int, locations per cache block of the sparse step
    """

    def __init__(self, R, W0, ly: int, lx: int, dtype=np.float32, block: int = DEFAULT_BLOCK):
        super().__init__(ly, lx, dtype)
        W0 = np.asarray(W0)
        if W0.ndim != 2 or W0.shape[1] != self.ly * self.lx:
            raise ValueError(f"W0 must be (N, ly * lx) = (N, {self.ly * self.lx}), got {W0.shape}")
        if R.shape != (W0.shape[0],) * 2:
            raise ValueError(f"R must be (N, N) with N = {W0.shape[0]}, got {R.shape}")
        self.R = sp.csr_matrix(R, dtype=self.dtype)
        self.R.sort_indices()
        self.W0 = np.ascontiguousarray(W0, dtype=self.dtype)
        self.block = block
        self.n_filters = W0.shape[0]

    def _allocate(self):
        shape = (self.n_filters, self.n_locations)
        self._buffers = [np.zeros(shape, self.dtype), np.zeros(shape, self.dtype)]
        self._cur = 0

    def step(self, frame) -> np.ndarray:
        """Feed one frame ``(H, W)``; returns the state ``(N, Ho, Wo)``."""
        patches = self._patches(frame)
        prev = self._buffers[self._cur]
        new = self._buffers[1 - self._cur]
        np.matmul(self.W0, patches, out=new)
        csr_step(self.R, prev, new, self.block)
        self._cur = 1 - self._cur
        return new.reshape((self.n_filters,) + self.out_shape)

    @property
    def state_bytes(self) -> int:
        """Bytes kept between frames: the two state buffers, ``2 N P``."""
        return sum(b.nbytes for b in self._buffers) if self.frame_shape else 0

    @property
    def parameter_bytes(self) -> int:
        r = self.R
        return self.W0.nbytes + r.data.nbytes + r.indices.nbytes + r.indptr.nbytes


class FeedForwardStream(_Stream):
    """The bank applied directly: ``x^t = sum_tau W_tau y^{t-tau}``, any bank.

    The last ``nt`` patch matrices sit in a ring written twice (slots ``s`` and ``s + nt``), so the
    newest ``nt`` are always one contiguous ``(nt * D, P)`` block and each frame costs one GEMM
    ``(N, nt * D) @ (nt * D, P)``.

    Parameters
    ----------
    bank : ndarray, shape (nt, N, ly, lx)
    dtype : default float32
    """

    def __init__(self, bank, dtype=np.float32):
        bank = as_bank(bank)
        nt, n, ly, lx = bank.shape
        super().__init__(ly, lx, dtype)
        self.nt, self.n_filters = nt, n
        # columns in time order (oldest lag first) to match the ring's window
        self.W = np.ascontiguousarray(
            bank[::-1].reshape(nt, n, ly * lx).transpose(1, 0, 2).reshape(n, nt * ly * lx),
            dtype=self.dtype,
        )

    def _allocate(self):
        d = self.ly * self.lx
        self._ring = np.zeros((2 * self.nt, d, self.n_locations), self.dtype)
        self._out = np.empty((self.n_filters, self.n_locations), self.dtype)
        self._slot = self.nt - 1

    def step(self, frame) -> np.ndarray:
        patches = self._patches(frame)
        nt = self.nt
        s = (self._slot + 1) % nt
        self._ring[s] = patches
        self._ring[s + nt] = patches
        self._slot = s
        window = self._ring[s + 1 : s + 1 + nt].reshape(nt * self.ly * self.lx, -1)
        np.matmul(self.W, window, out=self._out)
        return self._out.reshape((self.n_filters,) + self.out_shape)

    @property
    def state_bytes(self) -> int:
        """Bytes kept between frames: the doubled ring of patches, ``2 nt D P``."""
        return self._ring.nbytes if self.frame_shape else 0

    @property
    def parameter_bytes(self) -> int:
        return self.W.nbytes


def separable_factors(bank, rank: int):
    """Per-filter rank-``r`` space-time factorisation by SVD.

    Parameters
    ----------
    bank : ndarray, shape (nt, N, ly, lx)
    rank : int

    Returns
    -------
    spatial : ndarray, shape (N * rank, ly * lx)
        Row ``n * rank + k`` is the k-th spatial component of filter n.
    temporal : ndarray, shape (nt, N * rank)
        Its temporal profile (singular value folded in).
    approx : ndarray, shape (nt, N, ly, lx)
        The separable bank ``sum_k temporal x spatial``.
    """
    bank = as_bank(bank)
    nt, n, ly, lx = bank.shape
    if not 1 <= rank <= min(nt, ly * lx):
        raise ValueError(f"rank must be in [1, {min(nt, ly * lx)}], got {rank}")
    mats = bank.reshape(nt, n, ly * lx).transpose(1, 0, 2)  # (N, nt, D)
    u, s, vt = np.linalg.svd(mats, full_matrices=False)
    temporal = (u[:, :, :rank] * s[:, None, :rank]).transpose(1, 0, 2).reshape(nt, n * rank)
    spatial = vt[:, :rank, :].reshape(n * rank, ly * lx)
    approx = np.einsum("nkr,nrd->knd", u[:, :, :rank] * s[:, None, :rank], vt[:, :rank, :])
    return spatial, temporal, approx.reshape(bank.shape)


class SeparableStream(_Stream):
    """The bank made separable per filter (rank ``r``) and applied with a ring of spatial responses.

    Per frame: ``A = S @ patches`` (one GEMM, ``(N r, D) @ (D, P)``) into the ring, then
    ``x_n = sum_k sum_tau h_{nk}(tau) A_{nk}^{t - tau}`` (Numba kernel).

    Parameters
    ----------
    bank : ndarray, shape (nt, N, ly, lx)
    rank : int, default 2
    dtype : default float32

    Attributes
    ----------
    approx_bank : ndarray, the bank this stream actually applies (rank ``r`` per filter).
    """

    def __init__(self, bank, rank: int = 2, dtype=np.float32):
        bank = as_bank(bank)
        nt, n, ly, lx = bank.shape
        super().__init__(ly, lx, dtype)
        self.nt, self.n_filters, self.rank = nt, n, rank
        spatial, temporal, self.approx_bank = separable_factors(bank, rank)
        self.S = np.ascontiguousarray(spatial, dtype=self.dtype)
        self.h = np.ascontiguousarray(temporal, dtype=self.dtype)

    def _allocate(self):
        j = self.n_filters * self.rank
        self._ring = np.zeros((self.nt, j, self.n_locations), self.dtype)
        self._chan = np.empty((j, self.n_locations), self.dtype)
        self._out = np.empty((self.n_filters, self.n_locations), self.dtype)
        self._slot = self.nt - 1

    def step(self, frame) -> np.ndarray:
        patches = self._patches(frame)
        s = (self._slot + 1) % self.nt
        self._slot = s
        np.matmul(self.S, patches, out=self._ring[s])
        temporal_ring(self._ring, self.h, s, self._chan)
        np.sum(self._chan.reshape(self.n_filters, self.rank, -1), axis=1, out=self._out)
        return self._out.reshape((self.n_filters,) + self.out_shape)

    @property
    def state_bytes(self) -> int:
        """Bytes kept between frames: the ring of spatial responses, ``nt N r P``."""
        return self._ring.nbytes if self.frame_shape else 0

    @property
    def parameter_bytes(self) -> int:
        return self.S.nbytes + self.h.nbytes
