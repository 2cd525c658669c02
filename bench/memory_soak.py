"""Resident memory of the service under a mixed load, with and without the malloc-arena cap.

Starts two ``v1motion serve`` processes at once (same machine, same load, each on its own port and
data folder): one with the service's cap on glibc's malloc arenas (``MALLOC_ARENA_MAX`` unset: the
service sets 2) and one with glibc's default (8 per core, given explicitly, which the service leaves
alone). Each gets the same mixed load for ``--seconds``: 4 stream viewers joining and leaving (a
synthetic stream and a file stream; clean closes and aborts), one browser-camera client sending
JPEG frames, video jobs one at a time (upload, poll, download, delete), spike-model fits (fit,
evaluate, delete) and language requests (score, next). The resident memory of each server process
and the sum of its worker processes' are sampled every 30 s.

    python bench/memory_soak.py [--seconds 1200] [--every 30]

Prints the samples and, per server, the growth in MB an hour fitted over the samples after the
first 4 minutes (warm-up: caches, pools, the first job's and the first fit's worker).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import tempfile
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
from service_latency import start_server  # bench/ is this script's own folder
from websockets.asyncio.client import connect

TOKEN = "memory-soak-token-0123456789"
HEADERS = {"Authorization": f"Bearer {TOKEN}"}
TEXT = [
    "the company said it expects profits to rise",
    "investors were worried about interest rates .",
]


def make_clip(path: Path, n: int = 30) -> list[bytes]:
    """A 320x240 texture panning right at 2 px/frame; its frames as JPEG for the camera client."""
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (240, 400, 3), np.uint8), (5, 5), 0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30, (320, 240))
    jpegs = []
    for t in range(n):
        frame = np.ascontiguousarray(texture[:, 2 * t : 2 * t + 320])
        writer.write(frame)
        jpegs.append(cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])[1].tobytes())
    writer.release()
    return jpegs


def server_env(data: Path, arenas: str | None) -> dict:
    """What ``start_server`` adds to this process's environment for one of the two servers."""
    env = {"V1MOTION_DATA_DIR": str(data), "V1MOTION_TOKEN": TOKEN}
    return env | ({"MALLOC_ARENA_MAX": arenas} if arenas is not None else {})


def rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (the workers are started from several threads)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:  # after "pid (comm)": state, then ppid
            found.append(int(stat.parent.name))
    return found


