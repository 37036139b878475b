"""Runtime settings (where things live, which sandbox), from DARWIN_* environment variables.

Experiment settings (budget, population, ...) are command-line flags / flow parameters instead.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARWIN_", env_nested_delimiter="__", extra="ignore")

    home: Path = Field(
        default=Path.home() / ".darwin",
        description="where runs and scratch folders live (never visible inside a sandbox)",
    )
    sandbox: str = Field(default="auto", description="auto | local | unsafe")

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"


def get_settings() -> Settings:
    return Settings()
