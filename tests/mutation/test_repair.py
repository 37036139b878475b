"""Offline children train for real, and broken children get repaired (rules and LLM)."""

from __future__ import annotations

import numpy as np
import pytest

from darwin.evaluation.training import seed_program
from darwin.evaluation.trial import train_then_score
from darwin.llm.client import LLMClient
from darwin.mutation.base import apply_answer
from darwin.mutation.catalogue import CATALOGUE
from darwin.mutation.llm_mutator import LLMMutator
from darwin.mutation.repair import RuleRepair, repair_case, revert_hunk
from tests.mutation.test_offline import CONSTRUCT

SEED = seed_program().read_text()
pytestmark = pytest.mark.sandbox


def _changed_lines(diff: str) -> str:
    return "\n".join(ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---"))


@pytest.mark.parametrize("name", [op.name for op in CATALOGUE])
def test_each_operator_child_trains_and_scores(name, sandbox, tiny, tmp_path):
    from darwin.mutation.catalogue import OPERATORS
    from darwin.mutation.edits import unified_diff

    answer = OPERATORS[name].propose(SEED, np.random.default_rng(0), "tiny")
    child = apply_answer(SEED, answer, "search_replace")
    assert CONSTRUCT[name] in _changed_lines(unified_diff(SEED, child))
    path = tmp_path / "child.py"
    path.write_text(child)
    ev = train_then_score(path, tiny, 0, sandbox, tmp_path / "run")
    assert ev.ok, (name, ev.failure, ev.detail, ev.train.log_tail(800))


def _evaluate(source, budget, sandbox, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(source)
    return train_then_score(path, budget, 0, sandbox, path.parent / (path.stem + "-run"))


def _repair_until_ok(repairer, broken, parent, ev, budget, sandbox, tmp_path, tries=4):
    """The engine's bounded repair loop, in miniature: each try's parent is the broken one."""
    for i in range(tries):
        case = repair_case(ev.failure, ev.detail,
                           ev.train.log_tail() if not ev.train.ok else (ev.score.log_tail or ""))
        fix = repairer.repair(broken, parent, case, budget)
        assert fix.ok, fix.detail
        ev = _evaluate(fix.child, budget, sandbox, tmp_path / f"try{i}.py")
        if ev.ok:
            return i + 1, case, ev
        parent, broken = broken, fix.child
    raise AssertionError(f"not repaired after {tries} tries: {ev.failure} {ev.detail}")


def test_rules_repair_a_real_nan_child(sandbox, tiny, tmp_path):
    broken = SEED.replace("learning_rate = 1e-3", "learning_rate = 1e4")
    ev = _evaluate(broken, tiny, sandbox, tmp_path / "broken.py")
    assert not ev.ok
    assert repair_case(ev.failure, ev.detail, "").cls == "nan"
    tries, case, fixed = _repair_until_ok(RuleRepair(), broken, SEED, ev, tiny, sandbox, tmp_path)
    assert case.cls == "nan" and fixed.ok


def test_rules_repair_a_real_oom_child(sandbox, tiny, tmp_path):
    budget = tiny.model_copy(update={"memory_mb": 900, "tokens": 4096 * 32 * 2})
    broken = SEED.replace("block_size=32, batch_size=8)", "block_size=32, batch_size=4096)")
    ev = _evaluate(broken, budget, sandbox, tmp_path / "broken.py")
    assert ev.failure.value == "oom"
    tries, case, fixed = _repair_until_ok(RuleRepair(), broken, SEED, ev, budget, sandbox, tmp_path)
    assert case.cls == "oom" and fixed.ok


def test_rules_revert_the_hunk_the_traceback_names():
    parent = "a = 1\nb = 2\nc = 3\nd = 4\n"
    broken = "a = 10\nb = 2\nc = 3\nd = undefined_name\n"
    assert revert_hunk(broken, parent, 4) == "a = 10\nb = 2\nc = 3\nd = 4\n"
    assert revert_hunk(broken, parent, 1) == "a = 1\nb = 2\nc = 3\nd = undefined_name\n"


def test_llm_repairs_a_scripted_crash(sandbox, tiny, tmp_path, llm_server, llm_settings):
    broken = SEED.replace("x = self.drop(self.wte(idx) + self.wpe(pos))",
                          "x = self.drop(self.wte(idx) + self.wpe(pos) + undefined_bias)")
    ev = _evaluate(broken, tiny, sandbox, tmp_path / "broken.py")
    assert ev.failure.value == "crash"
    fix = ("REASONING: undefined_bias does not exist; remove it.\nKIND: architecture\n"
           "<<<<<<< SEARCH\n        x = self.drop(self.wte(idx) + self.wpe(pos) + undefined_bias)\n"
           "=======\n        x = self.drop(self.wte(idx) + self.wpe(pos))\n>>>>>>> REPLACE\n")
    llm_server.enqueue({"content": fix})
    repairer = LLMMutator(LLMClient(llm_settings))
    tries, case, fixed = _repair_until_ok(repairer, broken, SEED, ev, tiny, sandbox, tmp_path)
    assert tries == 1 and fixed.ok
    prompt = llm_server.requests[0]["messages"][-1]["content"]
    assert "FAILED" in prompt and "NameError" in prompt and "<<<UNTRUSTED" in prompt
