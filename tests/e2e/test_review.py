"""Humans in the loop against a real Prefect server: the pause itself (the server refuses unknown
ids, nobody answering applies the defaults without a Failed state, the terminal answers), and
two tiny runs: the model's requests answered through the API after a crash while paused, and
review gates answered with `darwin review` (veto, pin) or by nobody."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from darwin.memory.records import AskedRequest, ReviewRecord
from darwin.memory.store import RunStore, list_runs
from tests.conftest import DARWIN, cli_env, run_darwin
from tests.e2e.test_engine import _flow_run_states as _history

pytestmark = pytest.mark.sandbox

TINY = ["run", "--budget", "tiny", "--generations", "2", "--population", "2", "--keep", "1",
        "--children", "2", "--seeds", "2", "--reruns", "0", "--repair-tries", "0"]


def _api(prefect_server, method: str, path: str, body: dict | None = None):
    """One API call, retried on 503 as Prefect's own client does (SQLite under load answers
    "database is locked" that way; seen once in CI)."""
    data = json.dumps(body).encode() if body is not None else None
    for attempt in range(5):
        req = urllib.request.Request(f"{prefect_server['url']}{path}", data=data, method=method,
                                     headers={"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.loads(r.read())
        except urllib.error.HTTPError as e:
            if e.code != 503 or attempt == 4:
                raise
            time.sleep(0.5 * 2 ** attempt)


def _resume(prefect_server, flow_run_id: str, run_input: dict) -> str:
    """Answer a paused run as any API client would: one POST; the server's verdict."""
    return _api(prefect_server, "POST", f"/flow_runs/{flow_run_id}/resume",
                {"run_input": run_input})["status"]


