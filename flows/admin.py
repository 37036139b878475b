"""Prefect housekeeping the CLI needs before and around a run (Prefect is imported only here,
in flows/ and in tasks/)."""

from __future__ import annotations

import contextlib
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
    if home := os.environ.get("PREFECT_HOME"):
        # Prefect creates its home without parents: a new nested PREFECT_HOME left the embedded
        # server unable to open its database, and the run timed out waiting for it.
        try:
            os.makedirs(os.path.expanduser(home), exist_ok=True)
        except OSError:
            pass  # Prefect's own message names it


def mark_stale_runs_crashed(run_id: str) -> int:
    """Flow runs of a process that died (kill -9) stay Running (or Paused, until the pause
    expires to Failed) forever: mark them Crashed."""
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
                any_=[StateType.RUNNING, StateType.PENDING, StateType.PAUSED])),
        ))
        stale = [fr for fr in stale if "darwin-child" not in fr.tags]  # they run on workers:
        for fr in stale:  # a resumed run finds them again (tasks/pool.py)
            client.set_flow_run_state(fr.id, Crashed(message="its process died; resumed"),
                                      force=True)
    return len(stale)


def run_tag(run_id: str) -> str:
    """The tag every flow run of one DARWIN run carries (filter on it in the UI)."""
    return f"darwin-run:{run_id}"


@contextlib.contextmanager
def run_context(run_id: str, budget: str, storage_url: str):
    """Prefect's context for one DARWIN run's flows, however it was started (`darwin run`, a
    deployment): the tags the UI filters on, and where its results are kept."""
    from prefect import tags
    from prefect.settings import temporary_settings

    with tags(run_tag(run_id), f"budget:{budget}"), \
            temporary_settings(updates=results_settings(result_storage_block(storage_url))):
        yield


def result_storage_block(storage_url: str) -> str | None:
    """For a store on S3, save (server-side, as Prefect requires) a RemoteFileSystem block that
    puts Prefect's task and flow results next to the run store, and return its slug. The block
    holds only the bucket path and the endpoint: credentials come from the environment of
    whoever reads it, so the UI never shows them. None for a local store (Prefect's default
    local result folder is right there)."""
    import hashlib

    if not storage_url.startswith(("s3://", "s3a://")):
        return None
    from prefect.filesystems import RemoteFileSystem

    basepath = f"{storage_url.rstrip('/')}/prefect-results"
    settings: dict = {}
    if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
        settings["client_kwargs"] = {"endpoint_url": endpoint}
    name = "darwin-results-" + hashlib.sha256(f"{basepath} {settings}".encode()).hexdigest()[:10]
    RemoteFileSystem(basepath=basepath, settings=settings).save(name, overwrite=True)
    return f"remote-file-system/{name}"


def results_settings(block: str | None) -> dict:
    """Prefect settings that persist every result into ``block`` as JSON: a result read back
    from a shared bucket is never unpickled. Caching stays off (NO_CACHE on every task): the
    run store is the only cache."""
    if block is None:
        return {}
    from prefect.settings import (
        PREFECT_RESULTS_DEFAULT_SERIALIZER,
        PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK,
        PREFECT_RESULTS_PERSIST_BY_DEFAULT,
    )

    return {PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK: block, PREFECT_RESULTS_PERSIST_BY_DEFAULT: True,
            PREFECT_RESULTS_DEFAULT_SERIALIZER: "json"}


class _ReportedByTheCli:
    """Drops Prefect's console copies of a DarwinError (its traceback, and the "Finished in
    state Failed(... StorageDown: ...)" lines of each task and flow it passed through): the CLI
    says it once, in one line. The run's log in the UI keeps every record."""

    def filter(self, record) -> bool:
        from darwin.errors import DarwinError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, DarwinError):
            return False
        if record.name.startswith(("prefect.task_runs", "prefect.flow_runs")):
            message = record.getMessage()
            if message.startswith("Finished in state Failed") and any(
                    f"{name}:" in message for name in _darwin_error_names()):
                return False
        return True


def _darwin_error_names() -> set[str]:
    from darwin.errors import DarwinError

    names, todo = set(), [DarwinError]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo += cls.__subclasses__()
    return names


def hide_reported_errors() -> None:
    """Install that filter on Prefect's console handler (it sits on the root logger once
    prefect is imported)."""
    import logging

    import prefect.main  # noqa: F401 - sets up Prefect's logging: its console handler exists
    from prefect.logging.handlers import PrefectConsoleHandler

    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler) and not any(
                isinstance(f, _ReportedByTheCli) for f in handler.filters):
            handler.addFilter(_ReportedByTheCli())


