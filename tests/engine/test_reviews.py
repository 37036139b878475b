"""Humans in the loop, the pure part: what a review asks, which answers stand, and what an answer
changes (population, generations left, the next prompts). Milliseconds, no Prefect."""

from __future__ import annotations

import pytest

from darwin.engine import reviews as hitl
from darwin.engine.selection import Scored, select
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    RequestDecision,
    ReviewAnswer,
    ReviewRecord,
)


def cand(cid: str, gen: int, *requests: tuple[str, str]) -> CandidateRecord:
    return CandidateRecord(id=cid, run_id="r", generation=gen, code_sha="x",
                           requests=[{"kind": k, "detail": d} for k, d in requests])


def first_run(cid: str, loss: float | None) -> EvaluationRecord:
    return EvaluationRecord(candidate_id=cid, code_sha="x", seed=0, budget="tiny",
                            status="ok" if loss is not None else "oom", val_loss=loss)


def answered(gen: int, answer: ReviewAnswer, requests=(), defaults=False) -> ReviewRecord:
    return ReviewRecord(run_id="r", generation=gen, requests=list(requests), gate=True,
                        population=["seed"], answer=answer, defaults_applied=defaults)


def test_the_same_request_from_several_children_is_asked_once_with_every_asker():
    cands = [cand("g001-c00", 1, ("package", "einops, please.")),
             cand("g001-c01", 1, ("package", "Einops,   please"), ("dataset", "more plays")),
             cand("g002-c00", 2, ("package", "einops, please"))]
    runs = {"g001-c00": first_run("g001-c00", 2.41), "g001-c01": first_run("g001-c01", None)}
    asked = hitl.open_requests(cands, runs, [], upto=1)
    assert [(r.id, r.kind, r.asked_by) for r in asked] == [
        ("r1", "package", ["g001-c00", "g001-c01"]), ("r2", "dataset", ["g001-c01"])]
    assert asked[0].results == ["g001-c00: val loss 2.4100", "g001-c01: failed (oom)"]
    # Once a review asked it, the same request (in any spelling) is not asked again.
    earlier = ReviewRecord(run_id="r", generation=1, requests=asked)
    again = hitl.open_requests(cands, runs, [earlier], upto=2)
    assert again == []


def test_requests_are_asked_while_a_generation_can_act_on_them_and_gates_every_n():
    policy = hitl.ReviewPolicy(every=2)
    req = hitl.open_requests([cand("g001-c00", 1, ("other", "x"))], {}, [], 1)
    assert hitl.due("r", 1, 3, policy, req, ["seed"], ["seed"]).requests == req
    assert hitl.due("r", 3, 3, policy, req, ["seed"], ["seed"]) is None  # the last: nothing acts
    gate = hitl.due("r", 2, 3, policy, [], ["seed"], ["seed"])
    assert gate.gate and not gate.requests
    assert hitl.due("r", 1, 3, hitl.ReviewPolicy(), [], ["seed"], ["seed"]) is None
    last_gate = hitl.due("r", 4, 4, policy, req, ["seed"], ["seed"])  # a gate may extend the run
    assert last_gate.gate and last_gate.requests == req


REVIEW = ReviewRecord(run_id="r", generation=1, gate=True, population=["seed", "g001-c00"],
                      pinnable=["seed", "g001-c00", "g001-c01"],
                      requests=hitl.open_requests([cand("g001-c00", 1, ("package", "einops"),
                                                        ("dataset", "poems"))], {}, [], 1))


@pytest.mark.parametrize(("answer", "words"), [
    (ReviewAnswer(decisions=[RequestDecision(request="r9")]), "'r9' is not asked here"),
    (ReviewAnswer(decisions=[RequestDecision(request="r1"), RequestDecision(request="r1")]),
     "answered twice"),
    (ReviewAnswer(decisions=[RequestDecision(request="r2", verdict="approve")]),
     "name the local text file"),
    (ReviewAnswer(decisions=[RequestDecision(request="r2", verdict="approve",
                                             value="https://example.org/poems.txt")]), "a URL"),
    (ReviewAnswer(decisions=[RequestDecision(request="r2", verdict="approve",
                                             value="/no/such/poems.txt")]), "no file"),
    (ReviewAnswer(veto=["g009-c00"]), "not in the population"),
    (ReviewAnswer(pin=["g000-c99"]), "not a scored candidate"),
    (ReviewAnswer(veto=["seed"], pin=["seed"]), "both vetoed and pinned"),
    (ReviewAnswer(veto=["seed", "g001-c00"]), "removes every member"),
    (ReviewAnswer(remaining=5000), "not between 0"),
    (ReviewAnswer(stop=True, remaining=3), "stop ends the run after this generation, remaining "
                                           "3 runs 3 more: give one of them"),
])
def test_answers_that_make_no_sense_are_refused_with_the_fix(answer, words):
    problems = hitl.check_answer(REVIEW, answer)
    assert problems and words in "; ".join(problems), problems


def test_sound_answers_stand(tmp_path):
    poems = tmp_path / "poems.txt"
    poems.write_text("shall I compare thee")
    ok = ReviewAnswer(decisions=[RequestDecision(request="r2", verdict="approve",
                                                 value=str(poems))],
                      veto=["seed"], pin=["g001-c01"], remaining=2, note="smaller lr")
    assert hitl.check_answer(REVIEW, ok) == []
    assert hitl.check_answer(REVIEW, hitl.default_answer(REVIEW)) == []
    requests_only = REVIEW.model_copy(update={"gate": False})
    assert "belong to a review gate" in hitl.check_answer(requests_only,
                                                          ReviewAnswer(stop=True))[0]
    # A request left out of the answer is refused (the default).
    full = hitl.complete(REVIEW, ReviewAnswer(decisions=[RequestDecision(request="r2")]))
    assert [(d.request, d.verdict) for d in full.decisions] == [("r1", "refuse"),
                                                                 ("r2", "refuse")]


