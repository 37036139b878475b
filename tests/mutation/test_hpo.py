"""The tuned hyper-parameter baselines (hpo-tpe, hpo-random): children that are the seed with a
sampler's values, bounds, determinism, and the sampler's history read back from a real store."""

from __future__ import annotations

import ast
import math
import subprocess
import sys
import time

import numpy as np
import pytest

from darwin.engine import tuning
from darwin.engine.experiment import make_experiment
from darwin.errors import UserError
from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program
from darwin.memory.records import CandidateRecord, EvaluationRecord
from darwin.memory.store import RunStore
from darwin.mutation.answers import ChangeKind
from darwin.mutation.base import MutationContext
from darwin.mutation.hpo import (
    MAX_COMPUTE,
    HPOMutator,
    memory_mb,
    replay,
    search_space,
    training_flops_per_token,
    tunable,
)
from darwin.mutation.registry import make_mutator

SEED = seed_program().read_text()


def _constants(program: str, budget: str) -> dict:
    """The module-level constants and the budget's shape row of a program, as Python sees them."""
    found = {}
    for node in ast.parse(program).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                if isinstance(target, ast.Name) and target.id == "SHAPES":
                    row = next(v for k, v in zip(node.value.keys, node.value.values)
                               if ast.literal_eval(k) == budget)
                    found.update({kw.arg: ast.literal_eval(kw.value) for kw in row.keywords})
                continue
            if isinstance(target, ast.Name):
                found[target.id] = value
            elif isinstance(target, ast.Tuple):
                found.update({t.id: v for t, v in zip(target.elts, value)})
    return found


def _ctx(budget="tiny", trials=None, **update):
    b = get_budget(budget)
    return MutationContext(target_program="# the target: never edited\n", seed_program=SEED,
                           budget=b.model_copy(update=update) if update else b,
                           trials=trials or [])


@pytest.mark.parametrize("name", ["hpo-tpe", "hpo-random"])
@pytest.mark.parametrize("budget", ["tiny", "cpu", "paper"])
def test_a_child_is_the_seed_with_the_samplers_values(name, budget):
    result = make_mutator(name, rng=np.random.default_rng([3, 1, 2])).mutate(_ctx(budget))
    assert result.ok and result.mutator == name
    assert result.answer.kind is ChangeKind.hyperparameter
    assert result.answer.reasoning.startswith(f"[{name}, told 0 earlier")
    assert result.diff.startswith("--- parent/train.py")
    params, got = result.trial["params"], _constants(result.child, budget)
    before = _constants(SEED, budget)
    assert set(params) == set(search_space(SEED, budget))  # every constant the seed exposes
    assert len(tunable(SEED, budget)) == 8  # 6 constants, the betas, the shape row
    for name_ in ("learning_rate", "dropout", "weight_decay", "grad_clip", "beta1", "beta2"):
        assert got[name_] == pytest.approx(params[name_], rel=1e-3), name_
    assert got["max_warmup_iters"] == params["max_warmup_iters"]
    assert got["min_lr"] == pytest.approx(params["learning_rate"] * params["min_lr_ratio"],
                                          rel=1e-3)
    assert (got["batch_size"], got["n_layer"], got["n_head"]) == (
        params["batch_size"], params["n_layer"], params["n_head"])
    assert got["n_embd"] == params["n_head"] * params["head_size"]
    assert got["block_size"] == before["block_size"]  # the scorer's context stays
    # Nothing else of the program changed: only the constants' lines.
    changed = [ln for ln in result.diff.splitlines() if ln.startswith("+") and "+++" not in ln]
    assert len(changed) == len(result.answer.edits) <= 9


def test_every_child_fits_the_memory_cap_and_the_deadline():
    seed_flops = training_flops_per_token(2, 128, 64)
    rejected = 0
    for i in range(20):
        result = HPOMutator("random", np.random.default_rng(i)).mutate(_ctx("cpu", memory_mb=700))
        assert result.ok
        got = _constants(result.child, "cpu")
        assert memory_mb(got["batch_size"], 64, got["n_layer"], got["n_head"],
                         got["n_embd"]) <= 700
        assert training_flops_per_token(got["n_layer"], got["n_embd"], 64) <= (
            MAX_COMPUTE * seed_flops)
        rejected += len(result.trial["rejected"])
        for r in result.trial["rejected"]:
            assert "MB, over the 700 MB cap" in r["why"] or "training compute" in r["why"]
    assert rejected  # the bounds did turn proposals away (and they are kept for the sampler)


def test_a_cap_nothing_fits_is_a_clear_failure():
    result = HPOMutator("tpe", 0).mutate(_ctx("tiny", memory_mb=100))
    assert not result.ok and result.failure == "no_operator_applies"
    assert "none within the budget's bounds" in result.detail


def test_a_program_without_the_constants_is_refused():
    ctx = MutationContext(target_program="print('hi')\n", budget=get_budget("tiny"))
    result = HPOMutator("tpe", 0).mutate(ctx)
    assert not result.ok and "exposes none of the constants" in result.detail


