"""What the dashboard is told, against the truth the synthetic source reports.

Subscribes to a running service's ``synthetic`` stream with DIS optical flow on (the peer figure, on
the same frames), skips the first results while the recurrent state and the running averages settle,
and prints per segment of the source's schedule and per kind (gratings: truth = the velocity along
the normal; pans: the full velocity) the median error of the dominant direction (degrees) and of the
dominant speed (relative, px/frame), next to DIS's mean flow vector; then the stream's fps and its
capture-to-result latency p95.

    python bench/live_truth.py http://127.0.0.1:8000 [--seconds 30] [--skip 30] [--token TOKEN]

The fields it reads are those of docs/protocol.md (``motion.global_direction_deg``,
``motion.global_speed_px_per_frame``, ``truth``, ``flow``); ``tests/`` checks them against a result the
service's own code encodes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import NamedTuple

import numpy as np


class Row(NamedTuple):
    """One result: the source's truth, the dominant motion, DIS's mean flow (``None`` without flow)."""

    kind: str
    true_deg: float
    true_speed: float
    deg: float
    speed: float
    flow_deg: float | None
    flow_speed: float | None
    latency_ms: float
    fps: float


def angle_error(a: float, b: float) -> float:
    """Absolute difference of two directions in degrees, in [0, 180]."""
    return abs((a - b + 180.0) % 360.0 - 180.0)


def row_from_message(text: str) -> Row | None:
    """The :class:`Row` of a websocket text message, or ``None`` for anything but a result that
    carries the synthetic source's ``truth``."""
    d = json.loads(text)
    if d.get("type") != "result" or not d.get("truth"):
        return None
    motion, truth, flow = d["motion"], d["truth"], d.get("flow")
    flow_deg = flow_speed = None
    if flow:
        rad = np.radians(np.asarray(flow["direction_deg"], float))
        speed = np.asarray(flow["speed_px_per_frame"], float)
        vx, vy = float((speed * np.cos(rad)).mean()), float((speed * np.sin(rad)).mean())
        flow_deg, flow_speed = (
            float(np.degrees(np.arctan2(vy, vx))) % 360.0,
            float(np.hypot(vx, vy)),
        )
    return Row(
        truth["kind"], float(truth["direction_deg"]), float(truth["speed_px_per_frame"]),
        float(motion["global_direction_deg"]), float(motion["global_speed_px_per_frame"]),
        flow_deg, flow_speed, float(d["timing"]["latency_ms"]), float(d["timing"]["fps"]),
    )  # fmt: skip


def _errors(rows: list[Row]) -> tuple[float, float, float, float]:
    """Median direction error (degrees) and relative speed error, the model's and DIS's."""
    flow = [r for r in rows if r.flow_deg is not None]
    moving = [r for r in rows if r.true_speed > 0]
    nan = float("nan")
    return (
        float(np.median([angle_error(r.deg, r.true_deg) for r in rows])),
        float(np.median([abs(r.speed / r.true_speed - 1) for r in moving])) if moving else nan,
        float(np.median([angle_error(r.flow_deg, r.true_deg) for r in flow])) if flow else nan,
        float(np.median([abs(r.flow_speed / r.true_speed - 1) for r in flow if r.true_speed > 0]))
        if flow and moving
        else nan,
    )


def summarise(rows: list[Row]) -> list[str]:
    """The printed table: one line per segment (kind, direction, speed) in order of appearance,
    one per kind, then fps and latency."""
    out = [
        "| segment | results | direction error (median °) | speed error (median) "
        "| DIS direction error (°) | DIS speed error |",
        "|---|---|---|---|---|---|",
    ]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r.kind, r.true_deg, r.true_speed), []).append(r)
    for kind in ("grating", "pan"):
        of_kind = [r for r in rows if r.kind == kind]
        if of_kind:
            groups[(kind, "all", "")] = of_kind
    for (kind, deg, speed), g in groups.items():
        de, se, fde, fse = _errors(g)
        label = f"{kind} {deg}° {speed} px/frame" if deg != "all" else f"**{kind}, all**"
        out.append(
            f"| {label} | {len(g)} | {de:.1f} | {100 * se:.0f} % | {fde:.1f} | {100 * fse:.0f} % |"
        )
    fps = float(np.median([r.fps for r in rows]))
    p95 = float(np.percentile([r.latency_ms for r in rows], 95))
    out.append(f"fps (median) {fps:.1f}, latency p95 {p95:.1f} ms, {len(rows)} results")
    return out


async def collect(url: str, seconds: float, token: str | None) -> list[Row]:
    from websockets.asyncio.client import connect

    ws_url = url.replace("http", "ws", 1).rstrip("/") + "/v1/streams/synthetic?flow=1"
    sub = ["v1motion.v1", f"v1motion.token.{token}"] if token else None
    rows = []
    async with connect(ws_url, max_size=None, subprotocols=sub) as ws:
        t0 = time.monotonic()
        while time.monotonic() - t0 < seconds:
            msg = await asyncio.wait_for(ws.recv(), 15)
            if isinstance(msg, str) and (row := row_from_message(msg)) is not None:
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("url", help="the running service, e.g. http://127.0.0.1:8000")
    ap.add_argument("--seconds", type=float, default=30.0, help="how long to listen (default: 30)")
    ap.add_argument("--skip", type=int, default=30, help="first results left out (default: 30)")
    ap.add_argument("--token", help="the service's token, if it has one (default: none)")
    a = ap.parse_args()
    rows = asyncio.run(collect(a.url, a.seconds, a.token))[a.skip :]
    if not rows:
        print("no results with a truth field: is the stream 'synthetic' configured?")
        return
    print("\n".join(summarise(rows)))


if __name__ == "__main__":
    main()
