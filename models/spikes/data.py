"""Spike-count data: validation, binning of spike times, and the salamander retina recordings.

Throughout the spike models, counts are a float array of shape ``(n_trials, n_bins, n_neurons)``; a
2-D array ``(n_bins, n_neurons)`` is one trial.
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path

import numpy as np

from v1motion.models.datasets import require_shared_data

log = logging.getLogger(__name__)

RETINA_DIR = "spikes_retina_salamander_onken2016"
RETINA_RECORDINGS = ("Movie1Exp1", "Movie2Exp1")
RETINA_DURATION_MS = 18000.0


def _check_numbers(arr: np.ndarray, name: str, booleans: bool, given=None) -> None:
    """Numbers only: strings ("1") and, from JSON lists, true/false are not counts or times (numpy
    would read them as 1.0). A boolean array (an ``.npz`` of spikes/no spikes) is taken as 0/1.
    ``given`` is the input ``arr`` was made from: a list mixing numbers with true/false gives a
    numeric array, so the list itself is searched."""
    if arr.dtype.kind in "US":
        raise ValueError(f"{name} must be numbers, not strings")
    if booleans:
        return
    if arr.dtype.kind == "b" or (arr.dtype.kind in "iuf" and _holds_bools(given)):
        raise ValueError(f"{name} must be numbers, not true/false")


def _holds_bools(y) -> bool:
    """Whether (rectangular) nested lists hold a Python bool, JSON's true or false: the innermost
    items are chained and their types collected at C speed (50 ms for 2 million counts)."""
    if isinstance(y, bool):
        return True
    if not isinstance(y, list | tuple):
        return False
    items, first = y, y
    while first and isinstance(first[0], list | tuple):
        first = first[0]
        items = itertools.chain.from_iterable(items)
    return bool in set(map(type, items))


MAX_COUNT = 100_000
"""Spikes in one time bin: a neuron fires at most about once a millisecond, so this many is 100 s of
firing at that rate in one bin. Counts sent far beyond it (1e20 was accepted) are another quantity
sent by mistake, and fitted they gave held-out scores of -1e17 bits per spike, not an error."""


def as_counts(y, *, max_elements: int | None = None, name: str = "counts") -> np.ndarray:
    """Validate spike counts and return them as float ``(n_trials, n_bins, n_neurons)``.

    Raises ``ValueError`` naming the problem: ragged nesting, strings or (in lists) booleans, wrong
    rank, zero neurons/bins/trials, non-finite values, negative or non-integer counts, more than
    ``MAX_COUNT`` spikes in a bin, or more than ``max_elements`` entries.
    """
    try:
        arr = np.asarray(y)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{name} must be a rectangular numeric array (ragged input?): {exc}"
        ) from None
    _check_numbers(arr, name, booleans=isinstance(y, np.ndarray), given=y)
    if arr.dtype == object:
        raise ValueError(f"{name} must be a rectangular numeric array (ragged input?)")
    arr = arr.astype(float, copy=False)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(
            f"{name} must have shape (n_bins, n_neurons) or (n_trials, n_bins, n_neurons); got {arr.ndim}-D"
        )
    n_trials, n_bins, n_neurons = arr.shape
    if n_neurons == 0:
        raise ValueError(f"{name} has zero neurons")
    if n_bins == 0:
        raise ValueError(f"{name} has zero time bins")
    if n_trials == 0:
        raise ValueError(f"{name} has zero trials")
    if max_elements is not None and arr.size > max_elements:
        raise ValueError(f"{name} too large: {arr.size} entries, at most {max_elements} allowed")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values")
    if np.any(arr < 0):
        raise ValueError(f"{name} contains negative counts")
    if np.any(arr != np.round(arr)):
        raise ValueError(f"{name} contains non-integer counts")
    if arr.max() > MAX_COUNT:
        t, b, n = np.unravel_index(int(np.argmax(arr)), arr.shape)
        raise ValueError(
            f"{name} has {arr.max():.6g} spikes in one bin (trial {t}, bin {b}, neuron {n}); a bin "
            f"holds at most {MAX_COUNT:,}: counts are spikes per time bin, not rates, times or "
            "samples of a signal"
        )
    return arr


_SPIKE_TIMES_SHAPE = (
    "spike_times must be a list over neurons of lists of times, or a list over trials of such lists"
)


def _is_list(value) -> bool:
    return isinstance(value, list | tuple) or (isinstance(value, np.ndarray) and value.ndim == 1)


def bin_spike_times(
    spike_times: list[list[float]] | list[list[list[float]]],
    bin_size: float,
    duration: float | None = None,
    *,
    max_elements: int | None = None,
) -> np.ndarray:
    """Bin spike times into counts.

    Parameters
    ----------
    spike_times : list over neurons of lists of times, or list over trials of such lists
        Times in any unit, from the start of the trial (``>= 0``).
    bin_size : float
        Bin width in the same unit.
    duration : float, optional
        Trial length, a whole number of bins, no spike after it; default: up to the end of the
        bin of the last spike (over all trials).
    max_elements : int, optional
        Refuse (``ValueError``) before allocating more than this many counts
        (trials x bins x neurons).

    Returns
    -------
    counts : ndarray of shape (n_trials, n_bins, n_neurons)
    """
    if not bin_size > 0:
        raise ValueError("bin_size must be positive")
    trials = spike_times
    if not _is_list(trials) or len(trials) == 0:
        raise ValueError(_SPIKE_TIMES_SHAPE)
    # one trial given as neurons x times: wrap
    first = trials[0]
    if not _is_list(first):
        raise ValueError(_SPIKE_TIMES_SHAPE)
    if len(first) == 0 or not _is_list(first[0]):
        trials = [trials]
    n_neurons = len(trials[0])
    if n_neurons == 0:
        raise ValueError("spike_times has zero neurons")
    flat = []
    for k, tr in enumerate(trials):
        if not _is_list(tr) or not all(_is_list(times) for times in tr):
            raise ValueError(f"{_SPIKE_TIMES_SHAPE}; trial {k} is not")
        if len(tr) != n_neurons:
            raise ValueError(
                f"spike_times is ragged: trial {k} has {len(tr)} neurons, not {n_neurons}"
            )
        for times in tr:
            if any(_is_list(t) for t in times):
                raise ValueError(f"{_SPIKE_TIMES_SHAPE}; trial {k} nests deeper")
            t = np.asarray(times)
            _check_numbers(t, "spike_times", booleans=False, given=times)
            t = t.astype(float).ravel()
            if not np.all(np.isfinite(t)):
                raise ValueError("spike_times contains NaN or infinite values")
            if np.any(t < 0):
                raise ValueError("spike_times contains negative times")
            flat.append(t)
    last = max((t.max() for t in flat if t.size), default=0.0)
    given = duration is not None
    if not given:  # to the end of the last spike's bin: a spike on an edge starts a bin of its own
        with np.errstate(over="ignore"):
            q = float(last) / float(bin_size)
        duration = (_bin_index(q) + 1.0) * bin_size if np.isfinite(q) else q
    elif not duration > 0:
        raise ValueError("duration must be positive")
    with np.errstate(over="ignore"):
        span = float(duration) / float(bin_size)
    limit = max_elements if max_elements is not None else np.inf
    if not np.isfinite(span) or span * len(trials) * n_neurons > limit:
        raise ValueError(
            f"spike_times too large: {duration:g} / bin_size {bin_size:g} = {span:g} bins per neuron "
            f"and trial, more than {limit:g} bins x neurons x trials in all"
        )
    if given:
        # every spike counted, and no last bin shorter than the others counted as a full one
        if last > duration:
            late = sum(int(np.count_nonzero(t > duration)) for t in flat)
            raise ValueError(
                f"{late} spike time(s) after duration {duration:g} (the latest {last:g}); "
                "give a longer duration, or leave it out to end at the last spike's bin"
            )
        if abs(span - round(span)) > 1e-6 * max(span, 1.0):
            raise ValueError(
                f"duration {duration:g} is {span:g} bins of {bin_size:g}, not a whole number; "
                "a last, shorter bin would be counted as a full one"
            )
    n_bins = int(np.ceil(span - 1e-6 * max(span, 1.0)))
    n_bins = max(n_bins, 1)
    counts = np.zeros((len(trials), n_bins, n_neurons))
    for j, t in enumerate(flat):  # trial by trial, neuron by neuron, as converted above
        counts[j // n_neurons, :, j % n_neurons] = np.bincount(
            _bin_of(t, bin_size, n_bins), minlength=n_bins
        )
    return counts


def _bin_of(t: np.ndarray, bin_size: float, n_bins: int) -> np.ndarray:
    """The bin of each time: ``[k, k + 1) * bin_size`` holds bin ``k``, a time at ``duration`` the
    last. A time on an edge belongs to the bin it starts, in any unit: edges computed as ``k *
    bin_size`` put 0.35 s in bin 34 of 0.01 s (35 * 0.01 is 0.35000000000000003), while 350 ms
    went to bin 35 of 10 ms; so the times are divided, not the edges multiplied, with a
    tolerance of a billionth of a bin for the division's rounding."""
    return np.minimum(_bin_index(t / bin_size).astype(np.int64), n_bins - 1)


