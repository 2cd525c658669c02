"""The typed dependencies of the routes: one place, over the lifespan's :class:`AppState`.

Routes declare what they need (``settings: SettingsDep``, ``jobs: JobsDep``); tests replace any of these
with ``app.dependency_overrides``. The token guard is applied where the routers are included
(:func:`v1motion.service.app.create_app`), not here.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, status
from starlette.requests import HTTPConnection

from v1motion.service.jobs.manager import VideoJobs
from v1motion.service.jobs.upload import UploadSlots
from v1motion.service.live.engine import EngineHolder
from v1motion.service.live.pipeline import StreamManager
from v1motion.service.metrics import Metrics
from v1motion.service.settings import Settings
from v1motion.service.state import AppState


def get_state(conn: HTTPConnection) -> AppState:
    """The running service's state (HTTP requests and websockets alike)."""
    state = getattr(conn.app.state, "services", None)
    if state is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="the service is starting")
    return state


StateDep = Annotated[AppState, Depends(get_state)]


def get_settings(conn: HTTPConnection) -> Settings:
    """The settings ``create_app`` was given (available before the lifespan has run)."""
    return conn.app.state.settings


def get_metrics(state: StateDep) -> Metrics:
    return state.metrics


def get_engine(state: StateDep) -> EngineHolder:
    return state.engine


def get_streams(state: StateDep) -> StreamManager:
    return state.streams


def get_jobs(state: StateDep) -> VideoJobs:
    return state.videos


def get_upload_slots(state: StateDep) -> UploadSlots:
    return state.upload_slots


def get_scorer(state: StateDep):
    if state.language_scorer is None:
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="language model is not loaded"
        )
    return state.language_scorer


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]
EngineDep = Annotated[EngineHolder, Depends(get_engine)]
StreamsDep = Annotated[StreamManager, Depends(get_streams)]
JobsDep = Annotated[VideoJobs, Depends(get_jobs)]
UploadSlotsDep = Annotated[UploadSlots, Depends(get_upload_slots)]
