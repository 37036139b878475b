"""Generation 0: the stock seed program trains under the tiny budget and follows the contract."""

from __future__ import annotations

import math

import pytest

from darwin.evaluation.training import seed_program
from darwin.evaluation.trial import train_then_score

pytestmark = pytest.mark.sandbox


def test_seed_trains_on_tiny_below_the_threshold(sandbox, tiny, tmp_path):
    ev = train_then_score(seed_program(), tiny, 0, sandbox, tmp_path / "work")
    assert ev.ok, (ev.failure, ev.detail, ev.train.log_tail())
    assert ev.loss < 3.5 < math.log(65)  # clearly better than uniform guessing
    assert ev.train.tokens_served == tiny.tokens  # it spent exactly its budget
    checks = ev.score.checks
    assert checks["probes"] == 256 + 64 and checks["verified"] is True
    assert checks["max_diff"] <= checks["tolerance"] and checks["edge"] <= checks["epsilon"]
    assert ev.score.unused == []  # every tensor of the seed matters
    produced = {p.name for p in ev.train.out_dir.iterdir()}
    assert produced == {"model.py", "config.json", "model.safetensors", "claims.json"}
    assert ev.flags == []  # its claims are honest
    assert ev.mfu is not None and 0 < ev.mfu < 1


def test_seed_is_deterministic_per_seed(sandbox, tiny, tmp_path):
    a = train_then_score(seed_program(), tiny, 1, sandbox, tmp_path / "a")
    b = train_then_score(seed_program(), tiny, 1, sandbox, tmp_path / "b")
    c = train_then_score(seed_program(), tiny, 2, sandbox, tmp_path / "c")
    assert a.loss == b.loss
    assert a.loss != c.loss
