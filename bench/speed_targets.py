"""Every speed figure of the real-time targets in one run, each next to its target.

Runs, one after the other (never two at once), the engine against OpenCV's optical flow
(``bench/engine_speed.py``: DIS ultrafast, fast, medium and Farneback on the same frames), the live
service (``bench/service_latency.py``: one stream at 320x240 and 640x480, 50 viewers on one stream; then
640x480 again with the workers polling for frames, ``--busy-poll-ms``), the
video jobs on ``box.mp4`` (``bench/video_jobs.py``: the CLI's job, the service with one job and with two
at once, the CLI command with its start-up) and a cold start of ``v1motion serve`` (seconds from the
command to ``/readyz`` answering 200, the kernels compiled at install). Prints their tables, then one
table of the targets: figure, target, met.

    python bench/speed_targets.py                      # about 6 minutes on 2 cores
    python bench/speed_targets.py --out docs/report/bench_speed_targets.txt

Needs a quiet machine: the figures are timings (ratios to DIS ultrafast are taken within one round).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUSY_POLL_MS = 15.0
"""The server's ``live_busy_poll_ms`` of the second 640x480 run (the default is 0: no polling)."""


def run(script: str, args: list[str], out_json: Path, log: list[str]) -> dict:
    """Run ``bench/<script>`` with ``args`` and ``--json out_json``; echo and keep its output."""
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out_json)]
    shown = "python bench/" + " ".join([script, *args])
    print(f"\n$ {shown}", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"{shown} failed with exit code {proc.returncode}")
    print(proc.stdout, end="", flush=True)
    log += [f"$ {shown}", proc.stdout.rstrip(), ""]
    return json.loads(out_json.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cold_start(tries: int = 3) -> list[float]:
    """Seconds from starting ``v1motion serve`` (a new process) to ``/readyz`` answering 200."""
    out = []
    for _ in range(tries):
        port = free_port()
        env = dict(os.environ, V1MOTION_LOG_LEVEL="warning")
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "v1motion.service.cli", "serve", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT,
        )  # fmt: skip
        try:
            while time.perf_counter() - t0 < 120:
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.05)
            else:
                raise SystemExit("v1motion serve did not answer /readyz within 120 s")
            out.append(time.perf_counter() - t0)
        finally:
            proc.terminate()
            proc.wait(15)
    return out


