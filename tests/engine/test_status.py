"""Every run has one status, read from its store: finished, stopped by a review, paused for a
review, running, crashed (resumable). Stores are built directly (no training); "alive" is the
run's real claim (its lock), held by this test process."""

from __future__ import annotations

import pytest

from darwin.engine import claim_run, run_status
from darwin.memory import (
    CandidateRecord,
    GenerationRecord,
    Member,
    ReviewAnswer,
    ReviewRecord,
    RunStore,
    run_history,
)


def _store(tmp_path, generations: int = 2, head: int | None = 2, finals: bool = True
           ) -> RunStore:
    store = RunStore(tmp_path / "runs", "r1")
    store.create({"run_id": "r1", "experiment": {"generations": generations, "min_runs": 1}})
    sha = store.put_code("print('hi')\n")
    store.put_candidate(CandidateRecord(id="seed", run_id="r1", generation=0, code_sha=sha,
                                        mutator="seed"))
    for g in range(head + 1 if head is not None else 0):
        best = "seed" if g == 0 else f"g{g:03d}-c00"
        if g:
            store.put_candidate(CandidateRecord(id=best, run_id="r1", generation=g,
                                                code_sha=sha, mutator="offline"))
        store.commit(GenerationRecord(run_id="r1", generation=g, population=[
            Member(candidate_id=best, losses=[2.0 - 0.1 * g])]))
    if finals and head is not None:
        store.put_final("seed", {"candidate": "seed", "test_loss": 2.0})
        store.put_final(f"g{head:03d}-c00" if head else "seed", {"test_loss": 1.9})
    return store


def _review(gen: int, **answer) -> ReviewRecord:
    return ReviewRecord(run_id="r1", generation=gen, gate=True, population=["x"],
                        answered_at=1_700_000_000.0, answer=ReviewAnswer(**answer))


def test_a_run_that_ran_its_plan_and_the_test_split_is_finished(tmp_path):
    status = run_status(_store(tmp_path))
    assert status.state == "finished"
    assert status.line == "finished: 2 generations, test split scored"


def test_a_gate_that_stopped_the_run_says_after_which_generation_who_and_when(tmp_path):
    store = _store(tmp_path, generations=5, head=2)
    store.put_review(_review(2, stop=True, via="cli", reviewer="ana"))
    status = run_status(store)
    assert (status.state, status.after_generation, status.by) == ("stopped", 2, "ana")
    assert status.line == ("stopped by a review after generation 2 (by ana via cli, "
                           "2023-11-14 22:13 UTC)")


def test_no_generations_left_is_a_stop_and_a_stop_the_run_went_past_is_not(tmp_path):
    store = _store(tmp_path, generations=5, head=2)
    store.put_review(_review(2, remaining=0, via="ui"))
    assert run_status(store).line.startswith("stopped by a review after generation 2 (by ui,")
    # A continuation (a deployment's "more generations") went past an earlier stop.
    store = _store(tmp_path / "b", generations=1, head=3)
    store.put_review(_review(1, stop=True, via="ui"))
    assert run_status(store).state == "finished"


def test_a_live_run_is_running_or_paused_with_the_command_that_answers(tmp_path):
    store = _store(tmp_path, generations=4, head=1, finals=False)
    claim = claim_run(store)
    try:
        assert run_status(store).line == "running: generation 2 of 4"
        store.set_waiting({"generation": 1, "review": {"deadline": 1_700_000_000.0}})
        status = run_status(store)
        assert (status.state, status.until, status.answer_command) == (
            "paused", 1_700_000_000.0, "darwin review r1")
        assert status.line == ("paused after generation 1: waiting for a review until "
                               "2023-11-14 22:13 UTC (then its defaults apply); answer with: "
                               "darwin review r1")
    finally:
        claim.release()
    # The process died while paused: its REVIEW pointer is no pause.
    status = run_status(store)
    assert status.state == "crashed"
    assert status.line == "crashed after generation 1 of 4 (resumable: darwin run --resume r1)"


@pytest.mark.parametrize("head, finals, where", [
    (None, False, "before generation 0 was committed"),
    (2, False, "after the last generation, before the test split"),
])
def test_a_run_nobody_works_on_that_is_not_done_crashed(tmp_path, head, finals, where):
    status = run_status(_store(tmp_path, head=head, finals=finals))
    assert status.state == "crashed"
    assert status.line == f"crashed {where} (resumable: darwin run --resume r1)"


def test_history_lists_each_review_beside_the_commit_it_followed(tmp_path):
    store = _store(tmp_path, generations=5, head=2)
    store.put_review(_review(1, veto=["x"], via="terminal", note="hm"))
    store.put_review(_review(2, stop=True, via="cli", reviewer="ana"))
    found = run_history(store)["reviews"]
    assert [(r["generation"], r["reviewer"], r["veto"], r["stop"]) for r in found] == [
        (1, "", ["x"], False), (2, "ana", [], True)]


def test_darwin_runs_history_and_resume_say_each_status_in_one_line(tmp_path):
    """The five statuses as `darwin runs` prints them, a stopped run's review in `darwin
    history`, and `darwin run --resume` of a stopped run refused in one line."""
    from tests.conftest import cli_env, run_darwin

    root = tmp_path / "s"
    stores = {}
    for name, generations, head, finals in [("a-finished", 2, 2, True), ("b-stopped", 5, 2, True),
                                            ("c-paused", 4, 1, False), ("d-running", 4, 1, False),
                                            ("e-crashed", 4, 1, False)]:
        (root / name).mkdir(parents=True)
        store = _store(root / name, generations, head, finals)
        store.fs.mv(store.root, str(root / "runs" / name), recursive=True)
        stores[name] = RunStore(root / "runs", name)
    stores["b-stopped"].put_review(_review(2, stop=True, via="cli", reviewer="ana"))
    stores["c-paused"].set_waiting({"generation": 1, "review": {"deadline": 1_700_000_000.0}})
    claims = [claim_run(stores["c-paused"]), claim_run(stores["d-running"])]
    env = cli_env(tmp_path / "home", DARWIN_STORAGE_URL=str(root / "runs"), COLUMNS="250")
    try:
        listed = run_darwin(["runs", "--json"], env, timeout=120)
        table = run_darwin(["runs"], env, timeout=120)
    finally:
        for claim in claims:
            claim.release()
    assert listed.returncode == 0, listed.stderr
    import json

    assert {r["run_id"]: r["status"] for r in json.loads(listed.stdout)} == {
        "a-finished": "finished", "b-stopped": "stopped", "c-paused": "paused",
        "d-running": "running", "e-crashed": "crashed"}
    for words in ("finished: 2 generations", "stopped by a review after generation 2 (by ana",
                  "paused after generation 1", "running: generation 2 of 4",
                  "crashed after generation 1 of 4", "c-paused waits for a review: darwin "
                  "review c-paused"):
        assert words in " ".join(table.stdout.split()), (words, table.stdout)
    history = run_darwin(["history", "b-stopped"], env, timeout=120)
    assert "ana via cli" in history.stdout and "stopped the run" in history.stdout, history.stdout
    resumed = run_darwin(["run", "--resume", "b-stopped"], env, timeout=120)
    assert resumed.returncode == 2, resumed.stderr
    line = resumed.stderr.strip().splitlines()[-1]
    assert line.startswith("darwin: error: run b-stopped is stopped by a review after "
                           "generation 2 (by ana via cli"), resumed.stderr
    assert "nothing to resume" in line and "darwin run --seed-program" in line
