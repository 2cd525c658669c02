"""The application factory."""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from threadpoolctl import threadpool_limits

from models.motion.contract import Engine
from service import http_errors
from service.jobs import engines as jobs_engines
from service.metrics import Metrics
from service.pipeline import EngineHolder, StreamManager, StreamPipeline
from service.routers import camera, language, ops, spikes, streams, videos
from service.security import (
    AuthDep,
    BodyLimit,
    HostOriginGuard,
    WebSocketRefused,
    ignore_refused,
)
from service.settings import Settings
from service.sources import SourceFactory, source_factory

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: Callable[[], Engine] | None = None,
    source_factories: dict[str, SourceFactory] | None = None,
) -> FastAPI:
    """Build the app; engines and sources are created in the lifespan, never at import time.

    Parameters
    ----------
    settings : Settings, optional
        Defaults to ``Settings()`` (the environment).
    engine_factory : callable, optional
        Builds the motion engine; defaults to the one named by ``settings.engine``.
    source_factories : dict, optional
        Replace the source of some configured streams by name (tests and benchmarks).
    """
    settings = settings or Settings()
    engine_factory = engine_factory or jobs_engines.engine_factory(settings.engine)
    source_factories = source_factories or {}
    unknown = set(source_factories) - {s.name for s in settings.sources}
    if unknown:
        raise ValueError(f"source_factories for unconfigured streams: {sorted(unknown)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        app.state.metrics = metrics = Metrics()
        app.state.cache = {}
        app.state.camera_clients = 0
        # Before the engine loads: every engine step in this process runs with this many BLAS threads.
        blas = threadpool_limits(settings.blas_threads, user_api="blas")
        app.state.engine = holder = EngineHolder()
        # Loading and compiling take seconds: done in a thread, /readyz reports when it is over.
        threading.Thread(
            target=holder.load, args=(engine_factory,), name="engine-load", daemon=True
        ).start()
        pipelines = {
            spec.name: StreamPipeline(
                spec,
                source_factories.get(spec.name) or source_factory(spec, settings),
                holder,
                settings,
                metrics,
            )
            for spec in settings.sources
        }
        app.state.streams = manager = StreamManager(pipelines, settings, metrics)
        log.info("serving streams: %s", ", ".join(pipelines))
        app.state.language_scorer = language.load_scorer(settings)
        spikes.setup(app)
        await videos.start_jobs(app, settings)
        try:
            yield
        finally:
            await videos.stop_jobs(app)
            spikes.teardown(app)
            try:
                await asyncio.wait_for(manager.close(), settings.shutdown_timeout_s)
            finally:
                blas.restore_original_limits()

    app = FastAPI(
        title="v1motion",
        version="0.1.0",
        summary="Live visual motion from a recurrent model of V1",
        lifespan=lifespan,
    )
    http_errors.install(app)
    app.state.websockets = weakref.WeakSet()  # accepted sockets (service.security.authorize)

    async def close_websockets(code: int, reason: str) -> None:
        """Close every open websocket (service.server.Server: 1001 before uvicorn's 1012)."""
        await asyncio.gather(
            *(streams.close_quietly(ws, code, reason) for ws in list(app.state.websockets))
        )

    app.state.close_websockets = close_websockets
    # Without a token: only this service's Host names, and no state changes from other sites' pages.
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(HostOriginGuard, settings=settings)  # outermost: before any body is read
    app.add_exception_handler(WebSocketRefused, ignore_refused)
    app.include_router(ops.router)  # probes are public; /metrics asks for the token itself
    # Every /v1 router is guarded here, once, so that no route can forget the token.
    for router in (spikes.router, language.router, streams.router, camera.router, videos.router):
        app.include_router(router, dependencies=[AuthDep])
    if settings.web_dir.is_dir():
        app.mount("/", StaticFiles(directory=settings.web_dir, html=True), name="web")
    else:
        log.warning("no dashboard: %s is not a folder", settings.web_dir)
    return app
