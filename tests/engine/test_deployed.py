"""What a deployment reads: experiment files, and how a continuation extends a run."""

from __future__ import annotations

import pytest

from darwin.engine.experiment import make_experiment
from darwin.engine.reviews import planned_generations
from darwin.errors import UserError
from darwin.flows.deployed import continued, read_experiment
from darwin.memory.records import ReviewAnswer, ReviewRecord


def test_experiment_files(tmp_path):
    good = tmp_path / "e.json"
    good.write_text('{"budget": "tiny", "generations": 4}')
    exp = read_experiment(good)
    assert exp.budget == "tiny" and exp.generations == 4 and exp.population == 4  # default
    for text, words in [('{"budget": "huge"}', "invalid budget: unknown 'huge'"),
                        ("[1, 2]", "give a JSON object"), ("{", "is not JSON"),
                        ('{"keep": 9, "population": 2}', "keep")]:
        good.write_text(text)
        with pytest.raises(UserError, match=words):
            read_experiment(good)
    with pytest.raises(UserError, match="not found"):
        read_experiment(tmp_path / "missing.json")


def gate(gen: int, **answer) -> ReviewRecord:
    return ReviewRecord(run_id="r", generation=gen, gate=True,
                        answer=ReviewAnswer(via="ui", **answer))


def test_a_continuation_adds_exactly_the_generations_asked():
    exp = make_experiment(generations=3)
    assert continued(exp, 3, [], 2, "r").generations == 5
    assert continued(exp, 1, [], 1, "r").generations == 2  # N more than what is committed
    assert continued(exp, None, [], 1, "r") == exp  # nothing committed: resume as planned
    with pytest.raises(UserError, match="more_generations"):
        continued(exp, 3, [], 0, "r")


def test_earlier_gates_no_longer_set_the_length_but_a_stop_holds():
    exp = make_experiment(generations=3)
    said = [gate(1, remaining=2)]  # a person said "two more" after generation 1: ends at 3
    assert planned_generations(exp.generations, said) == 3
    more = continued(exp, 3, said, 2, "r")
    assert (more.generations, more.continued_after) == (5, 3)
    # what the engine plans with: gates up to the continuation no longer count
    later = [r for r in said if r.generation > more.continued_after]
    assert planned_generations(more.generations, later) == 5
    for stop in (gate(2, stop=True), gate(2, remaining=0)):
        with pytest.raises(UserError, match="stopped by its review gate after generation 2"):
            continued(exp, 2, [*said, stop], 1, "r")
