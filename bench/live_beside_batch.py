"""A live stream while the server does batch work: what a video job or a spike request costs viewers.

Starts ``v1motion serve`` (the default 320x240 synthetic source at 30 fps) in its own process and
watches the stream with one websocket viewer for ``--seconds`` per scenario: alone, then while one
client keeps sending one kind of request, back to back (a sample of 100,000 bins of a 4-neuron
R-GLM, an evaluation of 400,000 bins posted as JSON, a fit of 20,000 bins, a video job on
``box.mp4``, 640x480, with its overlay). The baseline is the same stream alone, in the same server.

    python bench/live_beside_batch.py [--seconds 10] [--engine default|random] [--niceness 10]

Per scenario: results/s the viewer received, the longest gap between two results, latency from
capture to arrival (p50, p95, max; same machine, same clock), and the spike requests done.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import threading
import time

import httpx
import numpy as np
from service_latency import start_server, viewer  # bench/ is this script's own folder

WARMUP_S = 2.0


def request_bodies(model_id: str) -> dict[str, tuple[str, bytes]]:
    """Each kind's request, encoded before the measurement: encoding millions of counts to JSON in
    this process would delay the viewer's own receipts, which this process times."""
    rng = np.random.default_rng(0)
    evaluate = {"counts": rng.poisson(0.3, (4, 100_000, 4)).tolist()}
    fit = {"counts": rng.poisson(0.3, (4, 5_000, 4)).tolist(), "kind": "rglm_correlated"}
    return {
        "sample": (f"/v1/spikes/models/{model_id}/sample", _json({"n_bins": 100_000})),
        "evaluate": (f"/v1/spikes/models/{model_id}/evaluate", _json(evaluate)),
        "fit": ("/v1/spikes/models", _json(fit)),
    }


def _json(body: dict) -> bytes:
    return json.dumps(body).encode()


def spike_load(url: str, path: str, content: bytes, stop: threading.Event, done: list) -> None:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=600) as c:
        while not stop.is_set():
            t = time.monotonic()
            r = c.post(path, content=content, headers=headers)
            r.raise_for_status()
            r.read()
            done.append(time.monotonic() - t)


def video_load(url: str, video: bytes, stop: threading.Event, done: list) -> None:
    """Video jobs one after another, each polled until it ends."""
    with httpx.Client(base_url=url, timeout=600) as c:
        while not stop.is_set():
            t = time.monotonic()
            r = c.post("/v1/videos", files={"file": ("box.mp4", video)})
            r.raise_for_status()
            job = r.json()["links"]["self"]
            while c.get(job).json()["status"] in ("queued", "running"):
                time.sleep(0.1)
            done.append(time.monotonic() - t)


def run(url: str, kind: str | None, bodies: dict, seconds: float) -> dict:
    stop, done = threading.Event(), []
    load = None
    if kind == "video job":
        load = threading.Thread(target=video_load, args=(url, bodies[kind], stop, done))
    elif kind is not None:
        load = threading.Thread(target=spike_load, args=(url, *bodies[kind], stop, done))
    if load is not None:
        load.start()
    seen: list[dict] = []
    asyncio.run(viewer(url, "synthetic", WARMUP_S, seconds, seen))
    stop.set()
    if load is not None:
        load.join()
    t, lat = np.array(seen[0]["arrivals"]), np.array(seen[0]["lat"])
    return {
        "beside": kind or "nothing",
        "results/s": len(t) / seconds,
        "max gap ms": float(np.diff(t).max() * 1000) if len(t) > 1 else float("nan"),
        "p50 ms": float(np.percentile(lat, 50)),
        "p95 ms": float(np.percentile(lat, 95)),
        "max ms": float(lat.max()),
        "requests": len(done),
        "request s": float(np.mean(done)) if done else float("nan"),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--engine", default="default")
    ap.add_argument(
        "--niceness", type=int, default=None, help="the server's V1MOTION_BATCH_NICENESS"
    )
    a = ap.parse_args(argv)
    from v1motion.models.datasets import require_shared_data

    video = require_shared_data("videos", "box.mp4").read_bytes()
    sources = [{"name": "synthetic", "kind": "synthetic", "width": 320, "height": 240, "fps": 30}]
    env = {} if a.niceness is None else {"V1MOTION_BATCH_NICENESS": str(a.niceness)}
    proc, url = start_server(a.engine, sources, env=env)
    try:
        counts = np.random.default_rng(1).poisson(0.3, (3, 200, 4)).tolist()
        r = httpx.post(
            f"{url}/v1/spikes/models",
            json={"counts": counts, "kind": "rglm_correlated"},
            timeout=120,
        )  # also starts the spike worker, before any measurement
        r.raise_for_status()
        bodies = {**request_bodies(r.json()["id"]), "video job": video}
        kinds = (None, "sample", "evaluate", "fit", "video job", None)
        rows = [run(url, k, bodies, a.seconds) for k in kinds]
    finally:
        proc.terminate()
        proc.wait(15)
    cols = list(rows[0])
    nice = "" if a.niceness is None else f" --niceness {a.niceness}"
    print(f"# python bench/live_beside_batch.py --seconds {a.seconds:g}{nice}; 320x240 at 30 fps")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        cells = [f"{v:.1f}" if isinstance(v, float) else str(v) for v in row.values()]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
