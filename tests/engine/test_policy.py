"""The generation's decisions (darwin.engine.policy), from records alone: no Prefect, no
training, milliseconds."""

from __future__ import annotations

import pytest

from darwin.engine.policy import (
    SeedFailed,
    apply_repairs,
    final_candidates,
    generation_zero,
    to_confirm,
    to_repair,
    to_rerun,
)
from darwin.engine.selection import Scored
from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord, Member


def cand(cid: str, sha: str = "abc") -> CandidateRecord:
    return CandidateRecord(id=cid, run_id="r", generation=1, code_sha=sha)


def ev(cid: str, loss: float | None, seed: int = 0, status: str | None = None) -> EvaluationRecord:
    return EvaluationRecord(candidate_id=cid, code_sha="abc", seed=seed, budget="tiny",
                            status=status or ("ok" if loss is not None else "crashed"),
                            val_loss=loss)


def test_only_failed_children_with_a_program_are_repaired():
    final = [(cand("c0"), ev("c0", 2.0)), (cand("c1"), ev("c1", None)),
             (cand("c2", sha=""), ev("c2", None, status="no_child")),
             (cand("c3"), ev("c3", None, status="timeout"))]
    assert to_repair(final) == [1, 3]


def test_a_repair_replaces_its_child_only_when_it_made_a_program():
    final = [(cand("c0"), ev("c0", None)), (cand("c1"), ev("c1", None))]
    fixes = [cand("c0-r1"), cand("c1-r1", sha="")]
    out = apply_repairs(final, [0, 1], fixes, [ev("c0-r1", 1.9), ev("c1-r1", None)])
    assert [c.id for c, _ in out] == ["c0-r1", "c1"]
    assert out[0][1].val_loss == 1.9


def test_reruns_go_to_the_best_children_that_beat_the_worst_member():
    population = [Scored("seed", [2.0, 2.0]), Scored("m1", [1.8])]
    final = [(cand("a"), ev("a", 1.7)), (cand("b"), ev("b", 1.9)), (cand("c"), ev("c", 2.1)),
             (cand("d"), ev("d", None))]
    assert to_rerun(population, final, reruns=2, more_seeds=[1, 2, 3], min_runs=3) == [
        ("a", 1), ("a", 2), ("b", 1), ("b", 2)]
    assert to_rerun(population, final, reruns=1, more_seeds=[1, 2], min_runs=2) == [("a", 1)]
    assert to_rerun(population, final, reruns=0, more_seeds=[1], min_runs=3) == []
    assert to_rerun(population, [(cand("c"), ev("c", 2.1))], 2, [1], 3) == []  # none beat


def test_generation_zero_is_the_seed_with_its_noise_band():
    record = generation_zero("r", [ev("seed", 2.02, seed=1), ev("seed", 2.00, seed=0)], 3.0)
    assert record.population[0].losses == [2.00, 2.02]  # by seed
    assert record.noise > 0 and record.pareto == ["seed"] and record.generation == 0


def test_generation_zero_refuses_a_seed_program_that_fails():
    with pytest.raises(SeedFailed, match="failed on seed 1: crashed"):
        generation_zero("r", [ev("seed", 2.0, seed=0), ev("seed", None, seed=1)], 1.0)


def test_the_final_test_scores_the_best_and_the_seed_once_each():
    last = GenerationRecord(run_id="r", generation=2, population=[
        Member(candidate_id="g002-c01", losses=[1.9]), Member(candidate_id="seed", losses=[2])])
    assert final_candidates(last) == ["g002-c01", "seed"]


def test_the_test_split_scores_only_a_best_measured_on_min_runs_seeds():
    members = [Member(candidate_id="lucky", losses=[1.9]),
               Member(candidate_id="g002-c01", losses=[2.0, 2.0, 2.1]),
               Member(candidate_id="seed", losses=[2.2, 2.2, 2.2])]
    last = GenerationRecord(run_id="r", generation=2, population=members, min_runs=3)
    assert final_candidates(last) == ["g002-c01", "seed"]
    # A record from before min_runs was recorded: the run's own setting decides.
    old = GenerationRecord(run_id="r", generation=2, population=members)
    assert final_candidates(old) == ["lucky", "seed"]
    assert final_candidates(old, min_runs=3) == ["g002-c01", "seed"]
    alone = GenerationRecord(run_id="r", generation=2, population=members[:1], min_runs=3)
    assert final_candidates(alone) == ["seed"]  # no measured best: only the seed


def test_a_one_seed_child_that_would_be_best_is_confirmed_on_min_runs_seeds():
    """Issue #34: c00 was re-run (3 runs, 3.3165), c03 looked better on one seed (3.3061)."""
    population = [Scored("seed", [3.4865] * 3)]
    children = [Scored("c00", [3.3065, 3.3165, 3.3265]), Scored("c03", [3.3061]),
                Scored("c01", [3.40]), Scored("c02", [])]
    assert to_confirm(population, children, [1, 2, 3], min_runs=3) == [("c03", 1), ("c03", 2)]
    assert to_confirm(population, children, [1, 2, 3], min_runs=3, done={"c03"}) == []
    assert to_confirm(population, children[1:], [1, 2], min_runs=3) == [  # best first
        ("c03", 1), ("c03", 2), ("c01", 1), ("c01", 2)]
    worse = [children[0], Scored("c03", [3.33])]
    assert to_confirm(population, worse, [1, 2], min_runs=3) == []  # not above c00
    unsafe = [Scored("c03", [3.0], verified=False)]
    assert to_confirm(population, unsafe, [1, 2], min_runs=3) == []  # never selected anyway
    only_seed = GenerationRecord(run_id="r", generation=1,
                                 population=[Member(candidate_id="seed", losses=[2.0])])
    assert final_candidates(only_seed) == ["seed"]
