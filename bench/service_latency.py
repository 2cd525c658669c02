"""End-to-end frames/s and capture-to-websocket latency of the live service.

Starts ``v1motion serve`` in its own process with synthetic sources at 30 fps, connects websocket
viewers from this process, and measures for each result the time from capture (``capture_ts``, the
server's wall clock when the frame was captured) to its arrival here (same machine, same clock).
Scenarios: one stream at 320x240 and at 640x480, two 640x480 streams at once (two engines on two
threads each, the engines' thread placement sharing the same two cores), 8 streams at once, and 50
viewers on one stream.
The baseline is ``engine.step`` alone on the same frames, in this process.

    python bench/service_latency.py [--engine default|random] [--seconds 10] [--only 50viewers,...]
                                    [--busy-poll-ms 15] [--place-threads false]

Prints a table; the goal is latency p95 <= 10 ms at 30 fps input on 320x240. ``rest`` is latency minus
the engine step: the wait for the worker (a frame that arrives while it is busy waits for the current
step to end), encoding, fan-out and sending. ``stream fps``: results the stream published per second
(the span of ``seq`` its viewers saw); ``received``: the share of those each viewer got (mean, and the
worst viewer); ``missed``: the viewers' own count from their last ``status``, summed; ``server
CPU``: the server process's CPU time over the viewers' session, in cores (Linux).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
from websockets.asyncio.client import connect


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(
    engine: str,
    sources: list[dict],
    busy_poll_ms: float = 0.0,
    place_threads: bool = True,
    env: dict | None = None,
) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = dict(
        os.environ,
        **(env or {}),
        V1MOTION_SOURCES=json.dumps(sources),
        V1MOTION_LOG_LEVEL="warning",
        V1MOTION_LIVE_BUSY_POLL_MS=str(busy_poll_ms),
        V1MOTION_ENGINE_PLACE_THREADS=str(place_threads).lower(),
    )
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "v1motion.service.cli",
            "serve",
            "--engine",
            engine,
            "--port",
            str(port),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/readyz", timeout=1)
            if r.status_code == 200:
                return proc, url
            if r.json().get("status") == "failed":
                raise SystemExit(f"engine failed to load: {r.json()['detail']}")
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not become ready")


async def viewer(url: str, stream: str, warmup: float, seconds: float, out: list) -> None:
    lat, seqs, engine_ms, arrivals, missed = [], [], [], [], [None, None]
    async with connect(f"{url.replace('http', 'ws')}/v1/streams/{stream}", max_size=None) as ws:
        t_start = time.monotonic()
        t_end = t_start + warmup + seconds
        while (now := time.monotonic()) < t_end:
            try:
                msg = await asyncio.wait_for(ws.recv(), timeout=max(0.01, t_end - now))
            except TimeoutError:
                break
            if isinstance(msg, bytes):
                continue
            arrived = time.time() * 1000.0
            m = json.loads(msg)
            if m["type"] == "status":
                # counted since joining: keep the first and the last after warm-up
                if time.monotonic() - t_start >= warmup:
                    missed[0] = m.get("missed", m["dropped"]) if missed[0] is None else missed[0]
                    missed[1] = m.get("missed", m["dropped"])
                continue
            if m["type"] != "result" or time.monotonic() - t_start < warmup:
                continue
            lat.append(arrived - m["capture_ts"])
            arrivals.append(time.monotonic())
            seqs.append(m["seq"])
            engine_ms.append(m["timing"]["engine_ms"])
    out.append(
        {
            "stream": stream,
            "lat": lat,
            "seqs": seqs,
            "engine_ms": engine_ms,
            "arrivals": arrivals,
            "seconds": seconds,
            "missed": 0 if missed[0] is None else missed[1] - missed[0],
        }
    )


async def run_viewers(url: str, plan: list[str], warmup: float, seconds: float) -> list[dict]:
    out: list[dict] = []
    await asyncio.gather(*(viewer(url, s, warmup, seconds, out) for s in plan))
    return out


def scenario(
    engine: str,
    name: str,
    w: int,
    h: int,
    n_streams: int,
    n_viewers: int,
    seconds: float,
    busy_poll_ms: float = 0.0,
    place_threads: bool = True,
):
    sources = [
        {"name": f"s{i}", "kind": "synthetic", "width": w, "height": h, "fps": 30}
        for i in range(n_streams)
    ]
    proc, url = start_server(engine, sources, busy_poll_ms, place_threads)
    try:
        plan = [f"s{i % n_streams}" for i in range(max(n_viewers, n_streams))]
        cpu0, t0 = process_cpu_s(proc.pid), time.monotonic()
        results = asyncio.run(run_viewers(url, plan, warmup=3.0, seconds=seconds))
        cpu = (process_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        metrics = httpx.get(f"{url}/metrics", timeout=5).text
    finally:
        proc.terminate()
        proc.wait(15)
    lat = np.concatenate([r["lat"] for r in results])
    fps = np.mean([len(r["seqs"]) / r["seconds"] for r in results])
    spans = {}  # per stream: the results published during the measurement
    for r in results:
        if r["seqs"]:
            lo, hi = spans.get(r["stream"], (r["seqs"][0], r["seqs"][-1]))
            spans[r["stream"]] = (min(lo, r["seqs"][0]), max(hi, r["seqs"][-1]))
    published = {k: hi - lo + 1 for k, (lo, hi) in spans.items()}
    stream_fps = np.mean([n / seconds for n in published.values()]) if published else 0.0
    shares = [len(r["seqs"]) / published[r["stream"]] if r["seqs"] else 0.0 for r in results]
    eng = np.concatenate([r["engine_ms"] for r in results])
    rest = lat - eng  # waiting for the worker, encoding, fan-out, sending
    dropped = sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("v1motion_dropped_frames_total")
    )
    return {
        "scenario": name,
        "size": f"{w}x{h}",
        "streams": n_streams,
        "viewers": len(plan),
        "stream fps": float(stream_fps),
        "fps/viewer": fps,
        "received %": 100 * float(np.mean(shares)),
        "worst %": 100 * float(np.min(shares)),
        "missed": int(sum(r["missed"] for r in results)),
        "p50 ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
        "p95 ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
        "p99 ms": float(np.percentile(lat, 99)) if lat.size else float("nan"),
        "max ms": float(lat.max()) if lat.size else float("nan"),
        "engine p50 ms": float(np.percentile(eng, 50)) if eng.size else float("nan"),
        "engine p95 ms": float(np.percentile(eng, 95)) if eng.size else float("nan"),
        "rest p50 ms": float(np.percentile(rest, 50)) if rest.size else float("nan"),
        "dropped": int(dropped),
        "server CPU": float(cpu),
    }


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) the process has used so far; NaN off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def baseline_step_ms(engine_name: str, w: int, h: int) -> float:
    """``engine.step`` alone on synthetic frames, in this process, with the server's BLAS threads."""
    from threadpoolctl import threadpool_limits

    from v1motion.models.motion.engine import MotionEngine
    from v1motion.service.live.sources import SyntheticSource
    from v1motion.service.settings import Settings, SourceSpec

    threadpool_limits(Settings().blas_threads, user_api="blas")

    engine = MotionEngine.random(seed=0) if engine_name == "random" else MotionEngine.load_default()
    engine.warmup()
    src = SyntheticSource(
        SourceSpec(name="b", kind="synthetic", width=w, height=h, fps=240), threading.Event()
    )
    src.open()
    frames = [src.read() for _ in range(60)]
    state = engine.new_state()
    for f in frames[:10]:
        engine.step(state, f)
    t0 = time.perf_counter()
    for f in frames[10:]:
        engine.step(state, f)
    return (time.perf_counter() - t0) / 50 * 1000