def _start(args, env) -> subprocess.Popen:
    return subprocess.Popen([*DARWIN, *args], env=env, text=True, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for_pause(home: Path, proc: subprocess.Popen, unlike: dict | None = None,
                    timeout_s: float = 600) -> tuple[RunStore, dict]:
    """The run's REVIEW pointer once it waits (in a pause other than ``unlike``)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = list_runs(home / "runs") if (home / "runs").exists() else []
        if runs:
            store = RunStore(home / "runs", runs[0])
            waiting = store.waiting()
            if waiting and (unlike is None or (waiting["flow_run_id"], waiting["key"]) != (
                    unlike["flow_run_id"], unlike["key"])):
                return store, waiting
        if proc.poll() is not None:
            pytest.fail(f"the run ended before pausing: {proc.stderr.read()[-3000:]}")
        time.sleep(0.2)
    pytest.fail("the run never paused")


# -- the pause itself, in a flow of this process ---------------------------------------------
REVIEW = ReviewRecord(run_id="probe", generation=1, requests=[
    AskedRequest(id="r1", key="package: einops", kind="package", detail="einops",
                 asked_by=["g001-c00"], results=["g001-c00: val loss 2.4000"])])


def _probe_flow(answer_in_thread=None, local=None, timeout=3.0):
    from prefect import flow
    from prefect.context import FlowRunContext

    from darwin.engine.reviews import default_answer
    from darwin.flows.review import _as_answer, answer_form, form_input, pause_with_default

    @flow(name="review-probe")
    def probe():
        run_id = str(FlowRunContext.get().flow_run.id)
        form = answer_form(REVIEW, "# probe")
        defaults = form_input(REVIEW, default_answer(REVIEW))
        if answer_in_thread is not None:
            threading.Thread(target=answer_in_thread, args=(run_id,), daemon=True).start()
        given, fired = pause_with_default(form, defaults, timeout=timeout, poll_s=0.3,
                                          key="probe", local=local, review=REVIEW)
        return run_id, _as_answer(given).model_dump(mode="json"), fired

    return probe()


@pytest.fixture()
def on_server(prefect_server):
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"],
                                     PREFECT_LOGGING_TO_API_ENABLED: False}):
        yield prefect_server


def test_nobody_answering_applies_the_defaults_and_the_run_never_fails(on_server):
    verdicts = []

    def wrong_answer(run_id):
        time.sleep(0.8)  # paused by now; the schema's Literal ids refuse an unknown request
        verdicts.append(_resume(on_server, run_id, {"decisions": [{"request": "r9"}]}))

    run_id, answer, fired = _probe_flow(wrong_answer, timeout=4.0)
    assert verdicts == ["REJECT"]
    assert fired and answer["via"] == "timeout"
    assert [(d["request"], d["verdict"]) for d in answer["decisions"]] == [("r1", "refuse")]
    history = _history(on_server, run_id)
    assert "PAUSED" in history and history[-1] == "COMPLETED" and "FAILED" not in history


def test_a_person_who_answers_first_wins(on_server):
    def human(run_id):
        time.sleep(0.8)
        _resume(on_server, run_id, {"decisions": [
            {"request": "r1", "verdict": "approve", "comment": "go", "value": ""}],
            "via": "ui", "reviewer": "ada"})

    started = time.monotonic()
    run_id, answer, fired = _probe_flow(human, timeout=30.0)
    assert time.monotonic() - started < 10  # did not wait for the timeout
    assert not fired and answer["via"] == "ui" and answer["reviewer"] == "ada"
    assert answer["decisions"][0]["verdict"] == "approve"
    assert _history(on_server, run_id)[-1] == "COMPLETED"


def test_the_terminal_running_the_flow_can_answer(on_server):
    from darwin.cli.app import err
    from darwin.cli.review import TerminalReviewer
    from darwin.reports.progress import LiveProgress

    read_end, write_end = os.pipe()
    os.write(write_end, b"a\neinops==0.8.1\nfine by me\ntry a smaller lr\n")
    display = LiveProgress(None, None, 1, err, enabled=False)  # type: ignore[arg-type]
    try:
        _, answer, fired = _probe_flow(local=TerminalReviewer("probe", display, True, read_end),
                                       timeout=30.0)
    finally:
        os.close(read_end)
        os.close(write_end)
    assert not fired and answer["via"] == "terminal"
    assert answer["decisions"] == [{"request": "r1", "verdict": "approve",
                                    "comment": "fine by me", "value": "einops==0.8.1"}]
    assert answer["note"] == "try a smaller lr"


# -- whole runs ----------------------------------------------------------------------------------
def test_requests_pause_the_run_survive_a_crash_and_an_api_answer_resumes_it(
        prefect_server, llm_server, sandbox, tmp_path):
    from tests.wheels import make_wheel

    llm_server.asks = ["package: einops would shorten the attention code",
                       "dataset: more plays, please"]
    home = tmp_path / "home"
    make_wheel(tmp_path / "wheels")  # the approved package, from a local folder (no network)
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto",
                  OPENAI_BASE_URL=llm_server.url, OPENAI_API_KEY=llm_server.key, PIP_NO_INDEX="1",
                  PIP_FIND_LINKS=str(tmp_path / "wheels"))
    proc = _start([*TINY, "--mutator", "openai", "--review-timeout", "600", "--json"], env)
    store, first = _wait_for_pause(home, proc)
    assert store.head() == 1 and first["generation"] == 1
    asked = {r["kind"]: r["id"] for r in first["review"]["requests"]}
    assert set(asked) == {"package", "dataset"}  # two children asked the same: merged
    proc.kill()  # the process dies while paused: nothing was answered, nothing is lost
    proc.wait()
    assert store.review(1) is None
    # An answer nobody would read:
    r = run_darwin(["review", store.run_id, "--defaults"], env, timeout=300)
    assert r.returncode == 2 and "the process running it is gone" in r.stderr, r.stderr

    proc = _start(["run", "--resume", store.run_id, "--review-timeout", "600", "--json"], env)
    store, waiting = _wait_for_pause(home, proc, unlike=first)
    assert waiting["flow_run_id"] != first["flow_run_id"]  # asked again, by the resumed run
    run = waiting["flow_run_id"]
    # The server's schema check refuses an unknown id; the run stays paused.
    assert _resume(prefect_server, run, {"decisions": [{"request": "r9"}]}) == "REJECT"
    # An answer that makes no sense re-pauses with the reason and the same deadline.
    assert _resume(prefect_server, run, {"decisions": [
        {"request": asked["dataset"], "verdict": "approve"}]}) == "ACCEPT"
    store, again = _wait_for_pause(home, proc, unlike=waiting)
    assert "name the local text file" in again["message"]
    assert again["review"]["deadline"] == waiting["review"]["deadline"]
    # A dataset that would contaminate the score: `darwin review` says so; the run stays paused.
    from darwin.evaluation.data import load_dataset

    corpus = load_dataset()
    works = tmp_path / "complete_works.txt"
    works.write_text(corpus.text(corpus.train[:20_000]) + corpus.text(corpus.val[:2_000]))
    r = run_darwin(["review", store.run_id, "--approve", asked["dataset"], "--value",
                    f"{asked['dataset']}={works}"], env, timeout=300)
    assert r.returncode == 2 and "not applied:" in r.stderr and "contaminated" in r.stderr, (
        r.stdout + r.stderr)
    store, again = _wait_for_pause(home, proc, unlike=again)
    prompts_before = len(llm_server.requests)
    sent = time.time()
    assert _resume(prefect_server, run, {"decisions": [
        {"request": asked["package"], "verdict": "approve", "comment": "go ahead",
         "value": "darwin-probe-pkg"},
        {"request": asked["dataset"], "verdict": "refuse", "comment": "no new data this week"},
    ]}) == "ACCEPT"
    out, errors = proc.communicate(timeout=600)
    assert proc.returncode == 0, errors[-3000:]

    record = store.review(1)
    assert record.answer.via == "api" and not record.defaults_applied
    assert record.answered_at - sent < 5  # the run looks for answers every 2 s
    assert [d.verdict for d in record.answer.decisions] == ["approve", "refuse"]
    assert len(record.rejected) == 2 and "name the local text file" in record.rejected[0]
    assert "contaminated" in record.rejected[1] and asked["dataset"] not in record.granted
    assert record.granted[asked["package"]]["requirement"] == "darwin-probe-pkg"
    assert (home / "layers").is_dir()  # installed on the trusted side when approved
    assert json.loads(out)["reviews"][0]["via"] == "api"
    # The refusal and its comment are in every prompt of generation 2.
    later = ["\n".join(m["content"] for m in q["messages"])
             for q in llm_server.requests[prompts_before:]]
    assert later and all("no new data this week" in p and "was refused" in p for p in later)
    assert all("darwin-probe-pkg is importable from generation 2 on" in p for p in later)
    # The resumed run's history: paused, running again, completed; never failed.
    history = _history(prefect_server, run)
    assert "PAUSED" in history and history[-1] == "COMPLETED" and "FAILED" not in history
    assert store.waiting() is None
    r = run_darwin(["review", store.run_id], env, timeout=300)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0
    assert f"run {store.run_id} is not waiting for a review" in r.stderr


def test_review_gates_veto_and_pin_and_a_gate_nobody_answers_continues(
        prefect_server, sandbox, tmp_path):
    home = tmp_path / "home"
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto")
    # One child per generation: the seed and that child are the population to veto and pin.
    args = [*TINY, "--mutator", "offline", "--review-every", "1", "--review-timeout", "15",
            "--json"]
    args[args.index("--children") + 1] = "1"
    proc = _start(args, env)
    store, waiting = _wait_for_pause(home, proc)
    gate = waiting["review"]
    assert gate["gate"] and gate["requests"] == []
    assert "seed" in gate["population"] and len(gate["pinnable"]) >= 2, gate
    pin = next(c for c in gate["pinnable"] if c != "seed")
    r = run_darwin(["review", store.run_id, "--veto", "seed", "--pin", pin, "--note",
                    "keep it small", "--reviewer", "ada"], env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "vetoed seed" in r.stdout and f"pinned {pin}" in r.stdout
    out, errors = proc.communicate(timeout=600)
    assert proc.returncode == 0, errors[-3000:]

    first, second = store.review(1), store.review(2)
    assert first.answer.via == "cli" and first.answer.reviewer == "ada"
    assert second.defaults_applied and second.answer.via == "timeout"
    population = [m.candidate_id for m in store.generation(2).population]
    assert "seed" not in population and pin in population
    assert pin in [m["candidate_id"] for m in json.loads(out)["population"]]
    assert json.loads(out)["status"]["line"] == "finished: 2 generations, test split scored"
    evolve = next(fr for fr in _api(prefect_server, "POST", "/flow_runs/filter", {
        "flow_runs": {"tags": {"all_": [f"darwin-run:{store.run_id}"]}}})
        if fr["name"] == store.run_id)
    history = _history(prefect_server, evolve["id"])
    assert history.count("PAUSED") == 2 and history[-1] == "COMPLETED"
    assert "FAILED" not in history
