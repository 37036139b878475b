"""The review's resume form in the real Prefect UI (headless Chromium): what is decided (the
requests' words, the members' val losses) is visible in the form's own fields, and
deployments/screenshots.py tells visible from merely present in the DOM (the page above a
long form is there, 0 px high)."""

from __future__ import annotations

import contextvars
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest

from darwin.engine.reviews import default_answer, open_requests
from darwin.memory.records import CandidateRecord, ReviewRecord

ROOT = Path(__file__).resolve().parents[2]
MARKER = "only-on-the-page-above"


def _review() -> ReviewRecord:
    askers = [CandidateRecord(
        id=f"g001-c0{k}", run_id="r", generation=1, code_sha="x", mutator="openai",
        requests=[{"kind": "package", "detail": f"package number {k} would **help** "
                                                 "(see https://example.org)"}])
        for k in range(6)]  # a form longer than the screen, as a real review's often is
    review = ReviewRecord(run_id="r", generation=1, gate=True, population=["g001-c00", "seed"],
                          pinnable=["g001-c00", "seed", "g001-c01"],
                          requests=open_requests(askers, {}, [], 1))
    review.deadline = time.time() + 600
    return review


def test_the_form_shows_what_is_decided_and_the_check_sees_the_hidden_page(
        prefect_server, tmp_path):
    if not shutil.which("chromium") and not os.environ.get("DARWIN_REQUIRE_BROWSER"):
        pytest.skip("no chromium here (CI installs it and sets DARWIN_REQUIRE_BROWSER=1)")
    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    from darwin.flows.review import answer_form, form_input, pause_with_default

    sys.path.insert(0, str(ROOT / "deployments"))
    try:
        import screenshots
    finally:
        sys.path.remove(str(ROOT / "deployments"))
    review = _review()
    page = "\n\n".join([f"# Review after generation 1 ({MARKER})", *["filler line"] * 40])
    ids: list[str] = []

    @flow(name="review-form-ui")
    def paused() -> None:
        ids.append(str(FlowRunContext.get().flow_run.id))
        pause_with_default(answer_form(review, page, {"g001-c00": 2.41, "seed": 2.5,
                                                      "g001-c01": 2.47}),
                           form_input(review, default_answer(review)), timeout=300, poll_s=0.5,
                           key="ui")

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"],
                                     PREFECT_LOGGING_TO_API_ENABLED: False}):
        runner = threading.Thread(target=contextvars.copy_context().run, args=(paused,),
                                  daemon=True)
        runner.start()
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as client:
            deadline = time.monotonic() + 60
            while not (ids and client.read_flow_run(ids[0]).state.is_paused()):
                assert time.monotonic() < deadline, "the flow never paused"
                time.sleep(0.3)
            flow_run = client.read_flow_run(ids[0]).model_dump(mode="json")
            must_show = screenshots.review_must_show(prefect_server["ui"], flow_run)
            assert {"Decisions on the model's requests", "Veto", "Pin", "val loss",
                    "Submit"} <= set(must_show)
            out = tmp_path / "review.png"
            try:
                with pytest.raises(screenshots.ShotFailed) as failed:
                    screenshots.review_page(prefect_server["ui"], ids[0], out,
                                            [*must_show, "package number 5 would **help**",
                                             MARKER])
            finally:
                client.resume_flow_run(ids[0], run_input=form_input(
                    review, default_answer(review)))
    runner.join(timeout=60)
    # Every field, the requests' words (markdown shown as typed) and the val losses are seen;
    # the page above the long form is in the DOM but not on the screen.
    assert str(failed.value).endswith(f"not visible (0 px high, clipped or covered): "
                                      f"['{MARKER}']"), failed.value
    assert (tmp_path / "review.failed.png").stat().st_size > 20_000