PLAN = {  # key: (scenario, width, height, streams, viewers)
    "one-320": ("one stream", 320, 240, 1, 1),
    "one-640": ("one stream", 640, 480, 1, 1),
    "two-640": ("two streams", 640, 480, 2, 2),
    "four-640": ("four streams", 640, 480, 4, 4),
    "8streams": ("8 streams", 320, 240, 8, 8),
    "50viewers": ("50 viewers", 320, 240, 1, 50),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--engine", choices=["default", "random"], default="default")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument(
        "--only",
        default=",".join(PLAN),
        help=f"comma-separated scenarios to run, in this order (default: all; {', '.join(PLAN)})",
    )
    p.add_argument(
        "--busy-poll-ms",
        type=float,
        default=0.0,
        help="the server's live_busy_poll_ms (default 0: its workers sleep until a frame comes)",
    )
    p.add_argument(
        "--place-threads",
        choices=["true", "false"],
        default="true",
        help="the server's engine_place_threads (default true, the server's default)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here as JSON")
    args = p.parse_args(argv)
    place = args.place_threads == "true"
    keys = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in keys if k not in PLAN]
    if unknown:
        p.error(f"unknown scenario(s) {unknown}; valid: {', '.join(PLAN)}")
    rows = []
    for key in keys:
        name, w, h, n_streams, n_viewers = PLAN[key]
        rows.append(
            scenario(
                args.engine,
                name,
                w,
                h,
                n_streams,
                n_viewers,
                args.seconds,
                args.busy_poll_ms,
                place,
            )
        )
        print(f"  done: {name} {w}x{h}", file=sys.stderr, flush=True)
    sizes = {tuple(map(int, r["size"].split("x"))) for r in rows}
    base = {(w, h): baseline_step_ms(args.engine, w, h) for w, h in sizes}
    print(
        f"\nengine: {args.engine}; input 30 fps per stream; {args.seconds:.0f} s per scenario, "
        f"{os.cpu_count()} CPUs; live_busy_poll_ms {args.busy_poll_ms:g}; "
        f"engine_place_threads {args.place_threads}; load average {os.getloadavg()[0]:.1f} at the end"
    )
    cols = ["scenario", "size", "streams", "viewers", "stream fps", "fps/viewer", "received %",
            "worst %", "missed", "p50 ms", "p95 ms", "p99 ms", "max ms", "engine p50 ms", "engine p95 ms", "rest p50 ms", "dropped",
            "server CPU", "p50 / step"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        w, h = map(int, r["size"].split("x"))
        r["p50 / step"] = r["p50 ms"] / base[(w, h)]
        print("| " + " | ".join(
            f"{r[c]:.1f}" if isinstance(r[c], float) else str(r[c]) for c in cols
        ) + " |")  # fmt: skip
    for (w, h), ms in sorted(base.items()):
        print(f"baseline engine.step alone at {w}x{h}: {ms:.1f} ms/frame")
    if args.json is not None:
        doc = {
            "seconds": args.seconds,
            "rows": [dict(r, key=key) for key, r in zip(keys, rows, strict=True)],
            "baseline_step_ms": {f"{w}x{h}": ms for (w, h), ms in base.items()},
        }
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
