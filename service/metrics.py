"""Prometheus metrics, one registry per app (so several apps in one process do not collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

_LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)


class _Connections:
    """The server's connection bounds (``v1motion.service.server.STATS``), read at each scrape."""

    def collect(self):
        from v1motion.service.server import STATS

        yield GaugeMetricFamily(
            "v1motion_http_connections_open",
            "Connections open, websockets included",
            STATS.open_now(),
        )
        for name, doc, value in (
            ("refused", "Connections refused at V1MOTION_MAX_CONNECTIONS (503)", STATS.refused),
            (
                "header_timeouts",
                "Requests whose headers did not arrive in V1MOTION_HEADER_TIMEOUT_S (408)",
                STATS.header_timeouts,
            ),
            ("idle_closed", "New connections closed for sending nothing", STATS.idle_closed),
            (
                "write_timeouts",
                "Connections cut for reading nothing of an answer for V1MOTION_WRITE_TIMEOUT_S",
                STATS.write_timeouts,
            ),
        ):
            yield CounterMetricFamily(f"v1motion_http_connections_{name}", doc, value)


class _VideoJobs:
    """The video job store's counts by status, read at each scrape (an operator watching the queue
    had to page through GET /v1/videos)."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        from v1motion.service.jobs.store import STATUSES

        g = GaugeMetricFamily(
            "v1motion_video_jobs", "Video jobs kept, by status (queued: waiting for a worker)",
            labels=["status"],
        )  # fmt: skip
        for status in STATUSES:
            g.add_metric([status], self.store.count(status))
        yield g


class Metrics:
    """The service's metrics; label ``stream`` is a configured source name or ``camera``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.frames = Counter(
            "v1motion_frames_processed", "Frames run through the engine", ["stream"], registry=r
        )
        self.latency = Histogram(
            "v1motion_capture_to_send_seconds",
            "Time from frame capture to the end of its websocket send",
            ["stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_time = Histogram(
            "v1motion_engine_step_seconds",
            "Time of one engine step",
            ["stream"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.dropped = Counter(
            "v1motion_dropped_frames",
            "Frames or results dropped: 'capture' = newer frame arrived before the engine took it, "
            "'subscriber' = newer result replaced one a slow viewer had not been sent, "
            "'camera' = browser frame replaced before processing or rejected, "
            "'page' = camera frame the browser skipped while its last frame was analysed, "
            "'engine_error' = the engine failed on the frame (an unexpected error, logged)",
            ["stream", "reason"],
            registry=r,
        )
        self.clients = Gauge(
            "v1motion_clients", "Websocket clients connected", ["stream"], registry=r
        )
        self.reconnects = Counter(
            "v1motion_source_reconnects", "Source reconnect attempts", ["stream"], registry=r
        )
        self.stalls = Counter(
            "v1motion_source_stalls", "Stalls detected by frame age", ["stream"], registry=r
        )
        self.slow_clients = Counter(
            "v1motion_slow_clients_disconnected",
            "Viewers disconnected because a send timed out",
            ["stream"],
            registry=r,
        )
        r.register(_Connections())

    def watch_jobs(self, store) -> None:
        """Report ``store``'s jobs by status (``v1motion_video_jobs``)."""
        self.registry.register(_VideoJobs(store))