REVIEW_AUTOMATION = "darwin: a review waits"


def notify_on_reviews(block: str) -> str:
    """Create, or replace, the Prefect automation that sends the notification block ``block``
    ("TYPE/NAME": a Slack or Teams webhook, an email, a custom webhook...) a message each time a
    DARWIN run pauses for a review: which run, until when, and the command that answers.
    Returns the automation's id."""
    from prefect.automations import Automation
    from prefect.blocks.abstract import NotificationBlock
    from prefect.blocks.core import Block
    from prefect.events.actions import SendNotification
    from prefect.events.schemas.automations import EventTrigger, Posture

    from darwin.errors import UserError

    if "/" not in block:
        raise UserError(f"invalid block {block!r}: give TYPE/NAME, for example "
                        "slack-webhook/reviews (`prefect block ls` lists them)")
    try:
        found = Block.load(block)
    except (ValueError, KeyError) as e:
        raise UserError(f"no block {block!r} on this Prefect server ({e}): create it in the UI "
                        "(Blocks, +) or in Python, then run this again") from None
    if not isinstance(found, NotificationBlock):
        raise UserError(f"block {block!r} is a {type(found).__name__}, not a notification "
                        "block: give a Slack, Teams, email, webhook... block")
    try:
        Automation.read(name=REVIEW_AUTOMATION).delete()  # one, pointing at the latest block
    except ValueError:
        pass
    made = Automation(
        name=REVIEW_AUTOMATION,
        description="Made by `darwin notify`: tells a person that a DARWIN run waits for them.",
        trigger=EventTrigger(
            posture=Posture.Reactive, expect={"prefect.flow-run.Paused"},
            match={"prefect.resource.id": "prefect.flow-run.*"},
            # The run's own flow (`darwin run`, `darwin serve` and the deployments run it).
            match_related={"prefect.resource.role": "flow", "prefect.resource.name": "evolve"},
            threshold=1),
        actions=[SendNotification(
            block_document_id=found._block_document_id,
            subject="DARWIN: run {{ flow_run.name }} waits for a review",
            body="DARWIN run {{ flow_run.name }} is paused for a review (the model's requests "
                 "or a review gate). Answer in the Prefect UI ({{ flow_run|ui_url }}: Resume) "
                 "or from a shell: darwin review {{ flow_run.name }}. If nobody answers, its "
                 "stated defaults apply when the review times out.")],
    ).create()
    return str(made.id)


def check_checkout(directory: str = "") -> dict:
    """A deployment's first pull step (deployments/prefect.yaml), in the flow run's own process:
    the checkout DARWIN_CHECKOUT names must hold DARWIN. If not, the flow run fails with the
    reason as its state message and in its log, where the UI shows them (a failed pull step
    alone leaves "Crashed: exit code 1", the reason deep in the worker's own log)."""
    from pathlib import Path

    directory = "" if "{{" in directory else directory  # unset: the template stays as written
    if directory and (Path(directory).expanduser() / "flows" / "deployed.py").is_file():
        return {"directory": directory}
    import darwin

    here = Path(darwin.__file__).resolve().parents[1]
    hint = (f" (DARWIN is installed here from {here})"
            if (here / "flows" / "deployed.py").is_file() else "")
    message = ("darwin: error: DARWIN_CHECKOUT " + (f"= {directory} holds no DARWIN checkout"
               if directory else "is not set in the worker's environment")
               + "; start the worker with DARWIN_CHECKOUT=/path/to/darwin" + hint)
    _fail_flow_run(message)
    raise RuntimeError(message)


def _fail_flow_run(message: str) -> None:
    """Say ``message`` on the flow run this process runs (its log, then its Failed state):
    best effort, the raise that follows still fails it."""
    flow_run_id = os.environ.get("PREFECT__FLOW_RUN_ID")
    if not flow_run_id:
        return
    from datetime import datetime, timezone

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import LogCreate
    from prefect.states import Failed

    try:
        with get_client(sync_client=True) as client:
            client.create_logs([LogCreate(name="darwin", level=40, message=message,
                                          timestamp=datetime.now(timezone.utc),
                                          flow_run_id=flow_run_id)])
            # Terminal: the worker's "Crashed (exit code 1)" that follows is refused.
            client.set_flow_run_state(flow_run_id, Failed(message=message), force=True)
    except Exception:  # noqa: BLE001 - the worker's log still has the reason
        pass
