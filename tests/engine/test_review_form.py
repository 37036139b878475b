"""The review form as the Prefect UI draws it: `remaining` is a plain number (-1: as planned),
and answers go through the form and back unchanged."""

from __future__ import annotations

from darwin.flows.review import AS_PLANNED, _as_answer, answer_form, form_input
from darwin.memory.records import ReviewAnswer, ReviewRecord


def gate() -> ReviewRecord:
    return ReviewRecord(run_id="r", generation=1, gate=True, population=["seed", "g001-c00"],
                        pinnable=["seed", "g001-c00"])


def test_remaining_is_a_number_whose_default_means_as_planned():
    form = answer_form(gate(), "page")
    schema = form.model_json_schema()["properties"]["remaining"]
    assert schema["type"] == "integer" and "anyOf" not in schema  # no "int | None" switch
    assert schema["default"] == AS_PLANNED
    assert _as_answer(form()).remaining is None  # the defaults: as planned


def test_answers_round_trip_through_the_form():
    review = gate()
    form = answer_form(review, "page")
    for answer in (ReviewAnswer(remaining=None, via="cli"), ReviewAnswer(remaining=0, via="cli"),
                   ReviewAnswer(remaining=3, veto=["g001-c00"], note="n", via="cli")):
        back = _as_answer(form(**form_input(review, answer)))
        assert back.remaining == answer.remaining and back.veto == answer.veto
