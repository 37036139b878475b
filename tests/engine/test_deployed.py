"""What a deployment reads: experiment files, and how a continuation extends a run."""

from __future__ import annotations

import pytest

from darwin.engine.experiment import continued, make_experiment, read_experiment
from darwin.engine.reviews import planned_generations
from darwin.errors import UserError
from darwin.memory.records import ReviewAnswer, ReviewRecord


def test_experiment_files(tmp_path):
    good = tmp_path / "e.json"
    good.write_text('{"budget": "tiny", "generations": 4}')
    exp = read_experiment(good)
    assert exp.budget == "tiny" and exp.generations == 4 and exp.population == 4  # default
    for text, words in [('{"budget": "huge"}', "invalid budget: unknown 'huge'"),
                        ("[1, 2]", "give a JSON object"), ("{", "is not JSON"),
                        ('{"keep": 9, "population": 2}', "keep"),
                        # as strict as the flags: a typo is never dropped for the default
                        ('{"generatons": 9}', "unknown setting 'generatons'; did you mean "
                                              "'generations'"),
                        ('{"zzz": 1}', "unknown setting 'zzz'; the settings are: budget, ")]:
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


def test_the_review_policy_is_checked_once_for_every_entry_point():
    from darwin.engine.reviews import make_policy
    from darwin.flows.deployed import _as_parameter

    assert make_policy(True, 2, 60).model_dump()["mode"] == "ask"
    assert make_policy(False, 0, 60).mode == "defaults"
    for every, timeout, words in [(-1, 60, "invalid --review-every: -1"),
                                  (0, 0, "invalid --review-timeout: 0"),
                                  (0, float("inf"), "invalid --review-timeout: inf")]:
        with pytest.raises(UserError, match=words) as e:
            make_policy(True, every, timeout)
    # the deployed flow names its parameter, not the flag
    assert _as_parameter(str(e.value)).startswith("invalid review_timeout: inf; give")
    assert _as_parameter("x; continue with: darwin run --resume r") == \
        "x; continue with: darwin run --resume r"
