"""Settings from the environment (prefix ``V1MOTION_``), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="V1MOTION_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Field(PROJECT_ROOT / "var", description="job store and results")
    web_dir: Path = Field(PROJECT_ROOT / "web", description="static dashboard files")
    log_level: str = "info"

    # Video jobs (service/routers/videos.py, service/jobs/)
    video_engine: Literal["default", "random"] = Field(
        "default", description="motion engine of the video workers ('random' is for tests)"
    )
    video_workers: int = Field(1, ge=1, le=64, description="video jobs run at the same time")
    video_max_queued: int = Field(32, ge=1, description="uploads are refused while this many wait")
    video_max_upload_mb: float = Field(512.0, gt=0, description="largest accepted upload")
    video_max_frames: int = Field(18_000, ge=1, description="frames decoded per video at most")
    video_max_seconds: float = Field(600.0, gt=0, description="video time decoded at most")
    video_max_side: int = Field(
        640, ge=64, le=3840, description="frames are shrunk to this longer side before the engine"
    )
    video_overlay: bool = Field(True, description="draw overlay.mp4 for each video job")
    video_memory_mb: int = Field(2048, ge=256, description="address-space cap of a decoder process")
    video_deadline_s: float = Field(1800.0, gt=0, description="wall-clock limit of one decode")
    video_max_attempts: int = Field(2, ge=1, description="starts of a job across restarts")
    ray_address: str | None = Field(
        None, description="run video jobs as Ray tasks on this cluster ('auto', 'ray://host:10001')"
    )