def _history(n: int, rng_seed: int = 0) -> list[dict]:
    """``n`` trials of a made-up landscape: the lower the learning rate, the better; one in five
    crashed."""
    study_ctx = _ctx("cpu")
    out = []
    for i in range(n):
        result = HPOMutator("random", np.random.default_rng([rng_seed, i])).mutate(study_ctx)
        lr = result.trial["params"]["learning_rate"]
        value = None if i % 5 == 4 else 1.5 + 0.2 * math.log10(lr / 1e-4)
        out.append({"params": result.trial["params"],
                    "distributions": result.trial["distributions"], "value": value})
    return out


def test_the_same_seed_and_history_give_the_same_child():
    history = _history(8)
    for sampler in ("tpe", "random"):
        a = HPOMutator(sampler, np.random.default_rng([0, 3, 1])).mutate(_ctx("cpu", history))
        b = HPOMutator(sampler, np.random.default_rng([0, 3, 1])).mutate(_ctx("cpu", history))
        assert a.child == b.child and a.trial == b.trial
        assert a.trial["told"] == 8
        assert "told 8 earlier result(s), 1 of them failed" in a.answer.reasoning


def test_tpe_learns_from_the_history_random_does_not():
    history = _history(16)
    started = time.perf_counter()
    lrs = {s: [HPOMutator(s, np.random.default_rng([i, 2, 1])).mutate(_ctx("cpu", history))
               .trial["params"]["learning_rate"] for i in range(8)] for s in ("tpe", "random")}
    assert time.perf_counter() - started < 20  # proposing is cheap next to a training
    geo = {s: float(np.exp(np.mean(np.log(v)))) for s, v in lrs.items()}
    assert geo["tpe"] < geo["random"] / 2, geo  # low learning rates were the good ones


def test_crashes_are_told_as_bad_as_the_worst_result():
    import optuna

    history = _history(5)  # the fifth crashed
    frozen = replay(history)
    worst = max(t["value"] for t in history if t["value"] is not None)
    assert frozen[4].state == optuna.trial.TrialState.COMPLETE and frozen[4].value == worst
    alone = replay(history[4:])  # nothing trained yet: a plain failure
    assert alone[0].state == optuna.trial.TrialState.FAIL


def test_the_history_is_read_back_from_the_store(tmp_path):
    """The sampler's state lives in the run's store: trials written with the children, results
    from their first-seed evaluations, only earlier generations."""
    store = RunStore(tmp_path / "runs", "r1")
    store.create({"experiment": {}})
    mutator_ctx = _ctx("tiny")

    def child(cid: str, gen: int, status: str | None, loss: float | None = None) -> dict:
        result = HPOMutator("tpe", np.random.default_rng(len(cid) + gen)).mutate(mutator_ctx)
        store.put_candidate(CandidateRecord(id=cid, run_id="r1", generation=gen,
                                            parents=["g000"], code_sha=store.put_code(result.child),
                                            mutator="hpo-tpe"))
        tuning.put_trial(store, cid, result.trial)
        tuning.put_trial(store, cid, result.trial)  # a retry writes the same bytes: fine
        if status is not None:
            store.put_evaluation(EvaluationRecord(candidate_id=cid, code_sha="x", seed=7,
                                                  budget="tiny", status=status, val_loss=loss))
        return result.trial

    t1 = child("g001-c01", 1, "ok", 2.1)
    t2 = child("g001-c02", 1, "oom")
    child("g001-c03", 1, None)  # never trained (a run stopped before it)
    child("g002-c01", 2, "ok", 1.9)
    store.put_candidate(CandidateRecord(id="g001-c02-r1", run_id="r1", generation=1,
                                        parents=["g001-c02"], code_sha="", mutator="rules"))
    seen = tuning.history(store, 2, first_seed=7)
    assert [(h["params"], h["value"]) for h in seen] == [
        (t1["params"], 2.1), (t2["params"], None)]
    assert len(tuning.history(store, 3, first_seed=7)) == 3
    assert tuning.history(store, 1, first_seed=7) == []
    assert tuning.history(store, 2, first_seed=8) == []  # results only from the first seed


def test_the_names_are_accepted_and_listed():
    assert make_experiment(mutator="hpo-tpe").mutator == "hpo-tpe"
    with pytest.raises(UserError, match="hpo-tpe|hpo-random"):
        make_experiment(mutator="hpo-cmaes")


def test_optuna_loads_only_when_a_tuned_search_runs():
    code = ("import sys, darwin.mutation, darwin.engine.candidates, darwin.mutation.hpo; "
            "assert 'optuna' not in sys.modules, 'optuna at import time'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_seed_program_without_constants_is_refused_before_the_run_starts(tmp_path):
    from darwin.engine.runs import create_run

    program = tmp_path / "mine.py"
    program.write_text("LR = 3e-4  # nothing a tuned search recognises\n")
    with pytest.raises(UserError, match="--mutator hpo-tpe: mine.py exposes none of the constants"):
        create_run(str(tmp_path / "runs"), make_experiment(mutator="hpo-tpe"), program)
    assert not (tmp_path / "runs").exists()  # nothing was stored
    assert create_run(str(tmp_path / "runs"), make_experiment(mutator="offline"), program)