def test_gates_stop_or_change_how_many_generations_remain():
    assert hitl.planned_generations(5, []) == 5
    assert hitl.planned_generations(5, [answered(2, ReviewAnswer(stop=True))]) == 2
    assert hitl.planned_generations(3, [answered(2, ReviewAnswer(remaining=4))]) == 6
    later = [answered(2, ReviewAnswer(remaining=4)), answered(4, ReviewAnswer(remaining=0))]
    assert hitl.planned_generations(3, later) == 4
    assert hitl.planned_generations(3, [answered(1, ReviewAnswer())]) == 3  # defaults: as planned


def test_vetoes_remove_members_and_pins_keep_or_bring_back_candidates():
    reviews = [answered(1, ReviewAnswer(veto=["a"], pin=["c"]))]
    assert hitl.amended_population(["a", "b"], reviews, 1) == ["b", "c"]
    assert hitl.amended_population(["a", "b"], reviews, 0) == ["a", "b"]  # not yet reviewed
    later = reviews + [answered(2, ReviewAnswer(veto=["c"]))]
    assert hitl.pins_and_vetoes(later, 2) == ([], {"a", "c"})  # a later veto unpins
    assert hitl.amended_population(["b", "c", "d"], later, 2) == ["b", "d"]


def test_selection_never_displaces_a_pinned_member():
    population = [Scored("best", [1.0, 1.0, 1.0]), Scored("pinned", [3.0, 3.0, 3.0])]
    child = Scored("child", [1.5, 1.5, 1.5])
    kept, promoted, _ = select(population, [child], size=2, keep=1, margin=0.1,
                               pinned=frozenset({"pinned"}))
    assert [m.id for m in kept] == ["best", "pinned"] and promoted == []
    kept, promoted, _ = select(population, [child], size=2, keep=1, margin=0.1)
    assert [m.id for m in kept] == ["best", "child"] and promoted == ["child"]


def test_refusals_comments_and_notes_reach_the_prompts_as_human_notes():
    asked = hitl.open_requests([cand("g001-c00", 1, ("package", "einops"),
                                     ("dataset", "poems"))], {}, [], 1)
    said = answered(1, ReviewAnswer(decisions=[
        RequestDecision(request="r1", verdict="refuse", comment="no new packages"),
        RequestDecision(request="r2", verdict="approve", comment="use the sonnets")],
        note="try a smaller learning rate"), requests=asked)
    timed_out = answered(2, hitl.default_answer(
        ReviewRecord(run_id="r", generation=2, requests=asked)), requests=asked, defaults=True)
    notes = hitl.human_notes([said, timed_out])
    assert notes[0] == ('after generation 1: your request (package: einops) was refused; they '
                        'said: "no new packages"')
    assert notes[1].endswith('was approved; they said: "use the sonnets"')
    assert notes[2] == 'after generation 1: "try a smaller learning rate"'
    assert "(nobody answered in time)" in notes[3]
    assert len(hitl.human_notes([said] * 10, limit=4)) == 4


def test_a_model_asking_for_everything_gets_a_readable_form_and_the_rest_later():
    many = cand("g001-c00", 1, *[("other", f"wish number {i}") for i in range(20)])
    first = hitl.open_requests([many], {}, [], 1)
    assert len(first) == hitl.MAX_ASKED and first[-1].id == f"r{hitl.MAX_ASKED}"
    asked = ReviewRecord(run_id="r", generation=1, requests=first)
    rest = hitl.open_requests([many], {}, [asked], 2)
    assert [r.detail for r in rest] == [f"wish number {i}" for i in range(hitl.MAX_ASKED, 20)]


@pytest.mark.parametrize(("kind", "value", "words"), [
    ("package", "", "name the package in value"),
    ("package", "https://evil.example/pkg.whl", "not a path, URL or pip option"),
    ("package", "--index-url=http://x einops", "not a path, URL or pip option"),
    ("package", "torch==2.0", "the sandbox's own"),
    ("file_layout", "", "name the files"),
    ("file_layout", "../escape.py", "a Python module name"),
    ("file_layout", "train.py", "not train.py"),
    ("budget", "huge", "tiny|cpu|paper"),
])
def test_an_approval_must_say_what_it_grants(kind, value, words):
    review = ReviewRecord(run_id="r", generation=1, requests=hitl.open_requests(
        [cand("g001-c00", 1, (kind, "please"))], {}, [], 1))
    answer = ReviewAnswer(decisions=[RequestDecision(request="r1", verdict="approve",
                                                     value=value)])
    problems = hitl.check_answer(review, answer)
    assert problems and words in problems[0], problems
    assert hitl.check_answer(review, ReviewAnswer(decisions=[RequestDecision(
        request="r1", verdict="approve", value={"package": "einops==0.8.1",
                                                "file_layout": "model.py, data.py",
                                                "budget": "paper"}[kind])])) == []


def test_grants_count_from_the_generation_after_their_review():
    granted = ReviewRecord(run_id="r", generation=2, answer=ReviewAnswer(), granted={
        "r1": {"kind": "dataset", "name": "poems", "sha256": "abc"},
        "r2": {"kind": "package", "requirement": "einops==0.8.1"},
        "r3": {"kind": "file_layout", "files": ["model.py"]},
        "r4": {"kind": "budget", "budget": "paper", "command": "darwin run ..."}})
    assert hitl.grants_for([granted], 2) == hitl.Grants()
    later = hitl.grants_for([granted], 3)
    assert later.sources == {"poems": "abc"} and later.packages == ["einops==0.8.1"]
    assert later.files == ["model.py"]  # a budget is never granted inside a run
