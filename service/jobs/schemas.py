"""Request and response models of the video API (one family: create / public / list)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from v1motion.service.jobs.layout import RESULT_NAMES
from v1motion.service.jobs.store import JobRecord
from v1motion.service.jobs.upload import FILENAME_MAX_CHARS


class JobCreate(BaseModel):
    """What the server records about an accepted upload (the client's file name is only a label)."""

    filename: str = Field(max_length=FILENAME_MAX_CHARS)
    content_type: str
    size_bytes: int = Field(ge=1)


class Progress(BaseModel):
    frames_done: int
    frames_total: int | None = Field(
        description="the container's frame count capped by the limits: an estimate until the end"
    )
    fraction: float | None = Field(
        description="frames_done / frames_total in [0, 1] (not percent); null while the total is "
        "unknown"
    )


class JobPublic(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    filename: str
    content_type: str
    size_bytes: int
    created_at: float = Field(description="when the upload was accepted: Unix time in seconds")
    started_at: float | None = Field(
        description="when the last attempt began: Unix time in seconds; null while queued"
    )
    finished_at: float | None = Field(
        description="when it succeeded or failed: Unix time in seconds; null until then"
    )
    attempts: int
    progress: Progress
    error: str | None = Field(description="why the job failed, for people")
    result: dict | None = Field(description="video facts and timing, once succeeded")
    links: dict[str, str]

    @classmethod
    def from_record(cls, rec: JobRecord, base: str) -> JobPublic:
        """Public view of a record; result links only once it has succeeded."""
        total = rec.frames_total
        fraction = min(1.0, rec.frames_done / total) if total else None
        links = {"self": f"{base}/{rec.id}"}
        if rec.status == "succeeded":
            drawn = (rec.result or {}).get("overlay", True)  # a server that draws no overlays
            names = [n for n in RESULT_NAMES if drawn or n != "overlay.mp4"]
            links.update({name: f"{base}/{rec.id}/{name}" for name in names})
        return cls(
            id=rec.id,
            status=rec.status,
            filename=rec.filename,
            content_type=rec.content_type,
            size_bytes=rec.size_bytes,
            created_at=rec.created_at,
            started_at=rec.started_at,
            finished_at=rec.finished_at,
            attempts=rec.attempts,
            progress=Progress(frames_done=rec.frames_done, frames_total=total, fraction=fraction),
            error=rec.error,
            result=rec.result,
            links=links,
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int = Field(description="all jobs (of the asked states), not only this page")
    next: str | None = Field(
        None, description="the next page's URL (the same filters, after this page's last job)"
    )
