"""Operations: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from v1motion.service.deps import MetricsDep, StateDep
from v1motion.service.security import TOKEN_REFUSED, TokenDep

router = APIRouter(tags=["ops"])
log = logging.getLogger(__name__)


# Probes answer on the event loop (async), not from the thread pool that blocking work fills.
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the process answers."""
    return {"status": "ok"}


@router.get(
    "/readyz",
    responses={503: {"description": "engine still loading or failed, or the data folder unusable"}},
)
async def readyz(state: StateDep):
    """Readiness: the motion engine is loaded and its kernels are compiled, and the data folder
    still holds the job store the service opened (not deleted, replaced or read-only: a server
    that went on from a deleted store accepted uploads it lost at the next start)."""
    status, why = state.readiness()
    _log_change(state, why if status == "failed" else None)
    if status == "ready":
        return {"status": "ready"}
    return JSONResponse({"status": status, "detail": why}, status_code=503)


def _log_change(state, problem: str | None) -> None:
    """Log a readiness failure when it begins or changes, and its end: the orchestrator drops a
    failed replica on the 503 alone, and the log said nothing (an idle replica, nothing at all)."""
    if problem == state.not_ready_because:
        return
    if problem is not None:
        log.warning("not ready: %s", problem)
    else:
        log.info("readiness no longer fails (it was: %s)", state.not_ready_because)
    state.not_ready_because = problem


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "the metrics in Prometheus's text exposition format "
            f"({CONTENT_TYPE_LATEST})",
            "content": {"text/plain": {"schema": {"type": "string"}}},
        },
        **TOKEN_REFUSED,
    },
)
def metrics(metrics: MetricsDep, _: TokenDep) -> Response:
    """Prometheus metrics: frames processed, latency histograms, dropped frames, clients per stream."""
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