class Load:
    """The mixed load of one server; ``counts`` of what was done (and failed)."""

    def __init__(self, url: str, clip: Path, jpegs: list[bytes], end: float):
        self.http, self.ws = url, url.replace("http", "ws", 1)
        self.clip, self.jpegs, self.end = clip.read_bytes(), jpegs, end
        self.counts: dict[str, int] = {}
        self.rng = np.random.default_rng(0)  # the spike counts sent

    def bump(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1

    async def repeat(self, once, done: str, failed: str, pause: tuple[float, float]) -> None:
        """``once()`` until the end, counted under ``done`` or ``failed``, a random pause between."""
        while time.time() < self.end:
            try:
                await once()
                self.bump(done)
            except Exception:
                self.bump(failed)
            await asyncio.sleep(random.uniform(*pause))

    async def viewer(self) -> None:
        name = random.choice(["synthetic", "clip"])
        async with connect(
            f"{self.ws}/v1/streams/{name}", additional_headers=HEADERS, max_size=2**22
        ) as ws:
            stop = time.time() + random.uniform(0.5, 6)
            while time.time() < stop:
                await asyncio.wait_for(ws.recv(), 10)
            if random.random() < 0.5:
                ws.transport.abort()  # gone without a close frame

    async def camera(self) -> None:
        async with connect(f"{self.ws}/v1/camera", additional_headers=HEADERS) as ws:
            hello = {"v": 2, "type": "hello", "width": 320, "height": 240}
            await ws.send(json.dumps(hello))
            await asyncio.wait_for(ws.recv(), 10)
            for k in range(random.randint(5, 60)):
                await ws.send(json.dumps({"type": "frame", "seq": k}))
                await ws.send(self.jpegs[k % len(self.jpegs)])
                await asyncio.wait_for(ws.recv(), 10)
                await asyncio.sleep(1 / 15)

    async def job(self, client: httpx.AsyncClient) -> None:
        r = await client.post(
            f"{self.http}/v1/videos", files={"file": ("c.mp4", self.clip, "video/mp4")}
        )
        job = r.json()["id"]
        while (await client.get(f"{self.http}/v1/videos/{job}")).json()["status"] in (
            "queued",
            "running",
        ):
            await asyncio.sleep(1)
        for name in ("motion.json", "motion.npz", "overlay.mp4", "summary.png"):
            await client.get(f"{self.http}/v1/videos/{job}/{name}")
        await client.delete(f"{self.http}/v1/videos/{job}")

    async def spike_fit(self, client: httpx.AsyncClient) -> None:
        rng = self.rng
        kind = random.choice(["independent", "glm", "rglm_correlated", "lds"])
        body = {"counts": rng.poisson(0.3, (6, 200, 4)).tolist(), "kind": kind}
        r = await client.post(f"{self.http}/v1/spikes/models", json=body, timeout=120)
        model = r.json()["id"]
        held_out = {"counts": rng.poisson(0.3, (2, 200, 4)).tolist()}
        await client.post(f"{self.http}/v1/spikes/models/{model}/evaluate", json=held_out)
        await client.delete(f"{self.http}/v1/spikes/models/{model}")

    async def language(self, client: httpx.AsyncClient) -> None:
        text = random.choice(TEXT)
        await client.post(f"{self.http}/v1/language/score", json={"text": text * 3})
        await client.post(f"{self.http}/v1/language/next", json={"context": text, "k": 5})

    async def run(self) -> None:
        async with httpx.AsyncClient(headers=HEADERS, timeout=60) as client:
            await asyncio.gather(
                *(self.repeat(self.viewer, "viewers", "viewer errors", (0.1, 1)) for _ in range(4)),
                self.repeat(self.camera, "camera sessions", "camera errors", (0.5, 3)),
                self.repeat(lambda: self.job(client), "video jobs", "job errors", (2, 6)),
                self.repeat(lambda: self.spike_fit(client), "spike fits", "spike errors", (3, 8)),
                self.repeat(
                    lambda: self.language(client), "language rounds", "language errors", (1, 3)
                ),
            )


async def sample(servers: dict[str, subprocess.Popen], end: float, every: float, out: list):
    t0 = time.time()
    while True:
        row = {"minute": (time.time() - t0) / 60}
        for name, proc in servers.items():
            row[name] = rss_kb(proc.pid) / 1024
            row[name + " workers"] = sum(rss_kb(c) for c in children(proc.pid)) / 1024
        out.append(row)
        print("  ".join(f"{k}: {v:.1f}" for k, v in row.items()), flush=True)
        if time.time() >= end:
            return
        await asyncio.sleep(min(every, max(0.0, end - time.time())))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=1200.0)
    ap.add_argument("--every", type=float, default=30.0, help="seconds between samples")
    args = ap.parse_args()
    os.environ.pop("MALLOC_ARENA_MAX", None)  # the capped server's is the service's own
    glibc_default = str(8 * (os.cpu_count() or 1))
    configs = {"capped at 2": None, f"glibc's {glibc_default}": glibc_default}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = tmp / "pan.mp4"
        jpegs = make_clip(clip)
        sources = ["synthetic", {"name": "clip", "kind": "file", "target": str(clip)}]
        servers, urls = {}, {}
        try:
            for i, (name, arenas) in enumerate(configs.items()):
                (tmp / f"data{i}").mkdir()
                env = server_env(tmp / f"data{i}", arenas)
                servers[name], urls[name] = start_server("default", sources, env=env)
            end = time.time() + args.seconds
            loads = {name: Load(url, clip, jpegs, end) for name, url in urls.items()}
            samples: list[dict] = []

            async def everything():
                await asyncio.gather(
                    sample(servers, end, args.every, samples), *(ld.run() for ld in loads.values())
                )

            asyncio.run(everything())
        finally:
            for proc in servers.values():
                proc.terminate()
            for proc in servers.values():
                proc.wait(30)
    print()
    print(f"{'arenas':<14} {'process':<8} {'MB at 4 min':>12} {'MB at end':>10} {'MB/hour':>8}")
    late = [s for s in samples if s["minute"] >= 4] or samples
    t = np.array([s["minute"] for s in late]) / 60
    for name in configs:
        for part, key in (("server", name), ("workers", name + " workers")):
            mb = np.array([s[key] for s in late])
            slope = np.polyfit(t, mb, 1)[0] if len(t) > 1 else float("nan")
            print(f"{name:<14} {part:<8} {mb[0]:12.1f} {mb[-1]:10.1f} {slope:8.1f}")
    for name in configs:
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in sorted(loads[name].counts.items())))


if __name__ == "__main__":
    main()
