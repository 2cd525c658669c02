"""Settings from the environment (prefix ``V1MOTION_``), validated at start-up."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="V1MOTION_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    data_dir: Path = Field(PROJECT_ROOT / "var", description="job store and results")
    web_dir: Path = Field(PROJECT_ROOT / "web", description="static dashboard files")
    log_level: str = "info"

    lm_weights: Path = Field(
        PROJECT_ROOT / "models" / "weights" / "lm_ptb_rglm.npz",
        description="language-model weights (.npz written by `v1motion lm train`)",
    )
    lm_max_chars: int = Field(20_000, ge=1, description="longest text /v1/language accepts")
    lm_max_k: int = Field(100, ge=1, description="largest k /v1/language/next accepts")

    @field_validator("lm_weights")
    @classmethod
    def _weights_exist(cls, v: Path) -> Path:
        if not v.is_file():
            raise ValueError(f"V1MOTION_LM_WEIGHTS: no language-model weights at {v}")
        return v
