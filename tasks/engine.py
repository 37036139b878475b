"""Thin Prefect tasks around the engine's steps: one side effect each, no logic of their own.

Prefect's result caching is off (NO_CACHE): the engine's own store and training cache decide
what is reused, keyed on what actually matters (code hash, budget, seed, scorer version).
Candidate failures are returned as data; only infrastructure problems raise.
"""

from __future__ import annotations

import os
import socket

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from darwin.engine.faults import checkpoint
from darwin.engine.slots import shared_pool
from darwin.engine.steps import Engine
from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord
from darwin.memory.store import io_stats
from darwin.sandbox.limits import pid_alive


@task(name="mutate", task_run_name="mutate-{gen:03d}-{index:02d}", cache_policy=NO_CACHE)
def propose(engine: Engine, gen: int, index: int, target: str, proposer: str | None
            ) -> CandidateRecord:
    return engine.propose(gen, index, target, proposer)


@task(name="repair", task_run_name="repair-{broken.id}", cache_policy=NO_CACHE)
def repair(engine: Engine, broken: CandidateRecord, evaluation: EvaluationRecord, attempt: int
           ) -> CandidateRecord:
    return engine.repair(broken, evaluation, attempt)


SLOT_LIMIT_PREFIX = "darwin-train-"


def slot_limit_name(device: str) -> str:
    """The slots are this machine's cores (or GPU), owned by this orchestrator: the limit is named
    after it, so a dead orchestrator's unreturned slots can never block a live one (Prefect keeps
    leases in the server's memory: an embedded server that died with its run took them along,
    leaving the slot count behind)."""
    return f"{SLOT_LIMIT_PREFIX}{device}-{socket.gethostname()}-{os.getpid()}"


def ensure_slot_limit(device: str, slots: int) -> int:
    """Create this orchestrator's concurrency limit; delete those of dead orchestrators on this
    host. Returns how many were deleted."""
    from prefect.client.orchestration import get_client

    host = socket.gethostname()
    removed = 0
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(slot_limit_name(device), slots)
        for limit in client.read_global_concurrency_limits(limit=200):
            owner = limit.name.rsplit("-", 1)
            if (limit.name.startswith(SLOT_LIMIT_PREFIX) and f"-{host}-" in limit.name
                    and owner[-1].isdigit() and not pid_alive(int(owner[-1]))):
                client.delete_global_concurrency_limit_by_name(limit.name)
                removed += 1
    return removed


@task(name="train", task_run_name="train-{cid}-s{seed}", cache_policy=NO_CACHE)
def train_and_score(engine: Engine, cid: str, seed: int) -> EvaluationRecord:
    # How many train at once: the Prefect concurrency limit. Which cores: the slot pool.
    # The sandbox's deadline is the real time limit: a Prefect timeout cannot interrupt it.
    if engine.store.evaluation(cid, seed) is not None:
        return engine.store.evaluation(cid, seed)  # nothing to train: no slot needed
    # The lease is renewed while held; a short one lets the slot of an orchestrator killed with -9
    # come back within about a minute (an hour-long lease blocked `--resume` for that hour).
    with concurrency(slot_limit_name(engine.experiment.device), occupy=1, lease_duration=60):
        slots = shared_pool(engine.experiment.device, engine.budget.threads)
        cpus = slots.acquire()
        try:
            return engine.evaluate(cid, seed, cpus=cpus)
        finally:
            slots.release(cpus)


@task(name="commit", cache_policy=NO_CACHE)
def commit(engine: Engine, record: GenerationRecord) -> None:
    checkpoint("commit")
    engine.keep_models([m.candidate_id for m in record.population])
    record.storage = io_stats().minus(engine.io_start)  # the generation's, up to this commit
    engine.store.commit(record)


@task(name="final-test", task_run_name="test-split-{cid}", cache_policy=NO_CACHE)
def final_test(engine: Engine, cid: str) -> dict:
    from darwin.engine.steps import final_test as run_final_test

    return run_final_test(engine, cid)
