"""Recurrent vs feed-forward spatio-temporal filtering: frames/s, memory and flops (issue 7).

Run under the shared lock (it takes a few minutes):

    .venv/bin/python bench/stfilter.py --rnn runs/stfit/rnn.npz

All paths run single-threaded (BLAS and Numba) on the same frames in one process, in float32.
Quality is the relative error of each path's output against the exact feed-forward bank, over the
frames after the first nt. "ff-truncated" is the bank cut to its first k lags, with k the smallest
whose error is no larger than the RNN's: the feed-forward bank at the RNN's output quality (as the
GEMM ring and as the separable path).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from v1motion.models.datasets import shared_data_dir  # noqa: E402
from v1motion.models.stfilter import (  # noqa: E402
    FeedForwardStream,
    RecurrentFilterFit,
    RecurrentStream,
    SeparableStream,
    gabor_bank,
)
from v1motion.models.stfilter.evaluate import load_rnn, load_video, synthetic_video  # noqa: E402


def run_path(stream, video, nt):
    """Feed every frame; returns outputs after nt (float32 copies), seconds per frame after a warm-up."""
    stream.reset()
    outs, times = [], []
    for t, frame in enumerate(video):
        t0 = time.perf_counter()
        y = stream.step(frame)
        times.append(time.perf_counter() - t0)
        if t >= nt:
            outs.append(y.copy())
    warm = min(3, len(times) - 1)
    return np.stack(outs), float(np.median(times[warm:])), float(np.mean(times[warm:]))


def peak_step_bytes(stream, frame):
    """Peak bytes allocated (traced) while a fresh stream takes its first two frames."""
    stream.reset()
    tracemalloc.start()
    stream.step(frame)
    stream.step(frame)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def rel_err(a, b):
    return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--rnn", default=None, help="rnn.npz written by `v1motion stfit` (else fit here)"
    )
    p.add_argument("--n-filters", type=int, default=1600)
    p.add_argument("--nt", type=int, default=30)
    p.add_argument("--density", type=float, default=0.05)
    p.add_argument("--max-iter", type=int, default=100, help="L-BFGS iterations if fitting here")
    p.add_argument("--frames", type=int, default=45)
    p.add_argument("--height", type=int, default=40)
    p.add_argument("--width", type=int, default=40)
    p.add_argument("--video", default="box.mp4", help="clip in the shared videos/ (else synthetic)")
    p.add_argument("--memory-nts", default="10,20,30,60", help="nt values of the memory table")
    args = p.parse_args(argv)

    bank, _ = gabor_bank(args.n_filters, 12, 12, args.nt)
    nt, n, ly, lx = bank.shape
    if args.rnn:
        R, W0, shape = load_rnn(args.rnn)
        if tuple(shape) != bank.shape:
            raise SystemExit(f"{args.rnn} was fitted to a bank {shape}, not {bank.shape}")
        fit_note = f"loaded {args.rnn}"
    else:
        t0 = time.perf_counter()
        model = RecurrentFilterFit(density=args.density, max_iter=args.max_iter).fit(bank)
        R, W0 = model.R_, model.W0_
        fit_note = (
            f"fitted here in {time.perf_counter() - t0:.0f} s, "
            f"VE {model.variance_explained_total_:.4f}"
        )
    density = R.nnz / n**2
    clip = shared_data_dir() / "videos" / args.video
    if clip.exists():
        video = load_video(clip, args.frames, args.height, args.width)
        video_note = f"{args.video} resized to {args.height}x{args.width}"
    else:
        video = synthetic_video(args.frames, args.height, args.width)
        video_note = f"synthetic gratings {args.height}x{args.width} ({clip} missing)"
    locs = (args.height - ly + 1) * (args.width - lx + 1)
    print(
        f"bank: Gabor N={n}, {ly}x{lx}x{nt}; RNN: {R.nnz} non-zeros (density {density:.3f}), {fit_note}"
    )
    print(f"video: {video_note}, {len(video)} frames, {locs} locations/frame; 1 thread\n")

    paths = {
        "rnn": RecurrentStream(R, W0, ly, lx),
        "ff (GEMM ring)": FeedForwardStream(bank),
        "ff separable r=2": SeparableStream(bank, rank=2),
    }
    flops = {
        "rnn": 2 * R.nnz + 2 * n * ly * lx,
        "ff (GEMM ring)": 2 * n * ly * lx * nt,
        "ff separable r=2": 2 * n * 2 * ly * lx + 2 * n * 2 * nt,
    }
    results = {}
    for name, s in paths.items():
        results[name] = run_path(s, video, nt)
    ref = results["ff (GEMM ring)"][0]
    rnn_err = rel_err(results["rnn"][0], ref)

    # the feed-forward bank at the RNN's quality: fewest lags k with error <= the RNN's
    def trunc_err(k):
        out = run_path(FeedForwardStream(bank[:k]), video, nt)
        return rel_err(out[0], ref), out

    lo, hi = 1, nt
    cache = {}
    while lo < hi:
        mid = (lo + hi) // 2
        cache[mid] = trunc_err(mid)
        if cache[mid][0] <= rnn_err:
            hi = mid
        else:
            lo = mid + 1
    k = lo
    if k not in cache:
        cache[k] = trunc_err(k)
    name_k = f"ff truncated k={k}"
    paths[name_k] = FeedForwardStream(bank[:k])
    results[name_k] = cache[k][1]
    flops[name_k] = 2 * n * ly * lx * k
    # and the separable path on the same truncated bank (exact for a Gabor bank at rank 2)
    name_sk = f"ff sep. r=2 k={k}"
    paths[name_sk] = SeparableStream(bank[:k], rank=2)
    results[name_sk] = run_path(paths[name_sk], video, nt)
    flops[name_sk] = 2 * n * 2 * ly * lx + 2 * n * 2 * k

    base = results["rnn"][1]
    print(
        f"{'path':<20} {'err vs bank':>11} {'ms/frame':>9} {'frames/s':>9} {'x rnn time':>10} "
        f"{'kflop/loc':>10} {'flop ratio':>10} {'GFlop/s':>8} {'state MB':>9} {'param MB':>9} {'peak MB':>8}"
    )
    for name, s in paths.items():
        outs, med, _ = results[name]
        err = rel_err(outs, ref)
        peak = peak_step_bytes(s, video[0])
        gflops = flops[name] * locs / med / 1e9
        print(
            f"{name:<20} {err:>11.4f} {1e3 * med:>9.1f} {1 / med:>9.2f} {med / base:>10.2f} "
            f"{flops[name] / 1e3:>10.1f} {flops[name] / flops['rnn']:>10.2f} {gflops:>8.2f} "
            f"{s.state_bytes / 2**20:>9.2f} {s.parameter_bytes / 2**20:>9.2f} {peak / 2**20:>8.2f}"
        )
    print(
        "\nerr vs bank: ||x - x_bank|| / ||x_bank|| over frames >= nt; x rnn time: wall-clock per "
        "frame / the RNN's;\nflop ratio: flops / the RNN's (issue counts); state: bytes kept between "
        "frames; peak: traced allocation over two steps"
    )

    print("\nmemory kept between frames vs filter length nt (same video size, MB):")
    print(f"{'nt':>4} {'rnn':>8} {'ff (GEMM ring)':>15} {'ff separable r=2':>17}")
    frame = video[0]
    # the unrefined least-squares start is enough here (the state's size does not depend on R's
    # values); silence its stability warning, which is about values, not sizes
    logging.getLogger("v1motion.models.stfilter.fit").setLevel(logging.ERROR)
    for nt_m in (int(v) for v in args.memory_nts.split(",")):
        bank_m, _ = gabor_bank(n, ly, lx, nt_m)
        quick = RecurrentFilterFit(density=density, max_iter=0).fit(
            bank_m
        )  # the state's size needs no refinement
        row = []
        for s in (
            RecurrentStream(quick.R_, quick.W0_, ly, lx),
            FeedForwardStream(bank_m),
            SeparableStream(bank_m, rank=2),
        ):
            s.step(frame)
            row.append(s.state_bytes / 2**20)
        print(f"{nt_m:>4} {row[0]:>8.2f} {row[1]:>15.2f} {row[2]:>17.2f}")


if __name__ == "__main__":
    main()
