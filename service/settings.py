"""Settings from the environment (prefix ``V1MOTION_``), validated at start-up."""

from __future__ import annotations

from pathlib import Path

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
