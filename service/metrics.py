"""Prometheus metrics, one registry per app (so several apps in one process do not collide)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from v1motion.service.logs import REQUEST_START

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
    2.5,  # a slow viewer's sends block up to V1MOTION_SEND_TIMEOUT_S (10 s): above 1 s they all
    5.0,  # fell in +Inf
    10.0,
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
    had to page through GET /v1/videos), and the jobs that ended in this process."""

    def __init__(self, store) -> None:
        self.store = store

    def collect(self):
        g = GaugeMetricFamily(
            "v1motion_video_jobs", "Video jobs kept, by status (queued: waiting for a worker)",
            labels=["status"],
        )  # fmt: skip
        for status, n in self.store.counts().items():
            g.add_metric([status], n)
        yield g
        ended = CounterMetricFamily(
            "v1motion_video_jobs_ended",
            "Video jobs that ended in this process, by status (for rates: deleting a job lowers "
            "v1motion_video_jobs, not this)",
            labels=["status"],
        )
        for status, n in self.store.ended.items():
            ended.add_metric([status], n)
        yield ended


class _Readiness:
    """What ``/readyz`` answers, read at each scrape: an alert on a replica that is not ready had
    to probe /readyz itself, and a scrape of /metrics alone could not tell a server still compiling
    from one whose data folder failed."""

    def __init__(self, readiness) -> None:
        self.readiness = readiness

    def collect(self):
        status, _ = self.readiness()
        g = GaugeMetricFamily(
            "v1motion_readiness",
            "1 for what /readyz reports now (ready: it answers 200; starting: the engine loading; "
            "failed: the engine or the data folder), 0 for the others",
            labels=["status"],
        )
        for name in ("ready", "starting", "failed"):
            g.add_metric([name], int(status == name))
        yield g


_REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_label(scope) -> str:
    """The ``route`` label of a request: the path template of the API route that took it
    (``/v1/videos/{job_id}``: one series per route, never per id); ``unrouted`` for a request to
    the API (``/v1``, ``/metrics``) answered before or without a route (the token's 401, a body's
    413, an unknown path); ``web`` for everything else (the dashboard's files, which the router
    serves without marking the request)."""
    path = getattr(scope.get("route"), "path", None)
    if path:
        return path
    asked = scope.get("path", "")
    return "unrouted" if asked.startswith(("/v1/", "/metrics")) or asked == "/v1" else "web"


class RequestMetrics:
    """ASGI middleware: every HTTP answer counted by method, route and status, and timed to the end
    of its body (``v1motion_http_requests_total``, ``v1motion_http_request_seconds``). Without
    them a route answering 500, or slowly, was in no metric."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        services = getattr(getattr(scope.get("app"), "state", None), "services", None)
        if scope["type"] != "http" or services is None:
            await self.app(scope, receive, send)
            return
        status = [500]  # what an error that escaped every handler becomes

        async def send_status(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        REQUEST_START.set(start)
        try:
            await self.app(scope, receive, send_status)
        finally:
            method = scope["method"] if scope["method"] in _METHODS else "other"
            route = route_label(scope)
            services.metrics.requests.labels(method, route, str(status[0])).inc()
            services.metrics.request_time.labels(method, route).observe(time.perf_counter() - start)


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
            "Time from frame capture to the end of its websocket send, once per viewer it is "
            "sent to (the count is sends, not frames)",
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
        self.requests = Counter(
            "v1motion_http_requests",
            "HTTP requests answered, by method, route (the path template; 'unrouted': an API "
            "request answered before or without a route; 'web': the dashboard's files) and status",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_time = Histogram(
            "v1motion_http_request_seconds",
            "Time from a request's arrival to the end of its answer's body",
            ["method", "route"],
            buckets=_REQUEST_BUCKETS,
            registry=r,
        )
        r.register(_Connections())
        # the server's memory, CPU time and open files (process_*), which the default registry has
        # and this app's own one lacked: an operator watching the file limit had nothing to watch
        ProcessCollector(registry=r)

    def watch_readiness(self, readiness) -> None:
        """Report ``readiness()`` (``AppState.readiness``) as ``v1motion_readiness``."""
        self.registry.register(_Readiness(readiness))

    def watch_jobs(self, store) -> None:
        """Report ``store``'s jobs by status (``v1motion_video_jobs``)."""
        self.registry.register(_VideoJobs(store))
