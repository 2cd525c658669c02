"""The per-frame motion engine used by the live service and the video jobs.

Per frame: grey float frame -> Gaussian pyramid -> whitening convolution and contrast normalisation per
level -> atom correlations of the non-overlapping patches (one BLAS GEMM) -> the ss-RNN greedy filtering
kernel with the recurrent state of the stream (``encode``) -> the MT read-out (``read``): per-patch
projections of the code, averaged over frames and over space, decoded per cell into direction, speed
and confidence; each cell's motion is integrated over its confident neighbours, and shown moving only as
far as the code around it changes. The same read on pyramid levels 1-4 (one more level encoded) reads
the frame one octave coarser, and a cell takes it where it reads fast motion. Where a cell's units see
one axis of motion, it shows the motion along that axis, then the motion that best meets the
constraints of its neighbourhood (the aperture problem). The dominant motion is the consensus of the
cells as shown.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import json
import math
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numba
import numpy as np

from v1motion.models import WEIGHTS_DIR
from v1motion.models.motion.contract import step_each
from v1motion.models.motion.grids import finite, grid, whole_degrees
from v1motion.models.motion.kernels import (
    _axis_cell_sums,
    _code_change,
    _code_change_where,
    _image_change,
    _scaled_patches,
)
from v1motion.models.motion.mt_readout import (
    MTReadout,
    Pooling,
    _project_frame,
    along_one_axis,
    axis_coherence,
    coherence_on_axis_scale,
    integrate_cells,
    pool_constraints,
    unit_axes,
)
from v1motion.models.motion.readout import MotionReadout
from v1motion.models.motion.ssrnn import NO_WHITENER, SSRNN, SparseCode, recurrent_csr

DEFAULT_WEIGHTS = WEIGHTS_DIR / "ssrnn_default.npz"
DEFAULT_MT = WEIGHTS_DIR / "mt_readout_default.npz"
DEFAULT_AXIS = WEIGHTS_DIR / "axis_calibration.json"
SPEED_BINS = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0], np.float32)
N_DIRECTION_BINS = 16
MAX_SIDE = 4096
INTEGRATION_SIGMA = 2.5
"""Cells (of ``Pooling.cell_px``): the standard deviation of the Gaussian over which each cell's
direction and speed are integrated (``integrate_cells``); chosen on the accuracy benchmark
(docs/motion/accuracy.md)."""
MOVING_FROM = (0.2, 0.4)
"""How far a cell is shown moving, by its confidence: not at all below 0.2, fully from 0.4, linearly
between. The frame's dominant motion (``global_motion``) is the consensus of the cells as far as they
are shown moving, and the dashboard's panels and map count them the same way. On a still view with
camera noise, some cells read faint motion on every frame (0.05-0.3 each); summed over every cell they
made the dominant motion confident while no cell was shown moving, and the dashboard showed a
direction and a speed for a still camera. ``python bench/still_confidence.py``
(docs/motion/still_confidence.md), eight stills at 320x240 with noise of 2/255, median dominant
confidence: 0.12-0.60 with every cell counted and the one-frame change gate, 0.00-0.09 now (with
``CHANGE_GATE``'s second comparison); at 4/255, 0.24-0.77 then, 0.00-0.12 now on seven and 0.99 on
astronaut, where 4.5 % of the cells read more than 0.2 and agree (the read-out's own false motion).
Pans of 0.5-1 px/frame keep 0.99-1.00; a small object (2 x 2 cells) over a still background keeps
what its own cells show. The accuracy benchmark's rows: docs/motion/accuracy.md."""
CHANGE_GATE = (0.1, 0.3)
"""A cell is shown moving only as far as the ss-RNN's code around it changes between frames: the
code change (``_code_change``, averaged over about 2 frames and 3 x 3 cells) mapped linearly from
``CHANGE_GATE`` to a factor in [0, 1] on the cell's confidence; chosen on the accuracy benchmark.
A patch's change is the smaller of its change since the previous frame and since the one before: on a
still view the recurrent code can alternate between two states, which changes it on every frame
while it returns to the same code every second one. Against the change since the previous frame
alone (the accuracy benchmark, docs/motion/accuracy.md): false motion on still frames 0.04 % ->
0.01 % (320x240) and 0.5 % -> 0.1 % (640x480), around objects 1.7 % -> 1.4 % and 0.9 % -> 0.6 %, on
the real clips 1.2 % -> 0.8 % and 0.9 % -> 0.7 %; the dominant direction of objects 7.4 -> 7.7 and
5.2 -> 5.5 degrees; per cell within 0.2 degrees but on tree.avi at 320x240 (53.8 -> 57.4). The
second comparison costs 1-2 % of a step."""
CHANGE_HISTORY = 4
"""How many frames back the fine read's change gate compares each patch's code with, taking the
smallest change (``CHANGE_GATE``): the previous frame and the one before everywhere, and the two
before those where the image itself is still (``STILL_IMAGE``). On a still view the recurrent code
can cycle through up to four states (period 2 on a 320x240 crop of ``camera``, period 4 on ``brick``
at 640x480), which the gate took for change and the read-out read as motion: at 640x480 with no noise,
the dominant motion of ``astronaut``, ``gravel`` and ``brick`` read 0.46-0.97 confident and up to 1 %
of the cells confident. The frames before the last two count only where the image is still, since a
grating whose pattern repeats every 3 or 4 frames returns the code to where it was, while moving.
The coarse read compares with the last two frames only."""
STILL_IMAGE = (3.0, 6.0)
"""Grey levels (of 255): a patch's image is still where its mean absolute change since the previous
frame is below the first, moving from the second, and partly still between (``CHANGE_HISTORY``)."""
NOISE_GATE = ((0.3, 0.6), (150.0, 300.0))
"""``((lo, hi), (lo, hi))``: a cell is shown still as far as its image changes as camera noise does,
whatever its code does. Noise changes a still image by as much between frames ``t - 2`` and ``t`` as
between ``t - 1`` and ``t``, while motion changes it more over two frames than over one (up to four
times the squared difference, for motion of a pixel or two): per cell, over its 3 x 3 cells
(``CHANGE_CELLS``), the mean squared change since the frame before, ``s1``, and since the one before
that, ``s2``, in grey levels squared (of 255). The cell is still as far as the growth
``(s2 - s1) / s1`` is below the first range (fully below its ``lo``) and ``s1`` below the second: a
change as large as a fast pan's across texture, which is as large over one frame as over two, is
motion. Through a camera's noise and JPEG the code of a still view changes too, and the read-out read
that as faint motion which agreed: the whole ``chelsea`` photograph at 320x240, noise of 4/255, JPEG
quality 80, read a dominant motion 0.99 confident on every frame, 1.2 % of its cells confident (on
its fur). Through a video codec the noise of a still view carries over from frame to frame between
key frames, and grows less than motion but more than noise sent frame by frame (a growth of 0.1-0.5
on an mp4v video of a still photograph with noise of 6/255, whose main directions were reported as
motion): hence ``lo`` 0.3. Of the cells confident (> 0.5) on still views with noise of 2-8 /255,
through JPEG, mp4v or neither, this takes all; of those confident on pans 1.8 %, on the real clips
1.9 %, on gratings, plaids and objects none (320x240; ``python bench/noise_gate.py``,
docs/motion/noise_gate.md). ``None`` turns it off. A frame the same as the one before
(``SAME_FRAME``) keeps the factors of the frame before."""
SAME_FRAME = 0.25
"""Grey levels squared (of 255): a frame whose every patch's mean squared change since the frame
before is below this is the same frame again, changed less than any camera's noise changes it (a
frame read twice from a camera, or repeated by a video's frame-rate conversion). ``NOISE_GATE``
cannot tell noise from motion on it (its growth over two frames is as large as the change before
was), nor on the frame after it (over two frames, it changed once): a repeated frame keeps the
gate's factors of the frame before, and the next frame's two-frame change is taken from the frame
before the repeat. Without this a still view through noise and JPEG showed faint motion on a
repeated frame (largest cell 0.38, dominant 0.20), and a pan with every fifth frame repeated (24
to 30 frames/s) showed 0.57 of its cells confident on the frame after each repeat against 0.79."""
UNCHANGED = 0.25
"""Grey levels squared (of 255), as ``SAME_FRAME`` but per cell (over its ``CHANGE_CELLS`` box): a
cell whose image changed less than this since the frame before is shown still (weighed fully from
twice this), and a cell that had not changed on the last ``REST_FRAMES`` frames that are not exact
repeats (``SAME_FRAME``: those keep the factors of the frame before, as a DVR's repeats must) and
now changes at once (as much since the frame before as since the one before that: ``NOISE_GATE``'s
growth below its ``lo``) appeared there (a subtitle, a caption, a logo switched on) and is shown
still on that frame. Camera noise changes every cell more than this, so neither applies to a
camera's frames; a video's still areas are often repeated exactly. Subtitles coming and going every
2 s over a still shot (640x480, H.264) showed 1-2 % of the cells confident for 3-6 frames at each
change, the read-out's averages carrying the appearance over frames in which the text's cells did
not change at all, and a video job's main directions reported three directions for a still shot. The
cost: on a still background repeated exactly, a cell an object enters at speed is shown moving one
frame later; a frame repeated nearly (re-encoded) is shown still, where it showed the motion before
it. Not caught: a caption that comes or goes right after whole frames repeated exactly (a still shot
without any noise, 1-3 frames between two captions), whose cells' last change is then older than
those repeats."""
REST_FRAMES = 3
"""How many of the last frames that are not repeats (``SAME_FRAME``) a cell must not have changed on
to have been at rest (``UNCHANGED``)."""
FAST_FROM = 5.0
"""px/frame. Fast motion is also read one octave coarser: the MT read-out applied to pyramid levels
1-4 (level 4 encoded for it) reads the frame at half resolution, where a displacement of 16 px/frame
is one of 8, inside the speeds the ss-RNN was trained on. A cell takes that reading where it is at
least this fast, confident (``COARSE_CONFIDENT``) and the cell itself shows some motion (confidence
above ``FINE_MOVING``, so an object's motion does not spread into a still background by the coarser
cells); chosen on the accuracy benchmark (docs/motion/accuracy.md). The coarse read's averages are
kept every frame, but it is decoded only when some moving cell reads at least half this fast."""
COARSE_CONFIDENT = 0.3
APERTURE = (0.65, 0.85)
"""Where the units around a cell respond to one axis of motion only (coherence of their doubled-angle
axes, weighted by activity, over the ``integrate_cells`` neighbourhood: 0.9 on gratings, 0.35 on
natural images), the cell shows only the motion along that axis (``along_one_axis``), blended in from
the first coherence to the second. The coherence is taken on the scale of gratings of the cell's axis
(``coherence_on_axis_scale``, with the engine's ``coherence_reference``), on which oblique gratings
reach it as horizontal ones do. Chosen on the accuracy benchmark (docs/motion/accuracy.md) and the
live synthetic source: from 0.7 to 0.9, the source's 225-degree grating (24 px period, 2 px/frame,
on the scale 0.83) kept a third of the read-out's guess along its stripes and read 5 degrees off;
from 0.65 it reads 0.7 off, with held-out pans and objects unchanged (within 0.1 degree) and real
clips 0.2-0.4 degree worse per cell (on cells the engine does not show moving)."""
CONSTRAINTS = (8.0, 0.05, 0.35, 0.1, 2.0)
"""``(sigma, lo, hi, prior, local)`` of ``pool_constraints``, the step after ``APERTURE``: a cell whose
units see mostly one axis (coherence on the grating scale from 0.05 to 0.35; natural images read 0.35 at
the median) takes the velocity that best meets the constraints of the cells within a Gaussian of 8
cells, each constraining the component along its own axis or, where its units see several axes, the
whole velocity; its own reading weighs a tenth of its neighbourhood's. On the map of a pan, a
region of parallel edges (strands of hair) showed the motion across them, not the pan's. Chosen on
the accuracy benchmark (docs/motion/accuracy.md), with gratings and plaids held where they were:
held-out pans per cell 9.3 -> 7.0 degrees (320x240) and 8.7 -> 6.0 (640x480), real clips 34.4 -> 28.8
and 34.1 -> 28.6. Where that solution turns a cell by more than 90 degrees, the cell takes the
solution of the cells within a Gaussian of 2 (``local``) if that one does not: two lanes of cars going
opposite ways 6 cells apart (5 and 2 px/frame, 640x480) read the slower lane 133 degrees off, as the
faster one, and a video job's main directions named the faster lane only; now 22 degrees, and both."""
WARMUP_FRAMES = 6
"""The first frames after a stream starts (or starts anew at a scene cut) read less well while the
ss-RNN's state and the read-out's averages fill: on pans of five stills at 320x240 (1-4 px/frame, 8
directions), of the cells shown confident on the k-th frame after the start, 39, 51, 58, 74 and 78 %
read their speed within 25 % for k = 1 to 5, then 84 % from the sixth on (direction within 20
degrees: 81 % on the first, 90-95 % after), and the dominant direction erred by 7.6 degrees on the
first against about 4 after. Their confidence (each cell's and the dominant motion's) is multiplied
by ``sqrt(k / WARMUP_FRAMES)`` until then (0.41 on the first frame); the cells' readings are kept, and
the dominant motion is the consensus of the map as shown, as on every frame.
A video's first frames showed confidence 0.93-1.00 for directions 22-30 degrees off."""


def warmup_factor(k: int, frames: int = WARMUP_FRAMES) -> float:
    """The factor on the confidence of the ``k``-th frame after a start (``WARMUP_FRAMES``)."""
    return 1.0 if k >= frames else math.sqrt(max(k, 0) / frames)


GLOBAL_2D_POWER = 4.0
"""The dominant motion weighs each cell by its confidence times ``(1 - coherence) ** GLOBAL_2D_POWER``
(the axis coherence of ``APERTURE``): cells whose units see structure in several orientations, where
the aperture problem is solved within reach of the cell, count more than cells on a single edge,
whose reading along the edge is a guess. Chosen on the accuracy benchmark; with ``aperture=None``
the cells weigh by confidence alone."""
FINE_MOVING = 0.1
CHUNKS_PER_THREAD = 8
"""The ss-RNN kernel's patches are split into this many chunks per thread, whole patch rows each: the
kernel alone on captured 640x480 frames of vtest.avi, two threads, chunks interleaved, ran 2.23-2.25
ms a frame with 8 or 16 per thread and 2.56 ms with 4 (4.3 ms on one thread)."""
PARALLEL_FROM_PX = 150_000
"""An engine with more than one thread steps frames of fewer pixels on one thread: at 320x240
(76,800 px) two threads were slower than one (0.85-0.92x the step rate in one process on vtest.avi,
and a higher latency in the live service), at 640x480 (307,200 px) faster (1.2-1.5x; live latency p95
20-21 ms against 24-26 ms), on 2 cores (docs/bench/service_latency.md)."""
CHANGE_CELLS = 3
"""The change gate (``CHANGE_GATE``) averages the code change over a box of this many cells (of
``Pooling.cell_px``) a side."""
SCENE_CUT = (0.5, 0.5, 0.03, 0.06)
"""A frame starts a new scene, and the stream starts anew from it (as on its first frame: no motion,
the code primed on it), when its grey-level histogram (32 bins, as fractions) changes by more than
``SCENE_CUT[0]`` (L1) since the previous frame and the two frames' thumbnails (1/8 a side,
area-averaged, blurred by 1.5 thumbnail pixels: ``cut_features``) no longer match: where both have
texture (standard deviation >= ``SCENE_CUT[3]``, grey in [0, 1]) their correlation is below
``SCENE_CUT[1]``, or one is flat (< ``SCENE_CUT[2]``: e.g. a fine grating, which the blur removes) and
the other has texture. Across a cut there is no motion to read, but the read-out's running average and
the change gate carried the motion before it: at the switches of the live synthetic source (a grating
to a panned image or back) the dominant motion was shown in the old direction on the frames after
them, a grating's first frame at 15-19 px/frame for a truth of 1-2, and some pans not at all for five
frames (docs/motion/accuracy.md, "Scene cuts"). Both cues must agree: on every frame pair of the
accuracy benchmark's families at 320x240 and 640x480 (pans up to 16 px/frame, gratings, plaids,
objects, turns, still frames, the real clips; and the four clips whole at 640x480), the histograms of
natural images changed by 0.31 at most, those of gratings and plaids by up to 1.0 but their thumbnails
are flat, and no pair was a cut; the switches of the synthetic source changed the histograms by
1.0-1.6, one thumbnail flat (< 0.02), the other textured (> 0.17), and the twelve joins of two of the
real clips changed them by 0.9-1.4 with thumbnails correlating at 0.33 at most. A cut between two
scenes of like histograms is not seen (read as motion, as before). ``None`` turns it off."""
LIGHT_ON = 1.4
"""A frame whose grey-level histogram changed as across a cut (more than ``SCENE_CUT[0]``) and whose
mean grey level rose by this factor or more since the frame before (a light switched on, a camera's
exposure jumping up) starts the stream anew as a cut does, though it shows the same scene. Read as
motion, a still view lit up from 0.6 to 1.0 of its brightness showed a frame of confident motion in
a direction nothing took (on 3 of 4 stills at 320x240 and 640x480, up to 19 % of the cells at 14-20
px/frame, the dominant motion 0.74-1.00 confident), which a video job's main directions reported as
its motion. A rise of a third or less, flicker (a rise of 1.3 at 60 frames/s) and light going down
were read as still, and stay read as they are; the frames' mean grey levels are floored at 8 of 255
so that a dark view's noise is no rise. A fade from black restarts the stream on its first frames (a
rise of 1.4 or more), and so would each flash of a strobe."""
RUN_AHEAD = 3
"""``MotionEngine.run`` with two threads encodes frames up to this many ahead of the one it reads. With
one frame ahead, the reading and the encoding thread waited for each other every frame, and in a
video job, whose other stages (decoding, results, overlay) take turns on the same two cores, each
wait for a thread the OS had parked stalled the other. A job on box.mp4 (300 frames at 640x480,
``process_video`` with overlay, two engine threads), four rounds alternating in one process: 77.8
frames/s with one frame ahead (the code before this setting), 84.6 with two, 86.2 with three, 84.2
with four; the engine alone on the same frames within 2 % of one frame ahead. Each frame ahead holds
one whitened pyramid (1.6 MB at 640x480)."""
PRIME_PASSES = 4
"""The first frame of a stream is encoded this many more times before it counts, each pass driven by
the code of the one before, as if the camera had been looking at it for that long: the recurrent code
starts settled, and the change gate (``CHANGE_GATE``) has its two earlier codes from the second frame
on. From a cold start the code of a still frame takes about five passes to settle (its change since
two passes back, on `brick`: 0.162, 0.064, 0.052, 0.019, 0.019), and until then the gate let motion
through on a still view: ``python bench/still_confidence.py`` (docs/motion/still_confidence.md, 72
still views at 320x240 with noise of 0-4 /255), a confident dominant motion (> 0.3) on any of the
second to fourth frames on 48.6 % of them cold, 2.8 % primed; held-out pans that start with the
stream are as confident from the second frame (median 0.99) and their dominant direction errs about
as much (13.7 degrees on the second frame against 12.3, 7.5 against 7.6 on the third). Only the step
path primes (``step``, ``run``); ``encode``, on which the read-out is fitted, does not. Costs four
encodes on a stream's first frame."""


class _Placement:
    """Where an engine with ``threads > 1`` runs: the calling thread on one CPU while it steps a
    frame (its affinity restored after), each helper thread on another, for good.

    Left to the scheduler, the threads of a live stream, which idles between frames, were woken onto
    each other's core: on a 2-core machine a 640x480 step paced at 30 fps took 13.5 ms (median)
    against 8.3 ms back to back, and 9.7 ms with the threads placed (``bench/paced_step.py``),
    about what keeping a core busy between frames gave. Consecutive CPUs of the process's affinity,
    starting one further on for each engine made, so that engines spread over the CPUs. Only one
    thread at a time is placed on an engine's CPU: a second stream stepping the same engine at once
    runs where the scheduler puts it. Nothing is placed where the platform cannot
    (``os.sched_setaffinity``) or the process has fewer CPUs than the engine has threads, and a
    placement the system refuses later (a container's CPU set changed under the running process)
    leaves that thread where it is: placing only ever speeds a step up, it never fails one."""

    _turn = itertools.count()

    def __init__(self, threads: int) -> None:
        self.cpus: list[int] = []
        if threads > 1 and hasattr(os, "sched_setaffinity"):
            allowed = sorted(os.sched_getaffinity(0))
            if len(allowed) >= threads:
                k = next(self._turn)
                self.cpus = [allowed[(k + i) % len(allowed)] for i in range(threads)]
        self._helpers = itertools.count(1)
        self._lock = threading.Lock()
        self._busy = False

    def pin_helper(self) -> None:
        """A helper thread's initializer: the next of the engine's other CPUs. An initializer that
        raises breaks its pool for good, so a refusal leaves the helper unplaced instead."""
        if self.cpus:
            i = next(self._helpers)
            _set_affinity({self.cpus[i % len(self.cpus)]})

    @contextlib.contextmanager
    def calling_thread(self):
        """The calling thread on the engine's first CPU while inside (if no other is)."""
        if not self.cpus:
            yield
            return
        with self._lock:
            mine, self._busy = not self._busy, True
        saved = None
        try:
            if mine:
                saved = os.sched_getaffinity(0)
                placed = self.cpus[0] in saved and saved != {self.cpus[0]}
                if not (placed and _set_affinity({self.cpus[0]})):
                    saved = None
            yield
        finally:
            if saved is not None:
                _set_affinity(saved)
            if mine:
                with self._lock:
                    self._busy = False


def _set_affinity(cpus: set[int]) -> bool:
    """The calling thread on ``cpus``; ``False`` (nothing changed) if the system refuses."""
    try:
        os.sched_setaffinity(0, cpus)
    except OSError:
        return False
    return True


class _OneBlasThread:
    """Context: BLAS on one thread while any engine with ``threads > 1`` steps or runs frames
    (process-wide, counted, so that overlapping users restore the caller's count once, at the end).

    The engine's matrix products are small, and BLAS's own threads (by default one per core) take
    the cores that the engine's threads are using: with BLAS's default thread count, a 640x480 step
    on two threads ran at 0.89-0.94x the speed of one thread (OpenMP waiting passively; 0.65-0.76x
    spinning), against 1.50-1.59x with BLAS on one thread. Entering costs about 6 us; where BLAS
    already runs on one thread (the service, video jobs) nothing changes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users = 0
        self._limiter = None
        self._controller = None

    def __enter__(self) -> None:
        with self._lock:
            if self._users == 0:
                if self._controller is None:
                    from threadpoolctl import ThreadpoolController

                    self._controller = ThreadpoolController()
                self._limiter = self._controller.limit(limits=1, user_api="blas")
            self._users += 1

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._users -= 1
            if self._users == 0:
                self._limiter.restore_original_limits()
                self._limiter = None


ONE_BLAS_THREAD = _OneBlasThread()
HEAP_PAD_BYTES = 32 << 20
"""Per frame the engine allocates and frees several MB of temporaries (the pyramid, its whitened
levels, patches, correlations, codes: about 10 MB at 640x480). With glibc's default settings the
freed top of the heap goes back to the kernel and the next frame faults its pages in again (at
640x480 one thread, in a process that runs the engine alone, 11.4 ms a frame against 9.8 ms with
the heap kept; a video job's engine stage 83.5 against 98.1 frames/s; where the process keeps a
large heap anyway, as the server does, nothing changes). ``keep_heap`` has malloc keep this much
free heap and serve blocks up to this size from it."""
_HEAP_KEPT: bool | None = None
_NO_HISTS = (np.empty(0, np.float32),) * 4
"""What ``_project_frame`` is given for histograms it is told not to count (it never touches them)."""
_END = object()
"""What ``run`` takes from an exhausted iterator of frames."""


@dataclass(frozen=True)
class _Here:
    """A frame ``run`` encodes on its own thread when its turn comes (a first frame, a new size, a scene
    cut: ``restart``)."""

    prepared: tuple
    restart: bool = False


@dataclass(frozen=True)
class MotionFrame:
    """The motion read out of one frame: per cell (``cell`` px a side, row 0 at the top) and globally.

    ``direction`` and ``global_direction`` are in radians (0 = right, pi/2 = up on screen): degrees,
    as everywhere outside the engine, are ``direction_deg`` and ``global_direction_deg``, and
    ``to_dict`` gives all of it in the units of every output. Speeds are in px/frame of the frame
    given to ``step``.

    Attributes
    ----------
    direction, speed, confidence : (rows, cols) float arrays
        Per cell: radians from -pi to pi, px/frame, and [0, 1]. The grid covers the frame from its
        top-left corner in whole cells: a strip narrower than a cell at the right or bottom edge has
        none (321x239 px: 14 x 20 cells of 16 px). A cell is shown moving from confidence 0.2, fully
        from 0.4 (``MOVING_FROM``, the weight ``moving`` gives). **Where its confidence is 0, its
        direction and speed mean nothing** (a still view's cells read speeds up to ~10 px/frame
        there): weigh or mask by ``moving`` before averaging them.
    cell : int
        Side of a cell in px.
    direction_hist, speed_hist : (16,) and (7,) float arrays
        The ss-RNN units' activity by their preferred direction (bins centred on 0, 22.5, ...
        337.5 degrees) and preferred speed (``SPEED_BINS``, 0.25 to 16 px/frame): the population's
        view, not a histogram of the cells.
    top_units : list of (int, float)
        Up to 10 most active units, most active first: (unit index, activity: its code summed over
        the frame's full-resolution patches, growing with the frame's area); each unit's tuning is
        ``tuning_report`` / ``GET v1/units``.
    global_direction, global_speed, global_confidence : float
        The frame's dominant motion in radians, px/frame and [0, 1] (``global_motion``: the
        consensus of the cells shown moving); direction and speed mean nothing where the
        confidence is 0.
    active_per_patch : float
        Mean number of active units per patch (the code's density).
    """

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

    @property
    def direction_deg(self) -> np.ndarray:
        """Each cell's direction in degrees in [0, 360): 0 = right, 90 = up on screen."""
        deg = np.degrees(self.direction) % 360
        return np.where(deg >= 360, deg - 360, deg)  # -1e-14 % 360 rounds to 360

    @property
    def moving(self) -> np.ndarray:
        """How far each cell is shown moving, in [0, 1] (``shown_moving``: 0 below confidence 0.2,
        its confidence from 0.4), as the dashboard draws and counts it: the weights for a mean over
        cells, or ``moving > 0`` as a mask."""
        return shown_moving(self.confidence)

    @property
    def global_direction_deg(self) -> float:
        """The dominant motion's direction in degrees in [0, 360)."""
        deg = math.degrees(float(self.global_direction)) % 360
        return 0.0 if deg >= 360 else deg

    def to_dict(self) -> dict:
        """The one serialised form of a frame's motion: the websocket result's ``motion`` and each
        entry of a video job's motion.json (docs/protocol.md, docs/video_outputs.md).

        Plain JSON values, units in the field names: the grids (``rows`` x ``cols`` cells of
        ``cell_px``, row 0 at the top) of ``direction_deg`` in whole degrees in [0, 360) (0 = right,
        90 = up on screen), ``speed_px_per_frame`` and ``confidence`` to 2 decimals; the histograms
        and the units' activity to 4; ``global_direction_deg`` to 0.1 degree in [0, 360) and the
        other numbers to 3. NaN and infinities become 0, so the result is always valid JSON.
        """
        global_deg = finite(math.degrees(float(self.global_direction) % (2 * math.pi)), 1) % 360
        return {
            "cell_px": int(self.cell),
            "rows": int(self.direction.shape[0]),
            "cols": int(self.direction.shape[1]),
            "direction_deg": whole_degrees(self.direction),
            "speed_px_per_frame": grid(self.speed, 2),
            "confidence": grid(self.confidence, 2),
            "direction_hist": grid(self.direction_hist, 4),
            "speed_hist": grid(self.speed_hist, 4),
            "top_units": [[int(u), finite(a, 4)] for u, a in self.top_units],
            "global_direction_deg": global_deg,
            "global_speed_px_per_frame": finite(self.global_speed, 3),
            "global_confidence": finite(self.global_confidence, 3),
            "active_per_patch": finite(self.active_per_patch, 3),
        }


@dataclass
class StreamState:
    """Recurrent state of one stream; not shared between threads."""

    shape: tuple | None = None
    prev: list = field(default_factory=list)
    rms: list = field(default_factory=list)
    acc: list = field(default_factory=list)
    change: np.ndarray | None = None  # running code change of the finest level's patches
    coarse_acc: list = field(default_factory=list)  # the same two for the coarse read
    coarse_change: np.ndarray | None = None
    before: tuple = ()  # codes of the frames before the last one, newest first (CHANGE_HISTORY)
    coarse_before: tuple = ()  # the same for the coarse read
    frames: int = 0
    cut_ref: tuple | None = None  # cut_features of the last frame taken (SCENE_CUT)
    grey: np.ndarray | None = None  # the last frame encoded, grey (STILL_IMAGE, NOISE_GATE)
    grey_before: np.ndarray | None = None  # the frame encoded before that (NOISE_GATE)
    calm: np.ndarray | None = None  # the noise gate's factor per cell on the last frame
    changed: list = field(default_factory=list)  # each cell's change on its last REST_FRAMES
    took_coarse: bool = True  # whether the last frame read took the coarse read (two threads)

    def start(self, shape: tuple[int, int], encoded: int, read: int) -> None:
        """A new stream of frames of ``shape``: ``encoded`` pyramid levels, ``read`` of them per read."""
        self.shape = shape
        self.prev, self.rms = [None] * encoded, [None] * encoded
        self.acc, self.coarse_acc = [None] * read, [None] * read
        self.change = self.coarse_change = None
        self.before = self.coarse_before = ()
        self.grey = self.grey_before = self.calm = None
        self.changed = []
        self.frames = 0


def keep_heap() -> bool:
    """Have glibc's malloc keep ``HEAP_PAD_BYTES`` of freed heap for the next frame instead of
    returning it to the kernel (``mallopt`` ``M_TOP_PAD``), and serve blocks up to that size from the
    heap (``M_MMAP_THRESHOLD``; larger ones are mapped as before). Process-wide and idempotent; every
    ``MotionEngine`` calls it. Returns whether the settings were applied (``False`` where the C
    library is not glibc, which then keeps its own behaviour)."""
    global _HEAP_KEPT
    if _HEAP_KEPT is None:
        _HEAP_KEPT = False
        if sys.platform.startswith("linux"):
            try:
                mallopt = ctypes.CDLL(None).mallopt
            except (OSError, AttributeError):
                return False
            mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
            m_top_pad, m_mmap_threshold = -2, -3  # glibc's malloc.h
            _HEAP_KEPT = bool(
                mallopt(m_mmap_threshold, HEAP_PAD_BYTES) and mallopt(m_top_pad, HEAP_PAD_BYTES)
            )
    return _HEAP_KEPT


FLOAT_RANGE = (-0.25, 1.25)
"""Float frames are grey levels in [0, 1]; values outside this range are refused (a little either
side is let through: interpolation and noise overshoot). A frame of 0-255 levels as floats was read
as if nothing in it changed scene: the scene-cut test saturated, and a cut to another scene was shown
as confident motion at 13 px/frame; values too large for float32 made every output NaN."""


def to_grey(frame: np.ndarray) -> np.ndarray:
    """Validate a frame and return it as float32 grey in [0, 1]; raise ValueError naming the problem.

    ``frame``: grey ``(H, W)`` or ``(H, W, 1)`` or BGR(A) ``(H, W, 3 or 4)`` uint8 (0-255), or grey
    float32/float64 in [0, 1] (``FLOAT_RANGE``), in either byte order; a masked array with no pixel
    masked."""
    if not isinstance(frame, np.ndarray):
        raise ValueError(f"frame must be a numpy array, got {type(frame).__name__}")
    if isinstance(frame, np.ma.MaskedArray):  # read as its data, the mask ignored, until this
        masked = int(np.count_nonzero(np.ma.getmaskarray(frame)))
        if masked:
            raise ValueError(
                f"frame is a masked array with {masked} masked pixels: the engine has no missing "
                "pixels; fill them first (frame.filled(value))"
            )
        frame = np.ma.getdata(frame)
    if frame.ndim in (2, 3) and 0 in frame.shape[:2]:
        raise ValueError(f"frame is empty: shape {frame.shape}")
    if frame.ndim == 3 and frame.shape[2] == 1:  # grey with a channel axis (imageio, Keras)
        frame = frame[:, :, 0]
    if frame.ndim == 3 and frame.shape[2] in (3, 4):
        if frame.dtype != np.uint8:
            raise ValueError(f"colour frames must be uint8 BGR, got {frame.dtype}")
        code = cv2.COLOR_BGR2GRAY if frame.shape[2] == 3 else cv2.COLOR_BGRA2GRAY
        frame = cv2.cvtColor(frame, code)
    elif frame.ndim != 2:
        raise ValueError(
            f"frame must be (H, W) or (H, W, 1) grey or (H, W, 3) BGR, got shape {frame.shape}"
        )
    if frame.dtype == np.uint8:
        # one pass: the same float32 quotients as converting first and dividing by 255 after
        return np.divide(frame, np.float32(255.0), dtype=np.float32)
    if frame.dtype.kind == "f" and frame.dtype.itemsize in (4, 8):  # big-endian too (FITS)
        lo, hi = float(frame.min()), float(frame.max())  # NaN or an infinity shows in either
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError("frame contains NaN or infinite values")
        if lo < FLOAT_RANGE[0] or hi > FLOAT_RANGE[1]:
            raise ValueError(
                f"float frames hold grey levels in [0, 1], got values from {lo:.4g} to {hi:.4g}"
                + ("; divide 0-255 levels by 255, or pass uint8" if hi > 2 else "")
            )
        return frame.astype(np.float32)
    raise ValueError(f"frame dtype must be uint8, float32 or float64, got {frame.dtype}")


def cut_features(grey: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """What ``is_scene_cut`` compares of a frame, from float32 grey in [0, 1]: every other pixel of every
    other row as uint8, and its grey-level histogram (32 bins, as fractions); 0.05 ms at 640x480. The
    thumbnails are made only for frames whose histogram changed (``_cut_thumbnail``)."""
    half = cv2.convertScaleAbs(grey[::2, ::2], alpha=255.0)
    hist = cv2.calcHist([half], [0], None, [32], [0, 256]).ravel()
    hist /= max(float(hist.sum()), 1.0)
    return hist, half


def _cut_thumbnail(half: np.ndarray) -> np.ndarray:
    """1/8 of the frame a side (from ``cut_features``' half-size frame, area-averaged), grey in [0, 1],
    then a Gaussian blur of 1.5 thumbnail pixels (``SCENE_CUT``)."""
    h, w = half.shape
    thumb = cv2.resize(half, (max(1, w // 4), max(1, h // 4)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(thumb.astype(np.float32) * np.float32(1 / 255), (0, 0), 1.5)


def is_scene_cut(before, after, thresholds=SCENE_CUT) -> bool:
    """Whether ``after`` (``cut_features`` of a frame) shows another scene than ``before`` (those of
    the frame before it), or the same lit up (``LIGHT_ON``): see ``SCENE_CUT``. Frames of different
    sizes are not compared (``False``)."""
    (h0, g0), (h1, g1) = before, after
    if g0.shape != g1.shape:
        return False
    max_change, min_corr, flat, textured = thresholds
    if float(np.abs(h1 - h0).sum()) <= max_change:
        return False
    if max(float(g1.mean()), 8.0) >= LIGHT_ON * max(float(g0.mean()), 8.0):
        return True  # a light switched on (LIGHT_ON)
    t0, t1 = _cut_thumbnail(g0), _cut_thumbnail(g1)
    s0, s1 = float(t0.std()), float(t1.std())
    if min(s0, s1) >= textured:
        a, b = t0 - t0.mean(), t1 - t1.mean()
        return float((a * b).mean()) / (s0 * s1) < min_corr
    return (s0 < flat and s1 >= textured) or (s1 < flat and s0 >= textured)


def shown_moving(confidence, moving=MOVING_FROM) -> np.ndarray:
    """How far each cell is shown moving (``MOVING_FROM``): its confidence times a ramp from 0 at
    ``moving[0]`` to 1 at ``moving[1]``."""
    lo, hi = moving
    return confidence * np.clip((confidence - lo) / (hi - lo), 0.0, 1.0)


def global_motion(
    direction, speed, confidence, support: float = 4.0, weight=None, moving=MOVING_FROM
) -> tuple[float, float, float]:
    """The frame's dominant motion from the cells shown moving: the weighted mean direction, the weighted
    geometric mean speed, and a confidence = how well the weighted cells agree (length of their mean
    unit vector) x how many cells are shown moving (saturating at ``support`` cells' worth), at most
    the confidence of the ``support``-th most confident cell: many cells shown faintly, none of them
    confident, are no confident motion however well they agree (the trace of a pan in the read-out's
    averages on the frame after it stopped: 65 cells of 0.2-0.42 made a dominant motion 0.999
    confident on a still frame).

    A cell is shown moving as far as its confidence times a ramp from 0 at ``moving[0]`` to 1 at
    ``moving[1]`` (``MOVING_FROM``): many faint cells neither add up to a confident one nor pull the
    direction and speed of the cells shown moving. Cells weigh that times ``weight`` (per cell, >= 0;
    ``None``: 1); where the weights of every such cell are (near) 0, they weigh by the first factor
    alone. Where no cell is shown moving, the faint cells give the direction and speed, with no
    confidence.

    On held-out pans this errs by about half as much as decoding the whole frame's pooled activity,
    and a small object over a still background still gets its own direction (still cells weigh 0).
    """
    conf = confidence.astype(np.float64)
    if conf.sum() <= 1e-9:
        return 0.0, 0.0, 0.0
    base = shown_moving(conf, moving)
    shown = base.sum()
    if shown <= 1e-9:  # nothing shown moving: the faint cells' motion, with no confidence
        base = conf
    amount = base.sum()
    w = base if weight is None else base * np.maximum(np.asarray(weight, np.float64), 0.0)
    total = w.sum()
    if total <= 1e-6 * amount:
        w, total = base, amount
    vx = (w * np.cos(direction)).sum()
    vy = (w * np.sin(direction)).sum()
    agreement = np.hypot(vx, vy) / total
    g_speed = np.exp((w * np.log(np.maximum(speed, 1e-6))).sum() / total)
    k = min(max(1, math.ceil(support)), conf.size)
    top = float(np.partition(conf.ravel(), -k)[-k])  # the support-th most confident cell
    g_conf = min(agreement * min(1.0, shown / support), top)
    return float(np.arctan2(vy, vx)), float(g_speed), float(g_conf)


def _arrays(code: SparseCode) -> tuple:
    """A sparse code's arrays as ``_code_change`` takes them."""
    return code.idx, code.val, code.cnt


def _check_state(state) -> None:
    if not isinstance(state, StreamState):
        raise TypeError(
            f"state must be a stream's StreamState, from engine.new_state(), got {type(state).__name__}"
        )


def _active_per_patch(codes) -> float:
    """Mean number of active units per patch of the finest level of ``codes`` (``encode``'s)."""
    code, gh, gw = codes[0]
    return int(code.cnt.sum()) / max(gh * gw, 1)


def load_axis_calibration(path) -> tuple[np.ndarray, np.ndarray | None]:
    """The axis calibration of an ``axis_calibration.json`` (``v1motion fit-readout
    --axis-calibration``): its offsets (radians) and its gratings' coherence by axis (``None`` in a
    file without one), the engine's ``axis_calibration`` and ``coherence_reference``."""
    data = json.loads(Path(path).read_text())
    offsets = np.radians(np.asarray(data["offsets_deg"], np.float64))
    if offsets.ndim != 1 or len(offsets) < 2 or not np.all(np.isfinite(offsets)):
        raise ValueError(f"{Path(path).name}: offsets_deg must be a list of finite numbers")
    reference = data.get("coherence_reference")
    if reference is not None:
        reference = np.asarray(reference, np.float64)
        if reference.ndim != 1 or len(reference) < 2 or not np.all(reference > 0):
            raise ValueError(
                f"{Path(path).name}: coherence_reference must be a list of positive numbers"
            )
    return offsets, reference


class MotionEngine:
    """ss-RNN + MT-like read-out + tuning, applied frame by frame.

    Parameters
    ----------
    model : SSRNN
    readout : MotionReadout
        The linear read-out shipped with the weights (``readout_levels`` levels); the tuning report's
        science keys are scored with it. The live motion comes from ``mt``.
    tuning : dict with per-unit arrays ``pref_dir`` (N,), ``pref_speed`` (N,), ``di`` (N,),
        ``direction_curves`` (16, N), ``speed_curves`` (N, n_speeds), ``speeds`` (n_speeds,).
    levels : pyramid levels of the linear read-out.
    mt : MTReadout, optional
        The motion read-out of ``step``; it sets how many pyramid levels are encoded. Without it the
        engine can encode but not read motion.
    pooling : Pooling, optional
        Temporal and spatial pooling of the MT read-out's inputs (must be the one it was fitted with).
    integration_sigma : float, default INTEGRATION_SIGMA
        Each cell's direction and speed are the confidence-weighted mean over a Gaussian
        neighbourhood of this many cells (``integrate_cells``); 0 reads every cell on its own.
    change_gate : (float, float) or None, default CHANGE_GATE
        Where the code of the finest level does not change between frames, nothing is shown moving:
        each cell's confidence is multiplied by its code change mapped from this range to [0, 1].
        ``None`` turns the gate off.
    aperture : (float, float) or None, default APERTURE
        Where the units around a cell see one axis of motion, the cell shows only the motion along
        it, blended in over this range of coherence (``along_one_axis``); ``None`` turns it off.
    constraints : (sigma, lo, hi, prior[, local]) or None, default CONSTRAINTS
        Then a cell that sees mostly one axis takes the velocity that best meets the constraints of
        its neighbourhood (``pool_constraints``); ``None`` turns it off, and so does
        ``aperture=None`` (it needs the units' axes).
    coarse : bool, default True
        Also read the motion one octave coarser (pyramid levels 1 and up, one more level encoded)
        and let a cell take that reading where it is fast (``FAST_FROM``); frames whose sides are
        under ``2 * min_side`` are read at one scale.
    threads : threads of a step (default 1, the reference path; at most ``NUMBA_NUM_THREADS``, the
        number of cores by default). With more, the patches of a frame are split into
        ``CHUNKS_PER_THREAD * threads`` chunks of whole patch rows that the calling thread and the
        engine's helper threads share (``SSRNN.infer`` with an executor), and a helper whitens half
        of level 0 and the coarser levels,
        then takes part of the fine read's projection and the coarse read (decoding it ahead when
        the frame before took it, ``_read_on_two_threads``); the codes and the motion map are
        identical (the histograms to float32 rounding) where BLAS runs on one thread, as in the
        service, video jobs and ``bench/`` (in a process whose BLAS runs several, the one-thread
        engine's products round otherwise: speeds differ by ~1e-6 px/frame). ``run`` (a video's frames, all at hand)
        uses two threads differently: frames are read on one thread while the following ones are
        encoded on the other, up to ``run_ahead`` ahead, for more frames/s. While such an engine
        steps or runs frames, BLAS runs on one thread (``ONE_BLAS_THREAD``): with its default, the
        two threads ran slower than one.
    place_threads : bool, default True
        With ``threads > 1``, ``step`` runs the calling thread on one CPU and each helper on another
        (``_Placement``): left to the scheduler, a live stream's threads slowed each other after
        every pause between frames. ``False`` leaves them where the scheduler puts them.
    prime_passes : int, default PRIME_PASSES
        The first frame of a stream is encoded this many more times, each pass driven by the code of
        the one before, so that the code starts settled (``PRIME_PASSES``); 0 starts it cold.
    warmup_frames : int, default WARMUP_FRAMES
        The confidence of the frames after a start grows to its full value over this many frames
        (``WARMUP_FRAMES``); 0: at once.
    scene_cut : (float, float, float, float) or None, default SCENE_CUT
        ``step`` and ``run`` start the stream anew at a scene cut (``SCENE_CUT``, ``is_scene_cut``): the
        new scene's first frame reads no motion and primes the code, as a stream's first frame does.
        ``None``: never.
    axis_calibration : (K,) radians, optional
        Offsets that correct the axis the aperture step reads from the units (``calibrate_axis``):
        fitted on gratings of known axis (``mt_fit.fit_axis_calibration``), shipped in
        ``axis_calibration.json``; ``None`` reads the units' axis as it is.
    coherence_reference : (K,), optional
        The coherence of gratings by axis, fitted and shipped with ``axis_calibration``: the aperture
        step takes each cell's coherence relative to a grating's at its axis
        (``coherence_on_axis_scale``), so an oblique grating's motion is read along its axis as a
        horizontal one's is; ``None`` takes it as it is.
    parallel_from_px : int, default PARALLEL_FROM_PX
        With ``threads > 1``, frames of fewer pixels are stepped on one thread (a one-thread twin
        of this engine, sharing its weights), where splitting them costs more than it saves.
    """

    run_ahead = RUN_AHEAD
    """How many frames ``run`` encodes ahead of the one it reads (``RUN_AHEAD``)."""
    change_history = CHANGE_HISTORY
    """How many frames back the change gate compares a code with (``CHANGE_HISTORY``)."""
    noise_gate = NOISE_GATE
    """Where a cell's image changes as camera noise does, it is shown still (``NOISE_GATE``)."""

    def __init__(self, model: SSRNN, readout: MotionReadout, tuning: dict, levels: int = 3,
                 mt: MTReadout | None = None, pooling: Pooling | None = None,
                 rms_floor: float = 0.1, threads: int = 1,
                 integration_sigma: float = INTEGRATION_SIGMA,
                 change_gate: tuple[float, float] | None = CHANGE_GATE,
                 coarse: bool = True,
                 aperture: tuple[float, float] | None = APERTURE,
                 constraints: tuple[float, ...] | None = CONSTRAINTS,
                 parallel_from_px: int = PARALLEL_FROM_PX, place_threads: bool = True,
                 axis_calibration=None, coherence_reference=None,
                 prime_passes: int = PRIME_PASSES,
                 scene_cut: tuple[float, float, float, float] | None = SCENE_CUT,
                 warmup_frames: int = WARMUP_FRAMES):  # fmt: skip
        if not 1 <= threads <= numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads must be between 1 and {numba.config.NUMBA_NUM_THREADS} "
                f"(NUMBA_NUM_THREADS), got {threads}"
            )
        if not integration_sigma >= 0:
            raise ValueError(f"integration_sigma must be >= 0, got {integration_sigma}")
        self.integration_sigma = float(integration_sigma)
        if change_gate is not None and not 0 <= change_gate[0] < change_gate[1]:
            raise ValueError(f"change_gate must be (lo, hi) with 0 <= lo < hi, got {change_gate}")
        self.change_gate = None if change_gate is None else tuple(map(float, change_gate))
        self.coarse = bool(coarse)
        if not (isinstance(prime_passes, int | np.integer) and prime_passes >= 0):
            raise ValueError(f"prime_passes must be an int >= 0, got {prime_passes!r}")
        self.prime_passes = int(prime_passes)
        if scene_cut is not None and not (
            scene_cut[0] > 0 and -1 <= scene_cut[1] <= 1 and 0 <= scene_cut[2] <= scene_cut[3]
        ):
            raise ValueError(
                "scene_cut must be (histogram change > 0, correlation in [-1, 1], flat, textured) "
                f"with 0 <= flat <= textured, got {scene_cut}"
            )
        self.scene_cut = None if scene_cut is None else tuple(map(float, scene_cut))
        if not (isinstance(warmup_frames, int | np.integer) and warmup_frames >= 0):
            raise ValueError(f"warmup_frames must be an int >= 0, got {warmup_frames!r}")
        self.warmup_frames = int(warmup_frames)
        if aperture is not None:
            if not 0 <= aperture[0] < aperture[1] <= 1:
                raise ValueError(
                    f"aperture must be (lo, hi) with 0 <= lo < hi <= 1, got {aperture}"
                )
            if "direction_curves" not in tuning:
                raise ValueError(
                    "aperture needs the units' direction tuning curves (tuning['direction_curves'])"
                )
            self._axis_re, self._axis_im = unit_axes(tuning["direction_curves"])
        self.aperture = None if aperture is None else tuple(map(float, aperture))
        if constraints is not None:
            sigma, lo, hi, prior, local = (*constraints, None)[:5]
            if not (sigma > 0 and 0 <= lo < hi <= 1 and prior > 0 and (local is None or local > 0)):
                raise ValueError(
                    "constraints must be (sigma > 0, lo, hi, prior > 0[, local > 0]) with "
                    f"0 <= lo < hi <= 1, got {constraints}"
                )
        # the constraints need the units' axes, which the aperture step computes
        self.constraints = (
            None if constraints is None or aperture is None else tuple(map(float, constraints))
        )
        self.axis_calibration = (
            None if axis_calibration is None else np.asarray(axis_calibration, np.float64)
        )
        self.coherence_reference = (
            None if coherence_reference is None else np.asarray(coherence_reference, np.float64)
        )
        keep_heap()
        self.threads = threads
        self.model = model
        self.readout = readout
        self.readout_levels = levels
        self.tuning = tuning
        self.mt = mt
        self.pooling = pooling or Pooling(patch=model.patch)
        if mt is not None and mt.n_features % self.pooling.n_scales:
            raise ValueError(
                f"MT read-out has {mt.n_features} feature sets, not a multiple of the "
                f"{self.pooling.n_scales} pooling scales"
            )
        self.levels = mt.n_features // self.pooling.n_scales if mt is not None else levels
        # Per level, the projections of every pooling scale side by side: (N, S * H).
        self._proj = (
            []
            if mt is None
            else [
                np.ascontiguousarray(
                    np.concatenate(
                        list(
                            mt.proj_[lv * self.pooling.n_scales : (lv + 1) * self.pooling.n_scales]
                        ),
                        1,
                    )
                )
                for lv in range(self.levels)
            ]
        )
        self.rms_floor = rms_floor
        n = model.n_units
        if readout.coef_.shape != (levels * n, 3):
            raise ValueError(
                f"read-out has {readout.coef_.shape[0]} features; expected {levels} levels x {n} units"
            )
        if mt is not None and mt.proj_.shape[1] != n:
            raise ValueError(f"MT read-out is for {mt.proj_.shape[1]} units; the model has {n}")
        self._G = model.gram()
        if getattr(model, "whitener_", None) is None:
            raise ValueError(NO_WHITENER)
        self._layouts: dict = {}
        self._placement = _Placement(threads if place_threads else 1)
        self._pool = (
            ThreadPoolExecutor(
                threads - 1,
                thread_name_prefix="v1motion-encode",
                initializer=self._placement.pin_helper,
            )
            if threads > 1
            else None
        )
        # Frames under parallel_from_px are stepped by a one-thread twin sharing the weights.
        self.parallel_from_px = int(parallel_from_px)
        self._serial = None
        if threads > 1:
            self._serial = MotionEngine(
                model, readout, tuning, levels=levels, mt=mt, pooling=self.pooling,
                rms_floor=rms_floor, threads=1, integration_sigma=integration_sigma,
                change_gate=change_gate, coarse=coarse, aperture=aperture, constraints=constraints,
                axis_calibration=axis_calibration, coherence_reference=coherence_reference,
                prime_passes=prime_passes, scene_cut=scene_cut, warmup_frames=warmup_frames,
            )  # fmt: skip
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
            for lv in range(self.levels)
        ]  # fmt: skip

    # ---------------------------------------------------------------- construction
    @classmethod
    def load(cls, path, mt_path=None, **kw) -> MotionEngine:
        """Weights of the ss-RNN (with its linear read-out and tuning) and, optionally, an MT read-out."""
        model = SSRNN.load(path)
        extra = model.extra_
        if "readout_coef" not in extra:
            raise ValueError(f"{Path(path).name} has no read-out: train with `v1motion train`")
        readout = MotionReadout()
        readout.coef_ = extra["readout_coef"].astype(np.float32)
        readout.intercept_ = extra["readout_intercept"].astype(np.float32)
        tuning = json.loads(str(extra["tuning"]))
        levels = int(extra["readout_levels"])
        mt = MTReadout.load(mt_path) if mt_path is not None else None
        if mt is not None and "pooling" in mt.meta_ and "pooling" not in kw:
            kw["pooling"] = Pooling(**mt.meta_["pooling"])
        return cls(model, readout, tuning, levels=levels, mt=mt, **kw)

    @classmethod
    def load_default(cls, mt_path=DEFAULT_MT, **kw) -> MotionEngine:
        """The shipped ss-RNN with its axis calibration and the shipped MT read-out, or the one at
        ``mt_path`` (e.g. a refitted one, to compare)."""
        for path in (DEFAULT_WEIGHTS, Path(mt_path)):
            if not path.exists():
                raise FileNotFoundError(f"{path.name} missing: run `v1motion train`")
        if "axis_calibration" not in kw and DEFAULT_AXIS.exists():
            kw["axis_calibration"], reference = load_axis_calibration(DEFAULT_AXIS)
            kw.setdefault("coherence_reference", reference)
        return cls.load(DEFAULT_WEIGHTS, mt_path=mt_path, **kw)

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
        pooling = kw.get("pooling") or Pooling(patch=model.patch)
        mt = MTReadout.random(levels * pooling.n_scales, n, seed=seed)
        return cls(model, readout, tuning, levels=levels, mt=mt, **kw)

    def __getstate__(self):
        raise TypeError(
            "a MotionEngine holds threads and cannot be pickled or deep-copied: build one in each "
            "process (contract.make_engine(name)); a StreamState pickles"
        )

    # ---------------------------------------------------------------- use
    def new_state(self) -> StreamState:
        return StreamState()

    def warmup(self) -> None:
        """Compile the kernels and touch every code path once (with several threads, on a frame
        small enough for one thread and on one large enough for all)."""
        rng = np.random.default_rng(0)
        shapes = [(96, 128)]
        if self._serial is not None and 96 * 128 < self.parallel_from_px:
            side = int(math.ceil(math.sqrt(self.parallel_from_px)))
            shapes.append((side, side))
        for shape in shapes:
            state = self.new_state()
            for _ in range(2):
                self.step(state, rng.integers(0, 255, shape, dtype=np.uint8))

    @property
    def min_side(self) -> int:
        """Smallest frame side: one patch at the coarsest pyramid level."""
        return self.model.patch * 2 ** (self.levels - 1)

    def step(self, state: StreamState, frame: np.ndarray) -> MotionFrame:
        """Analyse one frame of a stream: encode it with the ss-RNN, then read the motion out.
        With several threads, frames under ``parallel_from_px`` pixels are stepped on one (the same
        results).

        ``frame``: as ``to_grey`` takes it, each side from ``min_side`` (64 px with the shipped
        weights) to ``MAX_SIDE`` (4096) px; it is read at its own size (speeds in its pixels). A
        frame of another size than the last starts the stream anew. Raises ``ValueError`` naming
        what is wrong with a frame, and ``TypeError`` for a ``state`` not from ``new_state``."""
        _check_state(state)
        engine = self._engine_for(frame)
        blas = ONE_BLAS_THREAD if engine.threads > 1 else contextlib.nullcontext()
        with blas, engine._placement.calling_thread():  # the latter a no-op on one thread
            return engine._read_frame(state, engine._encode_frame(state, frame))

    def run(self, state: StreamState, frames: Iterable[np.ndarray]) -> Iterator[MotionFrame]:
        """``step`` on each of ``frames`` in turn, for a stream whose frames are all at hand (a
        video): the same motion frames, in order.

        With ``threads > 1``, the step's work overlaps across frames, one thread each (the one-thread
        twin of this engine): a helper thread encodes frames (``_encode_prepared``: the ss-RNN's
        code) up to ``run_ahead`` (``RUN_AHEAD``) ahead of the one this thread reads (``read``); this
        thread also whitens each frame before handing it to the helper (``_prepare``, which needs no
        state). The latency of a frame is unchanged, so live streams ``step``;
        ``bench/engine_speed.py`` gives the frames/s of both ("run 2 thr").

        The frames are taken from ``frames`` one at a time, in the calling thread, up to
        ``run_ahead`` ahead of the frame yielded. A stream's first frame and the first of a new size
        or of a new scene (``SCENE_CUT``: each restarts the state that the read uses,
        ``StreamState.start``) are encoded on this thread once the frames before them are read. A
        frame ``step`` refuses raises its ``ValueError`` after the frames before it are yielded.
        ``state`` is encoded ahead while a frame is yielded: it is left as ``step`` leaves it once the
        generator is exhausted (closing it early leaves it up to ``run_ahead`` frames on).
        """
        _check_state(state)
        if self._serial is None:
            yield from step_each(self, state, frames)
            return
        engine, ahead_by = self._serial, max(1, int(self.run_ahead))
        it, shape, taking = iter(frames), state.shape, True
        # Per frame taken and not yet read, in order: its encoding's Future, a prepared frame to
        # encode on this thread (``_Here``), or the error to raise when its turn comes.
        queue: collections.deque = collections.deque(maxlen=ahead_by)

        def take(pool) -> None:
            """Take, whiten and queue frames while fewer than ``ahead_by`` wait to be read."""
            nonlocal shape, taking
            while taking and len(queue) < ahead_by and not any(isinstance(q, _Here) for q in queue):
                frame = next(it, _END)
                if frame is _END:
                    taking = False
                    return
                try:
                    prepared = engine._prepare(frame)
                except Exception as exc:  # raised after the frames before it are yielded
                    queue.append(exc)
                    taking = False
                    return
                cut = engine._cut(state, prepared)
                if prepared[0] == shape and not cut:
                    queue.append(pool.submit(engine._encode_prepared, state, prepared))
                else:  # a first frame, a new size or a cut: nothing is taken after it until it is read
                    shape = prepared[0]
                    queue.append(_Here(prepared, cut))
                    return

        # Leaving the block (exhausted, an error, or the generator closed) joins the helper, which
        # writes to `state`, before anything else can touch it.
        with (
            ONE_BLAS_THREAD,
            ThreadPoolExecutor(1, thread_name_prefix="engine-encode-ahead") as pool,
        ):
            try:
                take(pool)
                while queue:
                    item = queue.popleft()
                    if isinstance(item, Exception):
                        raise item
                    if isinstance(item, _Here):  # encoded before any frame after it
                        encoded = engine._encode_prepared(state, item.prepared, item.restart)
                        take(pool)
                    else:  # the helper gets the next frame before this one is read
                        take(pool)
                        encoded = item.result()
                    yield engine._read_frame(state, encoded)
            finally:  # frames not yet encoded are dropped, not encoded for nothing
                for item in queue:
                    if isinstance(item, Future):
                        item.cancel()

    def _engine_for(self, frame) -> MotionEngine:
        """The engine that steps ``frame``: the one-thread twin for frames under
        ``parallel_from_px`` pixels, this one otherwise."""
        if (
            self._serial is not None
            and isinstance(frame, np.ndarray)
            and frame.ndim >= 2
            and frame.shape[0] * frame.shape[1] < self.parallel_from_px
        ):
            return self._serial
        return self

    def _encode_frame(self, state: StreamState, frame: np.ndarray) -> tuple:
        """The first half of ``step``: the frame checked and encoded (``encode``; updates
        ``state.prev`` and ``state.rms``, and starts ``state`` anew for a new frame size or a scene
        cut, ``_cut``). Returns
        what ``_read_frame`` needs: ``(shape, coarse, prev, codes)``."""
        prepared = self._prepare(frame)
        return self._encode_prepared(state, prepared, self._cut(state, prepared))

    def _prepare(self, frame: np.ndarray) -> tuple:
        """What ``_encode_frame`` does without the stream's state: the frame checked, made grey and
        whitened at every pyramid level it needs. Returns ``(shape, coarse, levels, whites, grey,
        cut)``, or ``(shape, coarse, levels, grey, grey, cut)`` for an engine that whitens on several
        threads (``encode`` does it there, in bands); ``cut``: ``cut_features`` or ``None``."""
        grey = to_grey(frame)
        h, w = grey.shape
        if min(h, w) < self.min_side:
            raise ValueError(f"frame {w}x{h} is too small: each side needs >= {self.min_side} px")
        if max(h, w) > MAX_SIDE:
            raise ValueError(f"frame {w}x{h} is too large: each side must be <= {MAX_SIDE} px")
        # The coarse read needs one more level: frames too small for it are read at one scale.
        coarse = self.coarse and min(h, w) >= self.min_side * 2
        n_levels = self.levels + coarse
        cut = None if self.scene_cut is None else cut_features(grey)
        if self._pool is not None:
            return (h, w), coarse, n_levels, grey, grey, cut
        whites, img = [], grey
        for lv in range(n_levels):
            if lv:
                img = cv2.pyrDown(img)
            whites.append(self.model.whitener_.transform(img))
        return (h, w), coarse, n_levels, whites, grey, cut

    def _cut(self, state: StreamState, prepared: tuple) -> bool:
        """Whether the frame ``prepared`` (``_prepare``) starts a new scene (``SCENE_CUT``); keeps its
        ``cut_features`` in ``state`` for the next frame. Called once per frame, in frame order."""
        features = prepared[-1]
        if features is None:
            return False
        before, state.cut_ref = state.cut_ref, features
        return before is not None and is_scene_cut(before, features, self.scene_cut)

    def _encode_prepared(self, state: StreamState, prepared: tuple, restart: bool = False) -> tuple:
        """``_encode_frame`` from ``_prepare``'s result: the part that reads and updates ``state``.
        ``restart``: the frame is a scene cut (``_cut``), and the stream starts anew from it."""
        (h, w), coarse, n_levels, image, grey, _ = prepared
        if restart or state.shape != (h, w):
            state.start((h, w), n_levels, self.levels)
        if self._pool is not None:
            encode = lambda: self.encode(state, image, n_levels)  # noqa: E731
        else:
            encode = lambda: self.encode(state, image[0], n_levels, whites=image)  # noqa: E731
        image_change = self._image_change(state, grey)
        if state.prev[0] is None and self.prime_passes:
            # The stream's first frame: the code settled on it (PRIME_PASSES), and the change
            # gates' code of the frame before the previous one is the pass before the last.
            passes = []
            for _ in range(self.prime_passes):
                encode()
                passes.append(state.prev[:2])
            older = passes[::-1][: self.change_history - 1]
            state.before = tuple(p[0] for p in older)
            state.coarse_before = tuple(p[1] for p in older[:1] if len(p) > 1)
        # encode replaces the previous codes: the finest of each read are kept as they were
        prev = state.prev[:2]
        return (h, w), coarse, prev, encode(), image_change

    def _image_change(self, state: StreamState, grey: np.ndarray) -> tuple:
        """How the image itself changed since the frames before: ``(still, calm)``. ``still``: per
        patch of the finest level, in [0, 1], how still the image is since the frame before
        (``STILL_IMAGE``), flat in the code's patch order; ``calm``: per cell, a factor in [0, 1] on
        its confidence, 0 where its change looks like camera noise (``NOISE_GATE``). Either is
        ``None`` where there is no frame before to compare with, or nothing to weigh it. Keeps
        ``grey`` and the frame before it in ``state`` for the next frames; a frame the same as the
        one before (``SAME_FRAME``) keeps the frame before that, and the cells their ``calm``."""
        prev, older = state.grey, state.grey_before
        state.grey, state.grey_before = grey, prev
        if self.change_gate is None or prev is None or prev.shape != grey.shape:
            state.calm = None
            return None, None
        weigh_still = self.change_history >= 3  # a comparison with older codes to weigh
        calm_too = self.noise_gate is not None and older is not None and older.shape == grey.shape
        if not (weigh_still or calm_too):
            return None, None
        p = self.model.patch
        gh, gw = grey.shape[0] // p, grey.shape[1] // p
        change = np.empty((3, gh, gw), np.float32)
        _image_change(grey, prev, older if calm_too else prev, p, change)
        still = calm = None
        if weigh_still:
            lo, hi = STILL_IMAGE
            still = np.clip((hi - change[0] * 255.0) / (hi - lo), 0.0, 1.0).ravel()
        if calm_too:
            if state.calm is not None and float(change[1].max()) * 255**2 < SAME_FRAME:
                # a repeated frame: the next frame's two-frame change is to span two changes
                state.grey_before = older
                calm = state.calm
            else:
                before = np.maximum.reduce(state.changed) if state.changed else None
                calm, one = self._calm(change[1], change[2], grey.shape, before)
                state.changed = [one, *state.changed][:REST_FRAMES]
        state.calm = calm
        return still, calm

    def _cell_changes(self, s1: np.ndarray, s2: np.ndarray, shape: tuple[int, int]) -> tuple:
        """Per cell of an image of ``shape``, over its ``CHANGE_CELLS`` box, the mean squared change
        of its patches since the frame before (``s1``, per patch, grey in [0, 1]) and since the one
        before that (``s2``): ``(one, two)``, ``(rows, cols)`` each, in grey levels squared (of 255)."""
        f = self.pooling.cell_px // self.model.patch
        ch, cw = self.pooling.grid(shape)

        def per_cell(s):  # the mean over each cell's f x f patches (exact: whole cells), then boxed
            if not ch * cw:
                return np.zeros((ch, cw), np.float32)
            cells = cv2.resize(s[: ch * f, : cw * f], (cw, ch), interpolation=cv2.INTER_AREA)
            if CHANGE_CELLS > 1:
                cells = cv2.blur(cells, (CHANGE_CELLS, CHANGE_CELLS), borderType=cv2.BORDER_REFLECT)
            return cells.reshape(ch, cw) * np.float32(255**2)

        return per_cell(s1), per_cell(s2)

    def _calm(self, s1: np.ndarray, s2: np.ndarray, shape: tuple[int, int], before=None) -> tuple:
        """Per cell of an image of ``shape``, 1 minus how much its change looks like camera noise
        (``NOISE_GATE``), and 0 where its image did not change or appeared at once (``UNCHANGED``),
        from its patches' mean squared change since the frame before (``s1``) and the one before
        that (``s2``), grey in [0, 1]; ``before``: the cells' largest change on the last frames
        (``REST_FRAMES``; ``None`` on a stream's second frame). Returns ``(calm, change)``:
        the factor and the cells' change."""
        one, two = self._cell_changes(s1, s2, shape)
        growth = (two - one) / np.maximum(one, np.float32(1e-6))
        (g_lo, g_hi), (s_lo, s_hi) = self.noise_gate
        noise = np.clip((g_hi - growth) / np.float32(g_hi - g_lo), 0, 1) * np.clip(
            (s_hi - one) / np.float32(s_hi - s_lo), 0, 1
        )
        calm = (1 - noise) * np.clip(one / np.float32(UNCHANGED) - 1, 0, 1)
        if before is not None and before.shape == one.shape:
            calm[(before < UNCHANGED) & (growth < g_lo)] = 0  # appeared at once
        return calm.astype(np.float32, copy=False), one

    def _read_frame(self, state: StreamState, encoded: tuple) -> MotionFrame:
        """The second half of ``step``: the motion read from ``_encode_frame``'s result (updates
        the read's running averages, change gates and frame count in ``state``)."""
        (h, w), coarse, prev, codes, image = encoded
        if state.frames == 0:
            return self._first_frame(state, codes, (h, w))
        if not coarse:
            return self.read(
                state, codes, (h, w), self._fine_gate(state, prev[0], codes[0], (h, w), image)
            )
        fine, c_codes, c_shape = codes[: self.levels], codes[1:], self._level_shape((h, w), 1)
        if self._pool is not None:
            return self._read_on_two_threads(state, prev, fine, c_codes, (h, w), c_shape, image)
        gate = self._fine_gate(state, prev[0], fine[0], (h, w), image)
        c_gate = self._coarse_fold(state, prev[1], c_codes, c_shape)
        return self.read(
            state, fine, (h, w), gate, lambda: self._coarse_decode(state, c_codes, c_shape, c_gate)
        )

    def _first_frame(self, state: StreamState, codes, shape) -> MotionFrame:
        """The first frame of a stream holds no motion: its code only primes the recurrent state.

        Nothing moves on it (every confidence 0), and it is left out of the read-out's running
        averages and of the change gate, which start from the second frame. Read out like the others,
        it showed a third of a still scene moving at 10-30 px/frame, and its trace in the averages
        (over about two frames) made the next two frames read 14x and 1.7x too fast on pans.
        """
        state.frames += 1
        rows, cols = self.pooling.grid(shape)
        zeros = np.zeros((rows, cols), np.float32)
        return MotionFrame(
            zeros, zeros.copy(), zeros.copy(), self.pooling.cell_px,
            np.zeros(N_DIRECTION_BINS, np.float32), np.zeros(len(SPEED_BINS), np.float32), [],
            0.0, 0.0, 0.0, _active_per_patch(codes),
        )  # fmt: skip

    def _fine_gate(self, state: StreamState, prev, level, shape, image=(None, None)):
        """The change gate of the fine read (``None`` without one); updates ``state.change`` and
        ``state.before``. ``image``: how the image itself changed, ``(still, calm)``
        (``_image_change``): per patch how still it is, per cell a factor on the gate."""
        if self.change_gate is None:
            return None
        still, calm = image
        gate, state.change = self._change_gate(
            state.change, prev, level, shape, state.before, still
        )
        state.before = (prev, *state.before)[: self.change_history - 1]
        if calm is not None:
            gate *= calm
        return gate

    def _coarse_fold(self, state: StreamState, prev, c_codes, c_shape):
        """What the coarse read needs every frame: its change gate (returned; updates
        ``state.coarse_change`` and ``state.coarse_before``) and its running averages
        (``state.coarse_acc``); its histograms are not wanted (the frame's come from the fine read)."""
        gate = None
        if self.change_gate is not None:
            gate, state.coarse_change = self._change_gate(
                state.coarse_change, prev, c_codes[0], c_shape, state.coarse_before
            )
            state.coarse_before = (prev,)
        self._fold(state.coarse_acc, c_codes, executor=None)
        return gate

    def _coarse_decode(self, state: StreamState, c_codes, c_shape, c_gate):
        """The coarse read's map and, with ``aperture``, its units' axes: ``(map, axes or None)``."""
        c_map = self._decode(state.coarse_acc, c_codes, c_shape, c_gate, executor=None)
        axes = None
        if self.aperture is not None:
            axes = self._axis_coherence(c_codes[0], c_map[0].shape)
        return c_map, axes

    def _read_on_two_threads(
        self, state: StreamState, prev, fine, c_codes, shape, c_shape, image=(None, None)
    ):
        """``read`` with the coarse read, the work split between this thread and the helper.

        The helper takes, in this order, the last patches of the fine read's fold, the fine read's
        change gate, then the coarse read's gate and fold, the fine read's axes and, if the frame
        before took the coarse read, the coarse read's decoding (a frame seldom needs it right after
        one that did not: on the live synthetic source 0.4 % of frames do, on vtest.avi most); this
        thread takes the first patches of the fold and the fine read's decoding, which it gates once
        both are done, and decodes the coarse read itself if the frame turns out to need it after
        all. Decoding it only when needed keeps the helper's calls into Python from taking turns
        with this thread's while it decodes (``bench/step_profile.py --contention``). The same
        numbers as on one thread."""
        if self.mt is None:
            raise RuntimeError("this engine has no MT read-out: load one with mt_path=")
        hists = self._new_hists()
        pending = self._fold_start(state.acc, fine, hists, self._pool)
        cells = self.pooling.grid(shape)
        eager = state.took_coarse

        def helper():
            c_gate = self._coarse_fold(state, prev[1], c_codes, c_shape)
            axes = self._axis_coherence(fine[0], cells) if self.aperture is not None else None
            coarse = self._coarse_decode(state, c_codes, c_shape, c_gate) if eager else None
            return c_gate, axes, coarse

        # FIFO on the one helper: its share of the fold, the gate, then the coarse read.
        gate_job = self._pool.submit(self._fine_gate, state, prev[0], fine[0], shape, image)
        job = self._pool.submit(helper)
        try:
            self._fold_finish(pending)
            direction, speed, conf = self._decode(state.acc, fine, shape, None, executor=None)
            gate = gate_job.result()
            if gate is not None:  # as ``_decode`` gates: last
                conf *= gate
        finally:  # the helper writes to `state`: never return (or raise) while it still runs
            wait([gate_job, job, pending[-1]])
        c_gate, axes, coarse = job.result()
        state.took_coarse = False

        def coarse_read():
            state.took_coarse = True
            if coarse is not None:
                return coarse
            return self._coarse_decode(state, c_codes, c_shape, c_gate)

        fine_map = direction, speed, conf
        return self._combine(state, fine, hists, fine_map, coarse_read, lambda: axes)

    @staticmethod
    def _level_shape(shape: tuple[int, int], level: int) -> tuple[int, int]:
        """The image size at pyramid ``level`` (``cv2.pyrDown`` rounds up)."""
        h, w = shape
        for _ in range(level):
            h, w = (h + 1) // 2, (w + 1) // 2
        return h, w

    def _change_gate(self, running, prev, level, shape, before=(), still=None):
        """Per cell of an image of ``shape``, a factor in [0, 1]: how much the code ``level`` =
        ``(code, rows, cols)`` of its finest pyramid level changed around it since ``prev`` (and,
        per patch, no more than since ``before[0]``, the code of the frame before, nor, as far as
        ``still`` says its image is still, since the older codes of ``before``: ``CHANGE_GATE``,
        ``CHANGE_HISTORY``); and the running average of the change per patch that it updates
        (``running``, ``None`` at first)."""
        code, gh, gw = level
        change = np.ones(gh * gw, np.float32)  # the first frame of a stream: no gate yet
        if prev is not None:
            _code_change(*_arrays(prev), *_arrays(code), change)
            usable = [
                old if old is not None and old.idx.shape == code.idx.shape else None
                for old in before
            ]
            again = np.empty_like(change)
            if usable and usable[0] is not None:
                _code_change(*_arrays(usable[0]), *_arrays(code), again)
                np.minimum(change, again, out=change)
            if still is not None and any(old is not None for old in usable[1:]):
                older = np.ones_like(change)  # the older codes, only where the image is still
                for old in filter(None, usable[1:]):
                    _code_change_where(*_arrays(old), *_arrays(code), still, again)
                    np.minimum(older, again, out=older)
                change -= still * np.maximum(change - older, 0.0)
        running = self.pooling.update(running, change.reshape(gh, gw, 1))
        f = self.pooling.cell_px // self.model.patch
        ch, cw = self.pooling.grid(shape)
        per_cell = running[: ch * f, : cw * f, 0].reshape(ch, f, cw, f).mean(axis=(1, 3))
        if CHANGE_CELLS > 1 and per_cell.size:
            per_cell = cv2.blur(
                per_cell, (CHANGE_CELLS, CHANGE_CELLS), borderType=cv2.BORDER_REFLECT
            )
        lo, hi = self.change_gate
        return np.clip((per_cell - lo) / (hi - lo), 0.0, 1.0).astype(np.float32), running

    def encode(
        self, state: StreamState, grey: np.ndarray, levels: int | None = None, whites=None
    ) -> list[tuple[SparseCode, int, int]]:
        """The ss-RNN's sparse code of every pyramid level, ``[(code, rows, cols)]``; updates ``state``.

        Per level: whitening convolution, contrast normalised by a running RMS, non-overlapping
        patches, atom correlations (one GEMM). Then for all levels at once, greedy filtering with each
        patch's recurrent state (one kernel call). The codes of the levels are views of one joint
        code, rows ``[offsets[lv], offsets[lv + 1])``. ``levels``: how many (default: the read-out's;
        ``step`` adds one for the coarse read); ``state.prev`` and ``state.rms`` hold one entry each.
        ``whites``: every level already whitened (``_prepare``), then correlated on this thread;
        ``grey`` only gives the frame's size (``whites[0]`` will do).
        """
        model, p = self.model, self.model.patch
        shapes, offsets, bounds = self._layout(grey.shape, levels or self.levels)
        patches = np.empty((offsets[-1], p * p), np.float32)
        C = np.empty((offsets[-1], model.n_atoms), np.float32)
        if whites is not None:
            self._correlate_levels(state, None, 0, shapes, offsets, patches, C, whites=whites)
        elif self._pool is None:
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
        prev = self._joint_prev(state, offsets)
        if self._pool is not None:  # the chunks interleaved over this thread and the helper
            code = model.infer(
                C, prev, self._G, self._csr, bounds, executor=self._pool, threads=self.threads
            )
        else:
            code = model.infer(C, prev, self._G, self._csr)
        out = []
        for lv, (gh, gw) in enumerate(shapes):
            a, b = offsets[lv], offsets[lv + 1]
            level = SparseCode(code.idx[a:b], code.val[a:b], code.cnt[a:b], code.prior[a:b])
            state.prev[lv] = level
            out.append((level, gh, gw))
        return out

    def _correlate_levels(
        self, state, img, first, shapes, offsets, patches, C, white=None, whites=None
    ) -> None:
        """Levels ``first <= lv < len(shapes)`` (``img`` is level ``first - 1``, or level 0 if
        ``first == 0``): whiten, normalise by the running RMS, cut out the patches into ``patches``
        and correlate them with the atoms into ``C``, at rows ``offsets[lv]:offsets[lv + 1]``.
        ``white``: the first level already whitened; ``whites``: every level (``img`` unused)."""
        model, p = self.model, self.model.patch
        for lv in range(first, len(shapes)):
            if whites is not None:
                white = whites[lv]
            else:
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

    def _layout(self, shape: tuple[int, int], levels: int):
        """Patch grid of every level, their row offsets in the joint code, and the thread chunks."""
        cached = self._layouts.get((shape, levels))
        if cached is not None:
            return cached
        p = self.model.patch
        shapes = []
        for lv in range(levels):
            h, w = self._level_shape(shape, lv)
            shapes.append((h // p, w // p))
        offsets = np.concatenate([[0], np.cumsum([gh * gw for gh, gw in shapes])]).astype(np.int64)
        bounds = None
        if self.threads > 1:
            # Whole patch rows, about the same number of patches per chunk, CHUNKS_PER_THREAD
            # chunks per thread (handed to the threads interleaved: ``interleaved_chunks``).
            starts = [
                off + gw * np.arange(gh) for off, (gh, gw) in zip(offsets, shapes, strict=False)
            ]
            rows = np.concatenate([*starts, [offsets[-1]]])
            want = np.linspace(0, offsets[-1], CHUNKS_PER_THREAD * self.threads + 1)[1:-1]
            cut = rows[np.searchsorted(rows, want)]
            bounds = np.unique(np.concatenate([[0], cut, [offsets[-1]]])).astype(np.int64)
        self._layouts[(shape, levels)] = shapes, offsets, bounds
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

    def read(
        self,
        state: StreamState,
        codes,
        shape: tuple[int, int],
        gate: np.ndarray | None = None,
        coarse=None,
    ) -> MotionFrame:
        """The motion map, histograms and global motion from the codes of one frame.

        Per level, each patch's code is projected onto the MT read-out's inputs (plus its total
        activity); those channels are averaged over time and space (``self.pooling``) and decoded per
        cell; each cell's direction and speed are integrated over its confident neighbours
        (``integrate_cells``); ``gate`` (per cell, from ``step``: the code change) then scales the
        confidence. ``coarse``: the same read one octave coarser, as a callable returning its
        ``(map, axes)`` (``_coarse_decode``; called only for frames that may hold fast motion), which a
        cell takes where it reads fast motion (``FAST_FROM``). Where the units around a cell
        respond to one axis of motion only, the cell keeps only the motion along that axis
        (``APERTURE``, ``along_one_axis``). The frame's dominant motion is the consensus of the cells
        as shown (``global_motion``): a still scene has none.
        """
        if self.mt is None:
            raise RuntimeError("this engine has no MT read-out: load one with mt_path=")
        hists = self._new_hists()
        self._fold(state.acc, codes, hists)
        fine_map = self._decode(state.acc, codes, shape, gate)
        return self._combine(state, codes, hists, fine_map, coarse)

    def _combine(self, state, codes, hists, fine_map, coarse=None, fine_axes=None) -> MotionFrame:
        """The frame's motion from the fine read's map, the coarse read (``read``'s ``coarse``) where
        it reads fast motion, the aperture step and the consensus. ``fine_axes``: a callable giving
        the fine read's ``_axis_coherence`` (computed here if ``None``)."""
        direction, speed, conf = fine_map
        if fine_axes is None:
            fine_axes = lambda: self._axis_coherence(codes[0], direction.shape)  # noqa: E731
        axes = []
        # The coarse read is taken only when the frame may hold fast motion: some moving cell reads
        # at least half of FAST_FROM (at one scale fast motion is read too slow, not slower than that).
        if coarse is not None and np.any((conf > FINE_MOVING) & (speed >= FAST_FROM / 2)):
            c_map, coarse_axes = coarse()
            also = ()
            if self.aperture is not None:  # a cell taken from the coarse read: its axes too
                also = tuple(zip(fine_axes(), coarse_axes, strict=True))
            direction, speed, conf, *axes = self._take_fast((direction, speed, conf), c_map, *also)
        weight = None
        if self.aperture is not None:
            coherence, axis = axes or fine_axes()
            one_axis = coherence_on_axis_scale(coherence, axis, self.coherence_reference)
            direction, speed = along_one_axis(direction, speed, one_axis, axis, *self.aperture)
            if self.constraints is not None:
                direction, speed = pool_constraints(
                    direction, speed, conf, one_axis, axis, *self.constraints
                )
            # The consensus weighs cells by their coherence as read: weighed by coherence divided
            # by the reference, held-out pans at 640x480 read 4.2 degrees off (median), not 4.1.
            weight = (1.0 - coherence) ** GLOBAL_2D_POWER
        state.frames += 1
        dir_hist, speed_hist, unit_act, _ = hists
        settling = warmup_factor(state.frames - 1, self.warmup_frames)  # frames since the start
        if settling < 1.0:  # the same readings, held less certain (WARMUP_FRAMES)
            conf = conf * np.float32(settling)
        # the consensus of the map as shown, as certain as its cells (no more than its 4th most
        # confident one: ``global_motion``), which settle (WARMUP_FRAMES)
        g_dir, g_speed, g_conf = global_motion(direction, speed, conf, weight=weight)
        top = np.argsort(unit_act)[::-1][:10]
        top_units = [(int(u), float(unit_act[u])) for u in top if unit_act[u] > 0]
        return MotionFrame(
            direction.astype(np.float32), speed, conf, self.pooling.cell_px, dir_hist, speed_hist,
            top_units, float(g_dir), float(g_speed), float(g_conf), _active_per_patch(codes),
        )  # fmt: skip

    @staticmethod
    def _take_fast(fine, coarse, *also):
        """Each cell's motion from the fine read, or from the coarse one (its cells twice as large,
        its speeds in px of the half-size image) where that reads fast motion (``FAST_FROM``).
        ``also``: more ``(fine, coarse)`` pairs of per-cell arrays, taken from the same cells and
        returned after the motion."""
        direction, speed, conf = fine
        ch, cw = direction.shape
        # each coarse cell covers 2 x 2 cells; odd sizes repeat the last row or column
        rows = np.minimum(np.arange(ch) // 2, coarse[0].shape[0] - 1)[:, None]
        cols = np.minimum(np.arange(cw) // 2, coarse[0].shape[1] - 1)[None, :]

        def up(a):
            return a[rows, cols]

        c_dir, c_speed, c_conf = (up(a) for a in coarse)
        c_speed = 2 * c_speed
        take = (c_speed >= FAST_FROM) & (c_conf > COARSE_CONFIDENT) & (conf > FINE_MOVING)
        return (
            np.where(take, c_dir, direction).astype(np.float32),
            np.where(take, c_speed, speed).astype(np.float32),
            np.where(take, c_conf, conf).astype(np.float32),
        ) + tuple(np.where(take, up(c), f) for f, c in also)

    def _axis_coherence(self, level, cells):
        """``axis_coherence`` of the units active in ``level`` = ``(code, rows, cols)`` (the read-out's
        finest level), summed over each of the ``cells = (rows, cols)`` and over the neighbourhood of
        ``integrate_cells``."""
        code, _, gw = level
        f = self.pooling.cell_px // self.model.patch
        per_cell = np.empty((*cells, 3), np.float32)
        _axis_cell_sums(code.idx, code.val, code.cnt, self._axis_re, self._axis_im, gw, f, per_cell)
        return axis_coherence(per_cell, self.integration_sigma, self.axis_calibration)

    _DEFAULT = object()

    def _fold(self, accs, codes, hists=None, executor=_DEFAULT) -> None:
        """Fold the codes of the read-out's levels (``codes[0]`` is its finest) into their running
        averages ``accs`` (and into the histograms ``hists``, unless ``None``); with an ``executor``
        (default: the engine's helper thread, if any) the work is split with it."""
        self._fold_finish(
            self._fold_start(
                accs, codes, hists, self._pool if executor is self._DEFAULT else executor
            )
        )

    def _fold_start(self, accs, codes, hists, executor):
        """``_fold``: without an ``executor``, all of it (returns ``None``); with one, hands the
        helper its share and returns what ``_fold_finish`` needs to do this thread's and merge."""
        n_hidden = self.mt.proj_.shape[2]
        n_s = self.pooling.n_scales
        alphas = []
        for lv, (_, gh, gw) in enumerate(codes):
            alpha = 1.0 / self.pooling.tau
            if accs[lv] is None or accs[lv].shape != (n_s, gh * gw, n_hidden + 1):
                accs[lv] = np.empty((n_s, gh * gw, n_hidden + 1), np.float32)
                alpha = 1.0  # the first frame: no average yet
            alphas.append(alpha)
        if executor is None:
            self._project(accs, codes, alphas, [(lv, 0, None) for lv in range(len(codes))], hists)
            return None
        # The helper projects the coarser levels and the last patches of level 0 while this thread
        # projects the first half of all patches: the same numbers per patch, and the histograms are
        # the sum of the two threads' (equal to float32 rounding).
        n0 = codes[0][1] * codes[0][2]
        cut = min(n0, sum(gh * gw for _, gh, gw in codes) // 2)
        theirs = None if hists is None else self._new_hists()
        jobs = [(0, cut, None)] + [(lv, 0, None) for lv in range(1, len(codes))]
        helper = executor.submit(self._project, accs, codes, alphas, jobs, theirs)
        return accs, codes, alphas, cut, hists, theirs, helper

    def _fold_finish(self, pending) -> None:
        if pending is None:
            return
        accs, codes, alphas, cut, hists, theirs, helper = pending
        try:
            self._project(accs, codes, alphas, [(0, 0, cut)], hists)
        finally:  # the helper writes to `accs`: never return (or raise) while it still runs
            wait([helper])
        helper.result()
        if hists is not None:
            for mine, other in zip(hists, theirs, strict=True):
                mine += other

    def _decode(self, accs, codes, shape, gate, executor=_DEFAULT):
        """Direction, speed and confidence per cell of ``shape`` from the running averages of the
        read-out's levels: pooled over space, decoded, integrated over confident neighbours, gated.
        ``executor`` as in ``_fold``."""
        mt = self.mt
        n_s = self.pooling.n_scales
        cells = self.pooling.cells_by_scale(
            [acc.reshape(n_s, gh, gw, -1) for acc, (_, gh, gw) in zip(accs, codes, strict=True)],
            shape,
            executor=self._pool if executor is self._DEFAULT else executor,
        )
        # a cell is confident only where activity backs it (MTReadout.evidence)
        direction, speed, conf = mt.decode_projected(cells)
        direction, speed = integrate_cells(direction, speed, conf, self.integration_sigma)
        if gate is not None:
            conf *= gate
        return direction, speed, conf

    def _new_hists(self):
        """Accumulators of ``_project_frame``: direction and speed histograms, level 0's activity per
        unit, and a scratch for the other levels' activity."""
        n = self.model.n_units
        return (
            np.zeros(N_DIRECTION_BINS, np.float32),
            np.zeros(len(SPEED_BINS), np.float32),
            np.zeros(n, np.float32),
            np.zeros(n, np.float32),
        )

    def _project(self, accs, codes, alphas, jobs, hists) -> None:
        """Fold patches ``m0 <= m < m1`` (``m1=None``: to the end) of level ``lv``, for each
        ``(lv, m0, m1)`` of ``jobs``, into the level's running averages ``accs[lv]`` (and into
        ``hists``, unless ``None``)."""
        histograms = hists is not None
        dir_hist, speed_hist, unit_act, scratch_act = hists if histograms else _NO_HISTS
        for lv, m0, m1 in jobs:
            code = codes[lv][0]
            rows = slice(m0, m1)
            _project_frame(
                code.idx[rows], code.val[rows], code.cnt[rows], self._proj[lv], self._dir_bin,
                self._speed_bin[lv], self._ds_weight, alphas[lv], accs[lv][:, rows],
                dir_hist, speed_hist, unit_act if lv == 0 else scratch_act, histograms,
            )  # fmt: skip

    def tuning_report(self) -> dict:
        """Each unit's measured tuning, as ``GET v1/units`` serves it (without the histogram bins).

        Returns
        -------
        dict
            ``n_units``; ``directions_deg`` (the 16 grating directions) and ``speeds`` (px/frame)
            the curves were measured at; ``units``, one dict per unit: ``id``,
            ``preferred_direction_deg``, ``preferred_speed`` (px/frame), ``di`` (direction index
            1 - r(opposite) / r(preferred)), ``responsive``, ``direction_tuning`` (one value per
            direction) and ``speed_tuning`` (one per speed).
        """
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


def compile_kernels() -> None:
    """Compile every kernel of the shipped engine into Numba's on-disk cache: the one-thread path,
    and the two-thread one when this machine has more than one core (run at install and image
    build, so a server starts in seconds)."""
    MotionEngine.load_default().warmup()
    if numba.config.NUMBA_NUM_THREADS > 1:
        MotionEngine.load_default(threads=2).warmup()
