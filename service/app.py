"""The application factory."""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from service.routers import ops, videos
from service.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; engines and sources are created in the lifespan, never at import time."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.settings = settings
        await videos.start_jobs(app, settings)
        yield
        await videos.stop_jobs(app)

    app = FastAPI(title="v1motion", version="0.1.0", lifespan=lifespan)
    app.include_router(ops.router)
    app.include_router(videos.router)
    return app