def targets(engine: dict, live: dict, jobs: dict, cold: list[float]) -> list[tuple]:
    """``(target, figure text, bound text, met)`` for each target of the real-time issue."""
    speed = {r["size"]: r for r in engine["speed"]}
    rows = {r["key"]: r for r in live["rows"]}
    job = {r["row"]: r for r in jobs["rows"] if r["clip"] == "box.mp4" and r["size"] == "640x480"}
    out = []

    def add(what, value, bound, fmt, at_least=True, note=""):
        met = value >= bound if at_least else value <= bound
        sign = "≥" if at_least else "≤"
        out.append((what, fmt.format(value) + note, f"{sign} {fmt.format(bound)}", met))

    s320, s640 = speed["320x240"], speed["640x480"]
    add("engine step, 1 thread, 320x240: ratio to DIS ultrafast", s320["ratio"]["step 1 thr"], 1.0, "{:.2f}x")  # fmt: skip
    add("engine step, 1 thread, 640x480: frames/s (goal 300)", s640["fps"]["step 1 thr"], 150, "{:.0f}")  # fmt: skip
    add("engine step, 2 threads against 1, 640x480", s640["threads"], 1.7, "{:.2f}x")
    if "run_threads" in s640:
        add("engine run of frames, 2 threads (following frames encoded ahead) against 1 thread, 640x480", s640["run_threads"], 1.7, "{:.2f}x")  # fmt: skip
    one640, one320 = rows.get("one-640"), rows.get("one-320")
    if one640:
        add("live 640x480, 30 fps input: analysed frames/s", one640["stream fps"], 29, "{:.1f}")
        add("live 640x480: latency p95 (ms)", one640["p95 ms"], 15, "{:.1f}", at_least=False)
    busy = rows.get("one-640-busy")
    if busy:
        cpu = f" (server CPU {busy.get('server CPU', float('nan')):.2f} cores"
        cpu += f", {one640.get('server CPU', float('nan')):.2f} without)" if one640 else ")"
        add(f"live 640x480 with live_busy_poll_ms {BUSY_POLL_MS:g}: latency p95 (ms)", busy["p95 ms"], 15, "{:.1f}", at_least=False, note=cpu)  # fmt: skip
    if one320:
        add("live 320x240: latency p95 (ms)", one320["p95 ms"], 10, "{:.1f}", at_least=False)
    many = rows.get("50viewers")
    if many and one320:
        add("50 viewers: stream fps against one viewer's", many["stream fps"] / one320["stream fps"], 0.9, "{:.0%}")  # fmt: skip
        add("50 viewers: results each viewer receives (worst viewer)", many["worst %"] / 100, 0.9, "{:.0%}")  # fmt: skip
    svc1 = job.get("service: 1 job, 1 worker process")
    svc2 = job.get("service: 2 jobs at once, 2 workers")
    # jobs add up: against one job on the same pool (the 1-worker service runs one job on 2 threads)
    alone = job.get("service: 1 job, 2 workers")
    cli = job.get("CLI: v1motion motion (with start-up)")
    if svc1:
        add("box.mp4 640x480 with overlay, service: x real time", svc1["x_real_time"], 10, "{:.2f}x")  # fmt: skip
    if cli:
        add("box.mp4 640x480 with overlay, CLI: x real time", cli["x_real_time"], 10, "{:.2f}x")
    if alone and svc2:
        add("two jobs at once against one on the same 2-worker pool: throughput", svc2["frames_per_s"] / alone["frames_per_s"], 1.5, "{:.2f}x")  # fmt: skip
    if cold:
        add(f"cold start: /readyz 200 after (s; worst of {len(cold)})", max(cold), 5.0, "{:.1f}", at_least=False)  # fmt: skip
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--rounds", type=int, default=5, help="engine_speed.py rounds")
    ap.add_argument("--seconds", type=float, default=8.0, help="service_latency.py seconds per scenario")  # fmt: skip
    ap.add_argument("--max-frames", type=int, default=300, help="video_jobs.py frames of box.mp4")
    ap.add_argument("--out", type=Path, default=None, help="write everything printed here too")
    args = ap.parse_args(argv)
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="v1motion-speed-") as tmp:
        tmp = Path(tmp)
        engine = run("engine_speed.py", ["--rounds", str(args.rounds), "--no-accuracy"], tmp / "e.json", log)  # fmt: skip
        live = run("service_latency.py", ["--only", "one-320,one-640,50viewers", "--seconds", f"{args.seconds:g}"], tmp / "l.json", log)  # fmt: skip
        busy = run("service_latency.py", ["--only", "one-640", "--seconds", f"{args.seconds:g}", "--busy-poll-ms", f"{BUSY_POLL_MS:g}"], tmp / "b.json", log)  # fmt: skip
        live["rows"] += [dict(r, key=f"{r['key']}-busy") for r in busy["rows"]]
        jobs = run("video_jobs.py", ["--only-box", "--sides", "native", "--max-frames", str(args.max_frames)], tmp / "j.json", log)  # fmt: skip
    cold = cold_start()
    lines = [f"cold start of `v1motion serve` to /readyz 200: {', '.join(f'{s:.2f}' for s in cold)} s", ""]  # fmt: skip
    lines += ["targets (issue 12), each from the runs above", "| target | figure | target | met |", "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {w} | {f} | {b} | {'yes' if m else '**no**'} |" for w, f, b, m in targets(engine, live, jobs, cold)]  # fmt: skip
    print("\n" + "\n".join(lines))
    if args.out is not None:
        load = " ".join(f"{x:.1f}" for x in os.getloadavg())
        out = args.out.resolve()
        shown = out.relative_to(ROOT).as_posix() if out.is_relative_to(ROOT) else out.name
        cmd = f"python bench/speed_targets.py --rounds {args.rounds} --seconds {args.seconds:g} --max-frames {args.max_frames} --out {shown}"  # fmt: skip
        dis = {r["size"]: r["fps"].get("DIS ultrafast") for r in engine["speed"]}.get("640x480")
        pace = f"; this host runs DIS ultrafast at {dis:.0f} frames/s at 640x480" if dis else ""
        head = f"# {cmd}  ({os.cpu_count()} CPUs; load average at the end {load}{pace})"
        args.out.write_text("\n".join([head, "", *log, *lines]) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
