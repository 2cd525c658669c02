"""The client side of docker/deploy_check.sh: video jobs against a deployed service, from outside.

    python docker/deploy_check.py ran-on URL --runner ray --worker-host H --worker-ip IP --not-host H2 H3
    python docker/deploy_check.py stop-mid-job URL --stop-cmd "podman kill worker"

``ran-on`` uploads a short clip, waits for the job, fetches its motion map (``motion.json`` and
``motion.npz``) and checks the record's ``result.ran_on``: the runner, and for Ray that it names the
worker container (its host name and IP) and none of the other containers. ``stop-mid-job`` uploads a
longer clip (4000 frames of 320x240), waits until the job runs and reports progress (frames are being
processed on a worker), runs ``--stop-cmd`` (kills the worker) and checks that the job then ends
``failed`` with a Ray reason, or is retried to success; never still ``running`` after
``--end-timeout`` seconds. The token comes from ``V1MOTION_TOKEN``.
"""

from __future__ import annotations

import argparse
import io
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np


def clip(path: Path, n: int, size=(160, 120)) -> bytes:
    """An MJPG AVI of a textured square moving right by 2 px per frame (10 fps)."""
    import cv2

    w, h = size
    tex = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((h, w, 3), 30, np.uint8)
        x, y = 8 + (2 * i) % (w - 48), (h - 32) // 2
        frame[y : y + 32, x : x + 32] = tex
        writer.write(frame)
    writer.release()
    return path.read_bytes()


def client(url: str) -> httpx.Client:
    token = os.environ.get("V1MOTION_TOKEN", "")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=30.0)


def upload(c: httpx.Client, frames: int, size=(160, 120)) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        data = clip(Path(tmp) / "clip.avi", frames, size)
    res = c.post("/v1/videos", files={"file": ("clip.avi", data, "video/x-msvideo")})
    if res.status_code != 202:
        sys.exit(f"deploy check: upload refused: {res.status_code} {res.text}")
    job = res.json()
    print(f"deploy check: job {job['id']} uploaded ({frames} frames, {len(data)} bytes)")
    return job


def wait_end(c: httpx.Client, job: dict, timeout: float, say_every: float = 10.0) -> dict:
    t0 = time.monotonic()
    last_say = t0
    while job["status"] in ("queued", "running"):
        now = time.monotonic()
        if now - t0 > timeout:
            sys.exit(
                f"deploy check: job {job['id']} still {job['status']} after {timeout:.0f} s: {job}"
            )
        if now - last_say > say_every:
            print(f"deploy check: job {job['id']} {job['status']} {job['progress']}", flush=True)
            last_say = now
        time.sleep(0.5)
        job = c.get(f"/v1/videos/{job['id']}").json()
    return job


def ran_on(args) -> int:
    with client(args.url) as c:
        job = wait_end(c, upload(c, args.frames), args.timeout)
        if job["status"] != "succeeded":
            sys.exit(f"deploy check: the job failed: {job['error']}")
        where = job["result"]["ran_on"]
        print(f"deploy check: job {job['id']} succeeded, ran on {where}")
        motion = c.get(job["links"]["motion.json"])
        npz = c.get(job["links"]["motion.npz"])
        assert motion.status_code == 200 and npz.status_code == 200, (motion.text, npz.text)
        frames = motion.json()["frames"]
        speed = np.load(io.BytesIO(npz.content))["speed_px_per_frame"]
        assert len(frames) == args.frames and speed.shape[0] == args.frames, (
            len(frames),
            speed.shape,
        )
        print(f"deploy check: motion map fetched: {len(frames)} frames, speed array {speed.shape}")
    problems = []
    if where.get("runner") != args.runner:
        problems.append(f"runner is {where.get('runner')!r}, not {args.runner!r}")
    if args.worker_host and where.get("hostname") != args.worker_host:
        problems.append(f"host {where.get('hostname')!r} is not the worker's {args.worker_host!r}")
    if args.worker_ip and where.get("node_ip") != args.worker_ip:
        problems.append(f"node IP {where.get('node_ip')!r} is not the worker's {args.worker_ip!r}")
    if where.get("hostname") in args.not_host:
        problems.append(f"host {where.get('hostname')!r} is the head's or the service's")
    if problems:
        sys.exit("deploy check: the frames did not run where expected: " + "; ".join(problems))
    if args.worker_host:
        print(f"deploy check: the frames ran on the Ray worker container ({args.worker_host})")
    return 0


def stop_mid_job(args) -> int:
    with client(args.url) as c:
        job = upload(c, args.frames, (320, 240))  # about 30 s of work for one worker CPU
        t0 = time.monotonic()
        while not (job["status"] == "running" and job["progress"]["frames_done"] > 0):
            if job["status"] not in ("queued", "running"):
                sys.exit(f"deploy check: the job ended before the worker was stopped: {job}")
            if time.monotonic() - t0 > args.timeout:
                sys.exit(f"deploy check: the job reported no progress in {args.timeout:.0f} s")
            time.sleep(0.2)
            job = c.get(f"/v1/videos/{job['id']}").json()
        print(f"deploy check: job running, {job['progress']['frames_done']} frames done; stopping")
        stopping = time.monotonic()
        subprocess.run(shlex.split(args.stop_cmd), check=True)
        print(f"deploy check: the stop command returned after {time.monotonic() - stopping:.1f} s")
        job = wait_end(c, job, args.end_timeout)
        took = time.monotonic() - stopping
    if job["status"] == "failed" and "Ray" in (job["error"] or ""):
        print(f"deploy check: {took:.1f} s after the stop began the job failed: {job['error']}")
        return 0
    if job["status"] == "succeeded" and job["attempts"] > 1:
        print(f"deploy check: the job was retried and succeeded (attempt {job['attempts']})")
        return 0
    sys.exit(f"deploy check: unexpected end of the job after the stop: {job}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ran-on")
    a.add_argument("url")
    a.add_argument("--runner", choices=("ray", "local"), default="ray")
    a.add_argument("--worker-host", default="", help="the host name that must have run the frames")
    a.add_argument("--worker-ip", default="")
    a.add_argument("--not-host", nargs="*", default=[])
    a.add_argument("--frames", type=int, default=16)
    a.add_argument("--timeout", type=float, default=240.0)
    b = sub.add_parser("stop-mid-job")
    b.add_argument("url")
    b.add_argument("--stop-cmd", required=True)
    b.add_argument("--frames", type=int, default=4000)
    b.add_argument("--timeout", type=float, default=180.0, help="for the job to report progress")
    b.add_argument("--end-timeout", type=float, default=180.0, help="for it to end after the stop")
    args = parser.parse_args(argv)
    return ran_on(args) if args.cmd == "ran-on" else stop_mid_job(args)


if __name__ == "__main__":
    sys.exit(main())
