"""Recurrent spatio-temporal filtering: a sparse RNN fitted to a filter bank (``W_tau = R^tau W0``),
and streaming filtering of video with it next to the feed-forward bank.

- :mod:`.bank`: 3-D Gabor motion-energy banks, loading any bank given as an array.
- :mod:`.fit`: :class:`RecurrentFilterFit` (least-squares start, L-BFGS refinement on a sparse mask).
- :mod:`.stream`: :class:`RecurrentStream`, :class:`FeedForwardStream`, :class:`SeparableStream`.
- :mod:`.kernels`: the Numba kernels (twins in ``tests/naive_stfilter.py``).
- :mod:`.report`: the ``v1motion stfit`` report (JSON + figure).
"""

from v1motion.models.stfilter.bank import GaborParams, as_bank, gabor_bank, load_bank
from v1motion.models.stfilter.fit import (
    RecurrentFilterFit,
    impulse_responses,
    loss_and_grad,
    lsq_init,
    variance_explained,
)
from v1motion.models.stfilter.stream import (
    FeedForwardStream,
    RecurrentStream,
    SeparableStream,
    frame_patches,
    separable_factors,
)

__all__ = [
    "FeedForwardStream",
    "GaborParams",
    "RecurrentFilterFit",
    "RecurrentStream",
    "SeparableStream",
    "as_bank",
    "frame_patches",
    "gabor_bank",
    "impulse_responses",
    "load_bank",
    "loss_and_grad",
    "lsq_init",
    "separable_factors",
    "variance_explained",
]
