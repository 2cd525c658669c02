"""Pure numerics of v1motion, one sub-package per model: ``motion`` (whitening, the ss-RNN, stimuli,
tuning analysis, the motion read-out and engine), ``spikes``, ``language`` and ``stfilter``.

Nothing in this package imports from ``service``.
"""

from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
"""The shipped weights and their model cards (package data)."""
