"""Shared fixtures. Sandbox tests need bubblewrap; where it is missing they are skipped, unless
DARWIN_REQUIRE_SANDBOX=1 (CI sets it) turns that skip into a failure."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from darwin.budgets import get_budget

PROGRAMS = Path(__file__).parent / "programs"


@pytest.fixture(scope="session")
def sandbox():
    from darwin.sandbox import SandboxUnavailable, get_sandbox

    try:
        return get_sandbox("local")
    except SandboxUnavailable as e:
        if os.environ.get("DARWIN_REQUIRE_SANDBOX") == "1":
            pytest.fail(f"isolating sandbox required but unavailable: {e}")
        pytest.skip(f"no isolating sandbox here: {e}")


@pytest.fixture(scope="session")
def tiny():
    return get_budget("tiny")


@pytest.fixture()
def darwin_home(tmp_path, monkeypatch):
    home = tmp_path / "darwin-home"
    monkeypatch.setenv("DARWIN_HOME", str(home))
    return home


@pytest.fixture()
def llm_server():
    """A real HTTP OpenAI-compatible server on 127.0.0.1 with scripted answers."""
    from darwin.devserver import ScriptedLLMServer

    key = f"sk-canary-{os.urandom(8).hex()}"
    with ScriptedLLMServer(api_key=key) as server:
        server.key = key
        yield server


@pytest.fixture()
def llm_settings(llm_server):
    from darwin.settings import LLMSettings

    return LLMSettings(base_url=llm_server.url, api_key=llm_server.key, model="gpt-4o-mini",
                       timeout_s=3.0, max_retries=1)