def _bin_index(q):
    """The bin of ``q`` = time / bin size, with :func:`_bin_of`'s tolerance for the division."""
    return np.floor(q + 1e-9 * np.maximum(q, 1.0))


def load_retina(recording: str = "Movie1Exp1", bin_ms: float = 10.0, data_dir: Path | None = None):
    """Load one salamander retina movie recording (Onken et al. 2016) as binned counts.

    Parameters
    ----------
    recording : {"Movie1Exp1", "Movie2Exp1"}
    bin_ms : float, default 10
    data_dir : Path, optional
        Folder holding the ``.mat`` files; default the shared data folder.

    Returns
    -------
    counts : ndarray of shape (30, 18000 / bin_ms, 38)
    """
    import scipy.io as sio

    if recording not in RETINA_RECORDINGS:
        raise ValueError(f"unknown recording {recording!r}; valid: {list(RETINA_RECORDINGS)}")
    folder = Path(data_dir) if data_dir is not None else require_shared_data(RETINA_DIR)
    m = sio.loadmat(folder / f"{recording}.mat")
    spikes = m["Spikes"]
    n_neurons, n_trials = int(m["n_neurons"][0, 0]), int(m["n_trials"][0, 0])
    times = [
        [np.ravel(spikes[i, k]).astype(float) for i in range(n_neurons)] for k in range(n_trials)
    ]
    counts = bin_spike_times(times, bin_ms, duration=RETINA_DURATION_MS)
    log.info("loaded %s: %s counts, %d spikes", recording, counts.shape, int(counts.sum()))
    return counts
