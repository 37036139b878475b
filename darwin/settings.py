"""Runtime settings (where things live, which sandbox), from DARWIN_* environment variables.

Experiment settings (budget, population, ...) are command-line flags / flow parameters instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, BaseModel, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# USD per million tokens (input, output). Override or extend with DARWIN_LLM__PRICES='{"m": [a, b]}'.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4o": (2.50, 10.00),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o4-mini": (1.10, 4.40),
    "gpt-5": (1.25, 10.00),
    "gpt-5-mini": (0.25, 2.00),
    "gpt-5-nano": (0.05, 0.40),
}


class LLMSettings(BaseModel):
    """The mutating LLM: OpenAI or any OpenAI-compatible server (vLLM, Ollama, llama.cpp)."""

    model: str = Field(default="gpt-4o-mini", description="model name sent to the server")
    base_url: str | None = Field(default=None, description="server URL; else $OPENAI_BASE_URL")
    api_key: SecretStr | None = Field(default=None, description="else $OPENAI_API_KEY")
    timeout_s: float = Field(default=120.0, gt=0, description="per request")
    max_retries: int = Field(
        default=2, ge=0, description="the openai client's retries (the only retry layer)"
    )
    temperature: float = Field(default=0.7, ge=0, le=2)
    max_tokens: int = Field(default=4096, gt=0)
    max_cost_usd: float | None = Field(
        default=None, ge=0, description="stop making calls once this much is spent"
    )
    structured: Literal["auto", "json", "text"] = Field(
        default="auto", description="JSON-schema answers, a text protocol, or JSON with fallback"
    )
    prices: dict[str, tuple[float, float]] = Field(default_factory=lambda: dict(DEFAULT_PRICES))

    def key(self) -> str | None:
        if self.api_key is not None and self.api_key.get_secret_value():
            return self.api_key.get_secret_value()
        return os.environ.get("OPENAI_API_KEY") or None

    def url(self) -> str | None:
        return self.base_url or os.environ.get("OPENAI_BASE_URL") or None

    def price(self) -> tuple[float, float] | None:
        if self.model in self.prices:
            return self.prices[self.model]
        # "gpt-4o-mini-2024-07-18" prices as "gpt-4o-mini": the longest known prefix wins.
        known = sorted((m for m in self.prices if self.model.startswith(m)), key=len)
        return self.prices[known[-1]] if known else None


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DARWIN_", env_nested_delimiter="__",
                                      extra="ignore", populate_by_name=True)

    home: Path = Field(
        default=Path.home() / ".darwin",
        description="where runs and scratch folders live (never visible inside a sandbox)",
    )
    sandbox: str = Field(
        default="auto", description="auto (Docker when a daemon answers, else local) | docker | "
        "local | unsafe")
    docker_image: str = Field(
        default="darwin-sandbox:latest",
        description="the Docker sandbox's image (`darwin sandbox build`; built offline if absent)")
    # DARWIN_STORE is the older name of DARWIN_STORAGE_URL (docs/storage.md); the newer wins.
    storage_url: str = Field(
        default="", validation_alias=AliasChoices("DARWIN_STORAGE_URL", "DARWIN_STORE"),
        description="where runs are stored: a folder or file:// URL, or s3://bucket/prefix "
        "(endpoint from AWS_ENDPOINT_URL); default $DARWIN_HOME/runs")
    slots: int | None = Field(
        default=None, description="children trained at once (default: one per core on CPU, "
        "4 on a GPU, fewer if memory is short)")
    warm: Literal["auto", "on", "off"] = Field(
        default="auto", description="pre-start sandboxes while children wait for a slot: auto "
        "(on a GPU, with a core no slot uses, or at idle priority where it can be raised back), "
        "on, off")
    lost_after_s: float = Field(
        default=90.0, gt=0, description="darwin run --pool: a child whose heartbeat stands "
        "still this long is lost with its worker, and tried once more on any worker")
    pool_start_s: float = Field(
        default=120.0, ge=0, description="darwin run --pool: how much longer than "
        "lost_after_s a child may take to send its first heartbeat (its worker starts a new "
        "process for it)")
    pool_wait_s: float = Field(
        default=120.0, gt=0, description="darwin run --pool: how long a child may wait for a "
        "worker before the run asks whether any worker of the pool is online")
    llm: LLMSettings = Field(default_factory=LLMSettings)

    @model_validator(mode="after")
    def _default_storage(self) -> Settings:
        if not self.storage_url:
            self.storage_url = f"file://{self.home / 'runs'}"
        return self

    @property
    def scratch(self) -> Path:
        return self.home / "scratch"


def get_settings() -> Settings:
    """The DARWIN_* settings, or one line naming the variable that is wrong."""
    try:
        return Settings()
    except ValidationError as e:
        from darwin.errors import UserError

        first = e.errors()[0]
        var = "DARWIN_" + "__".join(str(p).upper() for p in first["loc"])
        raise UserError(f"invalid {var}: {first['msg']}") from None
