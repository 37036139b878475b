"""A person answering a review in a terminal: each value is checked as it is typed and a wrong
one is asked again (nothing typed before it is lost); only a/approve/r/refuse/Enter answer
"approve or refuse?"."""

from __future__ import annotations

from darwin.cli.review import ask
from darwin.engine.reviews import open_requests
from darwin.memory.records import CandidateRecord, ReviewRecord


def _review(gate: bool = True) -> ReviewRecord:
    asker = CandidateRecord(id="g001-c00", run_id="r", generation=1, code_sha="x",
                            mutator="offline", requests=[{"kind": "dataset", "detail": "poems"},
                                                         {"kind": "package", "detail": "einops"}])
    return ReviewRecord(run_id="r", generation=1, gate=gate, population=["seed", "g001-c00"],
                        pinnable=["seed", "g001-c00"],
                        requests=open_requests([asker], {}, [], 1))


def _scripted(lines: list[str]):
    asked: list[str] = []

    def read(question: str) -> str | None:
        asked.append(question)
        return lines.pop(0) if lines else None

    return read, asked


def test_a_wrong_value_or_a_typo_is_asked_again_and_nothing_typed_is_lost(tmp_path):
    poems = tmp_path / "poems.txt"
    poems.write_text("shall I compare thee to a summer's day\n" * 50)
    read, asked = _scripted([
        "aprove",                     # a typo is not a refusal: asked again
        "a", "/no/such/poems.txt",    # a dataset file that does not exist: asked again
        str(poems), "nice poems",
        "yes",                        # not an answer either
        "r", "not now",
        "g009-c00",                   # not in the population: asked again
        "seed", "seed",               # pinning the vetoed: asked again
        "", "three", "4000", "2",     # a word, then too many: asked again
        "keep going"])
    said: list[str] = []
    answer = ask(_review(), read, said.append, via="cli")
    assert answer is not None
    assert [(d.request, d.verdict, d.value, d.comment) for d in answer.decisions] == [
        ("r1", "approve", str(poems), "nice poems"), ("r2", "refuse", "", "not now")]
    assert (answer.veto, answer.pin, answer.remaining, answer.stop, answer.note) == (
        ["seed"], [], 2, False, "keep going")
    assert len(said) == 7 and all(s.startswith("not that: ") for s in said), said
    assert "'aprove': type a (approve) or r (refuse)" in said[0]
    assert "no file" in said[1] or "not found" in said[1], said[1]
    assert "not in the population" in said[3] and "both vetoed and pinned" in said[4]
    assert "'three': give a whole number" in said[5] and "'4000'" in said[6]
    assert asked.count(asked[0]) == 2  # the same question, asked again


def test_zero_generations_left_is_a_stop_and_end_of_input_abandons():
    read, _ = _scripted(["", "", "", "", "", "", "0", ""])
    answer = ask(_review(), read, print, via="cli")
    assert answer is not None and answer.stop and answer.remaining is None
    read, _ = _scripted(["r", ""])  # the input ends in the second request
    assert ask(_review(), read, print, via="cli") is None


# -- `darwin review` in a real terminal, against a run paused on a real Prefect server ---------
def _paused_run(home, review: ReviewRecord):
    """A run store whose generation 1 committed, claimed by this process (so it is alive)."""
    from darwin.engine import claim_run
    from darwin.memory import GenerationRecord, Member, RunStore

    store = RunStore(home / "runs", "r")
    store.create({"run_id": "r", "experiment": {"generations": 3}})
    for g in (0, 1):
        store.commit(GenerationRecord(run_id="r", generation=g, population=[
            Member(candidate_id="seed", losses=[2.0, 2.01])], noise=0.02))
    return store, claim_run(store)


def _until(fd: int, words: str, seen: list[bytes], timeout_s: float = 60) -> str:
    """The terminal's output so far, once ``words`` appeared in it (whitespace ignored)."""
    import os
    import select
    import time

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = b"".join(seen).decode(errors="replace")
        if " ".join(words.split()) in " ".join(text.split()):
            return text
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                seen.append(os.read(fd, 65536))
            except OSError:  # the command ended
                break
    raise AssertionError(f"never saw {words!r} in: {b''.join(seen).decode(errors='replace')}")


def test_darwin_review_in_a_terminal_asks_a_wrong_value_again(prefect_server, tmp_path):
    """`darwin review RUN` in a pty: a typo at "approve or refuse?" and a dataset file that does
    not exist are each asked again, and the answer the run receives is the corrected one."""
    import contextvars
    import os
    import pty
    import subprocess
    import threading

    from prefect import flow
    from prefect.context import FlowRunContext
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_LOGGING_TO_API_ENABLED,
        temporary_settings,
    )

    from darwin.engine.reviews import default_answer
    from darwin.flows.review import _as_answer, answer_form, form_input, pause_with_default
    from tests.conftest import DARWIN, cli_env

    home = tmp_path / "home"
    review = _review(gate=False)
    store, claim = _paused_run(home, review)
    poems = tmp_path / "poems.txt"
    poems.write_text("shall I compare thee to a summer's day\n" * 50)
    got: list = []

    @flow(name="review-in-a-terminal")
    def paused() -> None:
        run_id = str(FlowRunContext.get().flow_run.id)
        review.flow_run_id, review.deadline = run_id, 4e9
        waiting = {"generation": 1, "flow_run_id": run_id, "api_url": prefect_server["url"],
                   "key": "k1", "message": "", "review": review.model_dump(mode="json")}
        given, _ = pause_with_default(
            answer_form(review, "# r"), form_input(review, default_answer(review)),
            timeout=120, poll_s=0.3, key="k1", on_paused=lambda: store.set_waiting(waiting))
        review.answer = _as_answer(given)
        store.put_review(review)  # as the run does: `darwin review` waits for it
        store.set_waiting(None)
        got.append(review.answer)

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"],
                                     PREFECT_LOGGING_TO_API_ENABLED: False}):
        runner = threading.Thread(target=contextvars.copy_context().run, args=(paused,),
                                  daemon=True)
        runner.start()
    master, slave = pty.openpty()
    seen: list[bytes] = []
    try:
        while store.waiting() is None:
            assert runner.is_alive(), "the flow ended before pausing"
            threading.Event().wait(0.2)
        proc = subprocess.Popen([*DARWIN, "review", "r"], env=cli_env(home, prefect=prefect_server,
                                COLUMNS="200"), stdin=slave, stdout=slave, stderr=slave)
        os.close(slave)

        def answer(prompt: str, line: str) -> None:
            _until(master, prompt, seen)
            seen.append(b"\n---\n")  # what follows is the next prompt's
            os.write(master, line.encode() + b"\n")

        answer("approve or refuse? [a/R]", "aprove")
        answer("'aprove': type a (approve) or r (refuse)", "a")
        answer("the local text file to use:", "/no/such/poems.txt")
        answer("(asked again)", str(poems))
        answer("a comment for the model", "lovely")
        answer("approve or refuse? [a/R]", "")
        answer("a comment for the model", "")
        answer("a note for the model's next prompts", "thanks")
        text = _until(master, "the run goes on", seen)
        assert proc.wait(timeout=60) == 0, text
    finally:
        os.close(master)
        claim.release()
    runner.join(timeout=60)
    answer = got[0]
    assert [(d.request, d.verdict, d.value, d.comment) for d in answer.decisions] == [
        ("r1", "approve", str(poems), "lovely"), ("r2", "refuse", "", "")]
    assert answer.via == "cli" and answer.note == "thanks"
