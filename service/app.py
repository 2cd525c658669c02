"""The application factory."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sqlite3
import threading
from collections.abc import Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, WebSocket
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, JSONResponse
from starlette.websockets import WebSocketDisconnect
from threadpoolctl import threadpool_limits
from uvicorn.protocols.utils import ClientDisconnected

from v1motion.models.motion.contract import Engine, make_engine
from v1motion.service import http_errors
from v1motion.service.disk import answer_disk_full
from v1motion.service.jobs.lock import StoreLock, StoreLocked
from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.jobs.upload import UploadSlots
from v1motion.service.live.engine import EngineHolder
from v1motion.service.live.pipeline import StreamManager, StreamPipeline
from v1motion.service.live.sources import SourceFactory, source_factory
from v1motion.service.metrics import Metrics, RequestMetrics
from v1motion.service.proxy import RootPathTolerance, index_with_base
from v1motion.service.routers import api_docs, camera, language, ops, spikes, streams, videos
from v1motion.service.security import (
    TOKEN_REFUSED,
    AuthDep,
    BodyLimit,
    HostOriginGuard,
    SecurityHeaders,
    StoppedRequests,
    TokenGuard,
    WebSocketRefused,
    answers_handshakes,
    client_left,
    ignore_refused,
)
from v1motion.service.settings import Settings
from v1motion.service.spikes_state import SPIKES_FOLDER, SpikeModelStore, SpikeWorker
from v1motion.service.state import AppState, Capacity, QueuedSlots
from v1motion.service.webfiles import CompressedStaticFiles

log = logging.getLogger(__name__)


def create_app(
    settings: Settings | None = None,
    *,
    engine_factory: Callable[[], Engine] | None = None,
    source_factories: dict[str, SourceFactory] | None = None,
    store_lock: StoreLock | None = None,
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
    store_lock : StoreLock, optional
        The lock of ``settings.data_dir``'s job store, already taken by the caller (``v1motion
        serve`` takes it before it binds its port); the app releases it when it stops. Without it
        the app takes the lock itself when it starts.
    """
    settings = settings or Settings()
    # Built, not warmed: EngineHolder.load warms whatever engine it is given.
    engine_factory = engine_factory or functools.partial(
        make_engine,
        settings.engine,
        threads=settings.engine_threads,
        place_threads=settings.engine_place_threads,
    )
    source_factories = source_factories or {}
    unknown = set(source_factories) - {s.name for s in settings.sources}
    if unknown:
        raise ValueError(f"source_factories for unconfigured streams: {sorted(unknown)}")

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        """Build every stateful object into one AppState; close them in reverse on shutdown."""
        # First, before any thread starts: a data directory another service holds stops us here.
        videos = await run_in_threadpool(VideoJobs.from_settings, settings, store_lock)
        try:  # locks the job store, recovers interrupted jobs; workers warm up lazily
            await run_in_threadpool(videos.start)
        except StoreLocked as exc:  # another service uses this data directory
            videos.store.close()
            log.error("cannot start: %s", exc)
            raise
        try:
            state, blas = await _build_state(videos)
        except BaseException:
            await run_in_threadpool(videos.stop)  # a failed start leaves the data directory free
            raise
        try:
            yield
        finally:
            await run_in_threadpool(videos.stop)  # running jobs go back to the queue
            state.spike_worker.close()
            try:
                await asyncio.wait_for(state.streams.close(), settings.shutdown_timeout_s)
            finally:
                blas.restore_original_limits()

    async def _build_state(videos: VideoJobs) -> tuple[AppState, Any]:
        metrics = Metrics()
        metrics.watch_jobs(videos.store)
        # Before the engine loads: every engine step in this process runs with this many BLAS threads.
        blas = threadpool_limits(settings.blas_threads, user_api="blas")
        holder = EngineHolder()
        # Loading and compiling take seconds: done in a thread, /readyz reports when it is over.
        threading.Thread(
            target=holder.load,
            args=(engine_factory, settings.gc_freeze),
            name="engine-load",
            daemon=True,
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
        manager = StreamManager(pipelines, settings, metrics)
        log.info("serving streams: %s", ", ".join(pipelines))
        state = app.state.services = AppState(
            settings=settings,
            metrics=metrics,
            engine=holder,
            streams=manager,
            cameras=Capacity(settings.camera_max_clients),
            videos=videos,
            upload_slots=UploadSlots(settings.upload_max_concurrent),
            video_probe_slots=asyncio.Semaphore(2),
            language_scorer=language.load_scorer(settings),
            # a 20,000-character text is seconds of CPU: one per core; 45 at once held every thread
            # of the pool, /healthz included, for 40 s and took 700 MB
            language_slots=QueuedSlots(len(os.sched_getaffinity(0)), 16, "language requests"),
            spike_store=SpikeModelStore(
                settings.spikes_max_models, Path(settings.data_dir) / SPIKES_FOLDER
            ),
            spike_worker=SpikeWorker(
                settings.spikes_fit_workers,
                settings.spikes_max_pending,
                settings.blas_threads,
                settings.batch_niceness,
                log=(settings.log_level, settings.log_format),
            ),
        )
        metrics.watch_readiness(state.readiness)
        return state, blas

    app = FastAPI(
        title="v1motion",
        version="0.1.0",
        summary="Live visual motion from a recurrent model of V1",
        description=API_DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # FastAPI's pages load their scripts from a CDN; ours are served: api_docs
        redoc_url=None,
        # operationIds are the routes' names (create_video_job), not FastAPI's name + path + method
        # (create_video_job_v1_videos_post): the methods of a client generated from the schema
        generate_unique_id_function=lambda route: route.name,
    )
    http_errors.install(app)
    app.state.settings = settings  # the configuration, readable before the lifespan has run

    async def close_websockets(code: int, reason: str) -> None:
        """Close every open websocket (v1motion.service.server.Server: 1001 before uvicorn's 1012)."""
        state: AppState | None = getattr(app.state, "services", None)
        if state is not None:
            sockets = list(state.websockets)
            await asyncio.gather(*(streams.close_quietly(ws, code, reason) for ws in sockets))

    def stop_work() -> None:
        """Stop the spike work still running (v1motion.service.server.Server, near the end of the
        grace period): its requests answer 503 rather than being cut off without an answer."""
        state: AppState | None = getattr(app.state, "services", None)
        if state is not None:
            state.spike_worker.close()

    app.state.close_websockets = close_websockets
    app.state.stop_work = stop_work
    # Without a token: only this service's Host names, and no state changes from other sites' pages.
    app.add_middleware(StoppedRequests)  # innermost: what a shutdown cancels, answered in JSON
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(TokenGuard, settings=settings)  # every /v1 request, before its body
    app.add_middleware(HostOriginGuard, settings=settings)  # before any body is read
    app.add_middleware(SecurityHeaders)  # the guard's refusals carry the headers too
    app.add_middleware(RequestMetrics)  # every answer counted and timed, refusals too
    app.add_exception_handler(WebSocketRefused, ignore_refused)
    app.add_exception_handler(WebSocketDisconnect, client_left)
    app.add_exception_handler(ClientDisconnected, client_left)
    app.add_exception_handler(OSError, answer_disk_full)  # 507, where no route says it itself
    app.add_exception_handler(sqlite3.OperationalError, answer_disk_full)
    api = (spikes.router, language.router, streams.router, camera.router, videos.router)
    for router in (ops.router, api_docs.router, *api):
        answer_head_as_get(router)
    app.include_router(ops.router)  # probes are public; /metrics asks for the token itself
    app.include_router(api_docs.router)  # public, like the schema they show
    # Every /v1 router is guarded here, once, so that no route can forget the token.
    for router in api:
        app.include_router(
            router, dependencies=[AuthDep, http_errors.KnownQueryDep], responses=TOKEN_REFUSED
        )

    @app.websocket("/{path:path}")
    async def no_such_socket(ws: WebSocket, path: str) -> None:
        """A websocket to no route got Starlette's bare 403: a 404 that says where sockets are."""
        detail = f"no websocket at /{path}; they are v1/streams/{{name}} and v1/camera"
        if answers_handshakes(ws.scope):
            await ws.send_denial_response(JSONResponse({"detail": detail}, 404))
        else:
            await ws.close(code=1008, reason="no websocket here")

    if settings.web_dir.is_dir():
        if settings.root_path:  # its links resolve under the prefix, whatever address opened it
            page = index_with_base(settings.web_dir, settings.root_path)

            @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
            @app.api_route("/index.html", methods=["GET", "HEAD"], include_in_schema=False)
            async def dashboard() -> HTMLResponse:
                return HTMLResponse(page)

        app.mount("/", CompressedStaticFiles(directory=settings.web_dir, html=True), name="web")
    else:
        log.warning("no dashboard: %s is not a folder", settings.web_dir)
    # Outermost: a proxy that kept its prefix is seen as one that stripped it, by every guard too.
    own = tuple(getattr(r, "path", "") for r in app.routes)
    app.add_middleware(RootPathTolerance, root_path=settings.root_path, own_paths=own)
    return app


# The first thing /docs and /redoc show: what the schema cannot say (units, the token, the sockets).
API_DESCRIPTION = """\
Directions are in **degrees** (0° = right, 90° = up, counter-clockwise) and speeds in **px/frame** of the
frame the engine was given, everywhere: results, video jobs' files, the websocket messages.

**Token.** A server bound beyond localhost (or given `V1MOTION_TOKEN`) needs it on every `/v1` route:
`Authorization: Bearer <token>` (on /docs: "Authorize" above). `/healthz`, `/readyz`, these pages and the schema
are public.

**Live results** come over two websockets, which this schema cannot list: `WS /v1/streams/{name}` (a
source configured on the server; `GET /v1/streams` lists them) and `WS /v1/camera` (the browser's
camera: JPEG frames in, results out), described in the project's `docs/protocol.md`; the dashboard at
`/` uses both. Limits and what each refusal means: `docs/security.md`.
"""


def answer_head_as_get(router: APIRouter) -> None:
    """Every GET route of ``router`` answers HEAD too, with GET's status and headers and no body
    (RFC 9110 §9.3.2): ``curl -I`` on a result file, an uptime check by HEAD on /healthz.
    Starlette's own routes do this and the dashboard's files already did; FastAPI's do not, so each
    GET route without a HEAD gets a twin in its router, before the router is included (so the twin
    gets the router's token check as GET does). The twins stay out of the schema, where they would
    repeat GET. Idempotent: the routers are module-level and apps are made many times in tests."""
    routes = [r for r in router.routes if isinstance(r, APIRoute)]
    has_head = {r.path for r in routes if "HEAD" in r.methods}
    for r in routes:
        if "GET" in r.methods and r.path not in has_head:
            router.add_api_route(
                r.path.removeprefix(router.prefix),  # the router puts its prefix back
                r.endpoint,
                methods=["HEAD"],
                include_in_schema=False,
                dependencies=r.dependencies,
                status_code=r.status_code,
                response_class=r.response_class,
                response_model=r.response_model,
                name=f"{r.name}_head",
            )
