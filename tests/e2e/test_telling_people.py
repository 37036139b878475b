"""Telling people, through the Prefect server: `darwin notify BLOCK` (one command, and every
pause for a review reaches a person through a notification block; here a custom webhook this
test receives), and a deployment's worker without its checkout saying why in the UI."""

from __future__ import annotations

import contextvars
import http.server
import json
import threading
import time

from tests.conftest import cli_env, run_darwin


def test_a_paused_run_notifies_the_block_darwin_notify_named(prefect_server, tmp_path):
    from prefect import flow
    from prefect.blocks.notifications import CustomWebhookNotificationBlock
    from prefect.flow_runs import pause_flow_run, resume_flow_run
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    received: list[dict] = []

    class Hook(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the handler's name
            received.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    hook = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    env = cli_env(tmp_path / "home", prefect=prefect_server)
    try:
        with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"],
                                         PREFECT_LOGGING_TO_API_ENABLED: False}):
            CustomWebhookNotificationBlock(
                name="darwin-test", url=f"http://127.0.0.1:{hook.server_port}/hook",
                json_data={"subject": "{{subject}}", "text": "{{body}}"},
                allow_private_urls=True).save("reviews-test", overwrite=True)
            bad = run_darwin(["notify", "custom-webhook/nothing-here"], env, timeout=120)
            assert bad.returncode == 2 and bad.stderr.startswith(
                "darwin: error: no block 'custom-webhook/nothing-here'"), bad.stderr
            made = run_darwin(["notify", "custom-webhook/reviews-test"], env, timeout=120)
            assert made.returncode == 0, made.stderr
            assert "sends custom-webhook/reviews-test a message" in made.stderr

            ids: list = []

            @flow(name="evolve", flow_run_name="20261205-tiny-ab12")
            def evolve() -> None:
                from prefect.context import FlowRunContext

                ids.append(FlowRunContext.get().flow_run.id)
                pause_flow_run(timeout=120, poll_interval=0.5, key="g1")

            runner = threading.Thread(target=contextvars.copy_context().run, args=(evolve,),
                                      daemon=True)
            runner.start()
            deadline = time.monotonic() + 90
            while not received and time.monotonic() < deadline:
                time.sleep(0.3)
            if ids:
                resume_flow_run(ids[0])
            runner.join(timeout=60)
    finally:
        hook.shutdown()
    assert received, "no notification within 90 s of the pause"
    assert received[0]["subject"] == "DARWIN: run 20261205-tiny-ab12 waits for a review"
    assert "darwin review 20261205-tiny-ab12" in received[0]["text"]


def test_a_worker_without_its_checkout_fails_the_flow_run_with_the_reason(
        prefect_server, tmp_path, monkeypatch):
    """deployments/prefect.yaml's first pull step, as the flow run's process runs it: the UI
    shows why (the state message and the log), and the worker's later "Crashed (exit code 1)"
    does not replace it."""
    import pytest
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.states import Crashed, Pending

    from darwin.flows.admin import check_checkout
    from tests.e2e.test_deployments import ROOT

    assert check_checkout(str(ROOT)) == {"directory": str(ROOT)}

    @flow(name="darwin")
    def deployed() -> None:
        pass

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"]}), \
            get_client(sync_client=True) as client:
        run = client.create_flow_run(deployed, state=Pending())
        monkeypatch.setenv("PREFECT__FLOW_RUN_ID", str(run.id))
        with pytest.raises(RuntimeError, match="DARWIN_CHECKOUT is not set"):
            check_checkout("{{ $DARWIN_CHECKOUT }}")  # what an unset variable renders as
        worker = client.set_flow_run_state(run.id, Crashed(
            message="Flow run infrastructure exited with non-zero status code 1."))
        state = client.read_flow_run(run.id).state
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
    assert worker.status.value == "ABORT"
    assert state.type.value == "FAILED" and state.message.startswith(
        "darwin: error: DARWIN_CHECKOUT is not set in the worker's environment; start the "
        "worker with DARWIN_CHECKOUT=/path/to/darwin"), state.message
    assert [log.message for log in logs] == [state.message]
