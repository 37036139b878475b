"""A tuned hyper-parameter baseline through a real `tiny` run: every child is the seed with the
sampler's values, trained and scored; the sampler's state is in the store, and a run killed in
generation 2 resumes with it (told generation 1's results) instead of starting over."""

from __future__ import annotations

import json

import numpy as np
import pytest

from darwin.engine import tuning
from darwin.engine.ids import parse
from darwin.evaluation.budgets import get_budget
from darwin.memory.store import RunStore, list_runs
from darwin.mutation.answers import ChangeKind
from darwin.mutation.base import MutationContext
from darwin.mutation.hpo import HPOMutator
from tests.conftest import cli_env, run_darwin

pytestmark = pytest.mark.sandbox

RUN = ["run", "--budget", "tiny", "--generations", "2", "--population", "2", "--keep", "1",
       "--children", "1", "--seeds", "2", "--reruns", "0", "--repair-tries", "0",
       "--mutator", "hpo-tpe", "--seed", "5", "--no-review", "--json"]


def test_hpo_tpe_run_is_killed_resumes_and_continues_its_sampler(prefect_server, sandbox,
                                                                 tmp_path):
    env = cli_env(tmp_path / "home", prefect=prefect_server, DARWIN_SANDBOX="local")
    # Killed as generation 2's child is proposed (the second proposal), before it is stored.
    killed = run_darwin(RUN, {**env, "DARWIN_FAULT": "mutate:2:KILL"}, timeout=600)
    assert killed.returncode != 0
    (run_id,) = list_runs(tmp_path / "home" / "runs")
    store = RunStore(tmp_path / "home" / "runs", run_id)
    assert store.head() == 1
    assert [c.id for c in store.candidates() if c.generation == 2] == []
    first = {"g001-c00": tuning.trial(store, "g001-c00")}
    assert all(first.values())

    resumed = run_darwin(["run", "--resume", run_id, "--json"], env, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["generations"] == 2

    seed_code = store.code(store.candidate("seed").code_sha)
    children = [c for c in store.candidates() if c.generation > 0]
    assert sorted(c.id for c in children) == ["g001-c00", "g002-c00"]
    for child in children:
        # A real edit of the seed, trained and scored like any child.
        assert child.mutator == "hpo-tpe" and child.kind == ChangeKind.hyperparameter.value
        assert child.parents == ["seed"] and child.diff.startswith("--- parent/train.py")
        assert store.code(child.code_sha) != seed_code
        evaluation = store.evaluation(child.id, 5)  # trained and scored (or failed doing so)
        assert evaluation is not None and evaluation.status != "no_child"
        assert evaluation.status != "ok" or evaluation.val_loss > 0
    # Generation 1's trials survived the kill unchanged, and generation 2 was told their results.
    assert {cid: tuning.trial(store, cid) for cid in first} == first
    told = tuning.history(store, 2, first_seed=5)
    assert len(told) == 1 + sum(len(t["rejected"]) for t in first.values())
    for cid in ("g002-c00",):
        trial = tuning.trial(store, cid)
        assert trial["told"] == len(told)
        assert f"told {len(told)} earlier result(s)" in store.candidate(cid).reasoning
        # What the resumed run proposed is exactly what the stored history gives a fresh
        # sampler: its state is the store's, not the dead process' memory.
        at = parse(cid)
        again = HPOMutator("tpe", np.random.default_rng([5, at.generation, at.index])).mutate(
            MutationContext(target_program=seed_code, seed_program=seed_code,
                            budget=get_budget("tiny"), trials=told))
        assert again.trial == trial
        assert store.code(store.candidate(cid).code_sha) == again.child
