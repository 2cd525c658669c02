"""Request and response models of the video API (one family: create / public / list)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class MainDirection(BaseModel):
    direction_deg: float | None = Field(
        description="degrees, 0 = moving right, 90 = up; null for motion in every direction at "
        "once (a zoom, a rotation)"
    )
    share: float = Field(description="fraction (0-1) of the moving cells' confidence in this peak")
    median_speed_px_per_frame: float = Field(description="px/frame of the processed frames")


class JobResult(BaseModel):
    """A succeeded job's facts, as its result.json (docs/video_outputs.md says each field). Typed
    so that generated clients read ``warnings`` and ``main_directions``, which the README tells a
    batch to check; every field may be missing from a job an older server ran, and fields a newer
    one adds pass through."""

    model_config = ConfigDict(extra="allow")

    container: str | None = Field(None, description="as sniffed: mp4, avi, webm, ...")
    codec: str | None = Field(None, description="FourCC as OpenCV's FFmpeg reports it, lower case")
    width: int | None = Field(None, description="px, as players show the file (rotation applied)")
    height: int | None = Field(None, description="px, as players show the file (rotation applied)")
    fps: float | None = Field(None, description="frames per second of the video")
    variable_frame_rate: bool | None = None
    processed_width: int | None = Field(None, description="px of the frames the engine saw")
    processed_height: int | None = Field(None, description="px of the frames the engine saw")
    cell_px: int | None = Field(None, description="side of a motion-map cell, processed px")
    frames: int | None = Field(None, description="frames processed")
    declared_frames: int | None = Field(None, description="frames the container declared")
    stopped_at_cap: bool | None = None
    warnings: list[str] | None = Field(
        None, description="what to know about the decoding (a cut or damaged file); [] otherwise"
    )
    main_directions: list[MainDirection] | None = Field(
        None, description="the peaks of the video's direction histogram, largest share first"
    )
    overlay: bool | None = Field(None, description="whether overlay.mp4 was drawn")
    overlay_codec: Literal["h264", "mp4v"] | None = None
    processing_seconds: float | None = Field(None, description="wall time in seconds")
    processed_frames_per_second: float | None = Field(None, description="frames per second")
    stage_seconds: dict[str, float] | None = Field(None, description="busy seconds per stage")
    ran_on: dict[str, str | int] | None = Field(
        None, description="where it ran, for operators (token holders only where there is a token)"
    )
    units: dict[str, str] | None = Field(None, description="the conventions, in words")


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
    result: JobResult | None = Field(description="video facts and timing, once succeeded")
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
