"""The experiment (the evolve flow's parameter): its choices are lists in the Prefect UI's run
form, and a bad value is one line naming the flag and the known values."""

from __future__ import annotations

import pytest

from darwin.engine.experiment import Experiment, make_experiment
from darwin.errors import UserError
from darwin.evaluation.budgets import BUDGETS


def test_choices_are_enums_in_the_form_schema():
    props = Experiment.model_json_schema()["properties"]
    assert props["budget"]["enum"] == list(BUDGETS)
    assert props["mutator"]["enum"] == ["auto", "openai", "offline", "random", "hpo-tpe",
                                        "hpo-random"]
    assert props["device"]["enum"] == ["cpu", "cuda"]


@pytest.mark.parametrize("field, value, words", [
    ("budget", "huge", "invalid --budget: unknown 'huge'; use one of tiny|cpu|paper"),
    ("mutator", "gpt", "invalid --mutator: unknown 'gpt'; use one of auto|openai|offline|random|hpo-tpe|hpo-random"),
    ("device", "tpu", "invalid --device: unknown 'tpu'; use one of cpu|cuda"),
])
def test_an_unknown_choice_names_the_flag_and_the_choices(field, value, words):
    with pytest.raises(UserError) as e:
        make_experiment(**{field: value})
    assert str(e.value) == words


def test_the_experiments_budget_names_are_the_budgets():
    from typing import get_args

    from darwin.engine.experiment import BudgetName
    from darwin.evaluation.budgets import BUDGETS

    assert set(get_args(BudgetName)) == set(BUDGETS)
