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

    # spike-model endpoints (/v1/spikes)
    spikes_max_models: int = Field(
        32, ge=1, description="fitted models kept; the oldest is dropped"
    )
    spikes_max_elements: int = Field(
        3_000_000, ge=1, description="largest counts array accepted (trials x bins x neurons)"
    )
    spikes_max_sample_elements: int = Field(2_000_000, ge=1, description="largest sample returned")
    spikes_fit_workers: int = Field(1, ge=1, le=16, description="threads running fits")
    spikes_max_pending: int = Field(4, ge=1, description="fits running or waiting; more get 429")
