"""Prefect housekeeping the CLI needs before and around a run (Prefect is imported only here,
in flows/ and in tasks/)."""

from __future__ import annotations

import os


def quiet_prefect() -> None:
    """Keep Prefect's console noise down without losing what the UI receives. Must run before
    prefect is imported."""
    for key, value in (
        ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING"),
        ("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),  # the client's telemetry notice would break the progress display
        ("PREFECT_LOGGING_EXTRA_LOGGERS", "darwin"),
        # The embedded server's start-up took over Prefect's default 20 s on a busy 2-core
        # machine (two runs starting at once): the run then died with a traceback.
        ("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180"),
    ):
        os.environ.setdefault(key, value)


def mark_stale_runs_crashed(run_id: str) -> int:
    """Flow runs of a process that died (kill -9) stay Running forever: mark them Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        stale = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[run_tag(run_id)]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING])),
        ))
        for fr in stale:
            client.set_flow_run_state(fr.id, Crashed(message="its process died; resumed"),
                                      force=True)
    return len(stale)


def run_tag(run_id: str) -> str:
    """The tag every flow run of one DARWIN run carries (filter on it in the UI)."""
    return f"darwin-run:{run_id}"
