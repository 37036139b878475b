"""The run store and the selection rules (pure: no Prefect, no sandbox)."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from darwin.engine.selection import Scored, choose_parents, noise_margin, pareto, select
from darwin.memory.records import (
    CandidateRecord,
    GenerationRecord,
    Member,
    code_hash,
    read_candidate,
)
from darwin.memory.store import RunStore, StoreError, list_runs


def test_code_is_content_addressed_and_records_immutable(tmp_path):
    store = RunStore(tmp_path, "run-1")
    store.create({"budget": "tiny"})
    sha = store.put_code("x = 1  \r\n")
    assert sha == code_hash("x = 1\n") and store.put_code("x = 1\n") == sha
    rec = CandidateRecord(id="g001-c00", run_id="run-1", generation=1, code_sha=sha)
    store.put_candidate(rec)
    store.put_candidate(rec)  # the same bytes again (a retry): fine
    with pytest.raises(StoreError, match="immutable"):
        store.put_candidate(rec.model_copy(update={"reasoning": "changed"}))
    assert store.candidate("g001-c00") == rec
    assert list_runs(tmp_path) == ["run-1"]


def test_head_moves_forward_only_and_last(tmp_path):
    store = RunStore(tmp_path, "r")
    assert store.head() is None
    gen = GenerationRecord(run_id="r", generation=0, population=[Member(candidate_id="seed", losses=[2.0])])
    store.commit(gen)
    assert store.head() == 0 and store.generation(0).population[0].candidate_id == "seed"
    store.commit(gen.model_copy())  # the same snapshot: a retry, nothing moves
    assert store.head() == 0
    with pytest.raises(StoreError, match="already committed"):
        store.commit(gen.model_copy(update={"wall_s": 3.0}))


def test_concurrent_commits_lose_nothing(tmp_path):
    errors = []

    def commit(n):
        try:
            RunStore(tmp_path, "r").commit(GenerationRecord(run_id="r", generation=n, population=[]))
        except StoreError as e:
            errors.append(e)

    threads = [threading.Thread(target=commit, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    store = RunStore(tmp_path, "r")
    assert all(store.generation(n).generation == n for n in range(8))  # every snapshot kept
    assert store.head() == 7  # HEAD never moves backwards, whatever the order of commits
    assert all("already committed" in str(e) for e in errors)


def test_old_and_future_schema_versions():
    data = {"schema_version": 1, "id": "a", "run_id": "r", "generation": 0, "code_sha": "x"}
    assert read_candidate(data).id == "a"
    with pytest.raises(ValueError, match="newer"):
        read_candidate({**data, "schema_version": 99})


def test_noise_margin_is_two_sigma_of_the_seed():
    assert noise_margin([2.0, 2.02, 2.04]) == pytest.approx(2 * 0.02)
    assert noise_margin([2.0]) == 0.0


def test_a_child_replaces_a_member_only_beyond_the_noise():
    pop = [Scored("a", [2.00, 2.00, 2.00]), Scored("b", [2.10, 2.10, 2.10])]
    margin = 0.04
    close = Scored("close", [2.08, 2.08, 2.08])  # better than b, but within the noise
    single = Scored("single", [1.5])  # far better, but one run only
    clear = Scored("clear", [2.01, 2.02, 2.03])  # beats b by 0.08 > margin over 3 runs
    new, promoted, _ = select(pop, [close, single], size=2, keep=1, margin=margin)
    assert [m.id for m in new] == ["a", "b"] and promoted == []
    new, promoted, _ = select(pop, [close, clear], size=2, keep=1, margin=margin)
    assert [m.id for m in new] == ["a", "clear"] and promoted == ["clear"]


def test_elites_stay_and_empty_slots_fill():
    pop = [Scored("seed", [2.0, 2.0, 2.0])]
    kids = [Scored("k1", [2.3]), Scored("k2", [2.1]), Scored("k3", [])]
    new, promoted, filled = select(pop, kids, size=3, keep=1, margin=0.05)
    assert [m.id for m in new] == ["seed", "k2", "k1"]
    assert promoted == [] and filled == ["k2", "k1"]  # they displaced nobody


def test_parents_are_seeded_and_cross_agent():
    pop = [Scored(f"m{i}", [2.0 + i / 10]) for i in range(4)]
    a = choose_parents(pop, 20, np.random.default_rng(3))
    assert a == choose_parents(pop, 20, np.random.default_rng(3))
    assert all(t != p for t, p in a)
    counts = {m.id: sum(t == m.id for t, _ in a) for m in pop}
    assert counts["m0"] >= counts["m3"]
    assert choose_parents(pop[:1], 2, np.random.default_rng(0)) == [("m0", None)] * 2


def test_an_unverified_child_is_never_promoted():
    """Scored without a sandbox (--sandbox unsafe), its probes prove nothing."""
    pop = [Scored("seed", [2.0, 2.0, 2.0])]
    unsafe = Scored("unsafe", [1.0, 1.0, 1.0], verified=False)
    safe = Scored("safe", [1.5, 1.5, 1.5])
    new, _, filled = select(pop, [unsafe, safe], size=3, keep=1, margin=0.1)
    assert filled == ["safe"] and "unsafe" not in [m.id for m in new]
    new, _, filled = select(pop, [Scored("unsafe", [1.0] * 3)], size=3, keep=1, margin=0.1)
    assert filled == ["unsafe"]  # the control: verified, the same child takes the slot


def test_mfu_counts_in_the_pareto_set_only_when_not_worse_than_the_seed():
    c = [Scored("good", [2.0], mfu=0.1, mfu_measured=True),
         Scored("waster", [2.5], mfu=0.9, mfu_measured=True)]
    assert sorted(pareto(c)) == ["good", "waster"]  # without the seed's bound
    assert pareto(c, seed_loss=2.1, margin=0.05) == ["good"]


def test_pareto_front():
    c = [Scored("fast", [2.2], mfu=0.5, mfu_measured=True),
         Scored("good", [2.0], mfu=0.3, mfu_measured=True),
         Scored("bad", [2.3], mfu=0.2, mfu_measured=True)]
    assert sorted(pareto(c)) == ["fast", "good"]


def test_an_estimated_mfu_never_enters_the_pareto_set():
    """FLOPs shown inside the candidate's own process can be faked (issue #31): an estimated MFU
    is reported, never selected on; the same numbers measured from outside do count."""
    estimated = [Scored("fast", [2.2], mfu=0.5), Scored("good", [2.0], mfu=0.3)]
    assert pareto(estimated) == ["good"]
    measured = [Scored(c.id, c.losses, mfu=c.mfu, mfu_measured=True) for c in estimated]
    assert sorted(pareto(measured)) == ["fast", "good"]


def test_offline_children_do_not_repeat_an_earlier_generation(tmp_path):
    from darwin.engine.engine import Engine
    from darwin.engine.experiment import Experiment
    from darwin.evaluation.training import seed_program
    from darwin.memory.records import CandidateRecord
    from darwin.mutation.base import MutationContext
    from darwin.mutation.offline import OfflineMutator
    from darwin.settings import Settings

    store = RunStore(tmp_path / "runs", "r")
    store.create({})
    engine = Engine(store, Experiment(budget="tiny", mutator="offline"),
                    Settings(home=tmp_path), sandbox=None)
    engine.candidates.add_seed_program(seed_program().read_text())
    # Plant, as generation-1 children, exactly what generation 2's slots would draw first.
    ctx = MutationContext(target_program=seed_program().read_text(), budget=engine.budget)
    planted = []
    for i in range(3):
        child = OfflineMutator(np.random.default_rng([0, 2, i])).mutate(ctx).child
        sha = store.put_code(child)
        store.put_candidate(CandidateRecord(id=f"g001-c{i:02d}", run_id="r", generation=1,
                                            parents=["seed"], code_sha=sha, kind="other"))
        planted.append(sha)
    for i in range(3):
        child = engine.candidates.propose(2, i, "seed", None)
        assert child.code_sha and child.code_sha not in planted
