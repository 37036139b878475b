"""What a deployment reads: experiment files, and how a continuation extends a run."""

from __future__ import annotations

import pytest

from darwin.engine.experiment import make_experiment
from darwin.errors import UserError
from darwin.flows.deployed import continued, read_experiment


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


def test_a_continuation_adds_exactly_the_generations_asked():
    exp = make_experiment(generations=3)
    assert continued(exp, 3, 3, 2, "r").generations == 5
    assert continued(exp, 1, 3, 1, "r").generations == 2  # N more than what is committed
    assert continued(exp, None, 3, 1, "r") == exp  # nothing committed: resume as planned
    with pytest.raises(UserError, match="review gate"):  # a person stopped it after gen 2
        continued(exp, 2, 2, 1, "r")
    with pytest.raises(UserError, match="more_generations"):
        continued(exp, 3, 3, 0, "r")
