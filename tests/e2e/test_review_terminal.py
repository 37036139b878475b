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
