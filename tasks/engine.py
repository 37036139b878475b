"""Thin Prefect tasks around the engine's steps: one side effect each, no logic of their own.

Prefect's result caching is off (NO_CACHE): the engine's own store and training cache decide
what is reused, keyed on what actually matters (code hash, budget, seed, scorer version).
Candidate failures are returned as data; only infrastructure problems raise.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE

from darwin.engine import Engine
from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord
from darwin.slots import shared_pool


@task(name="mutate", task_run_name="mutate-{gen:03d}-{index:02d}", cache_policy=NO_CACHE)
def propose(engine: Engine, gen: int, index: int, target: str, proposer: str | None
            ) -> CandidateRecord:
    return engine.propose(gen, index, target, proposer)


@task(name="repair", task_run_name="repair-{broken.id}", cache_policy=NO_CACHE)
def repair(engine: Engine, broken: CandidateRecord, evaluation: EvaluationRecord, attempt: int
           ) -> CandidateRecord:
    return engine.repair(broken, evaluation, attempt)


@task(name="train", task_run_name="train-{cid}-s{seed}", cache_policy=NO_CACHE)
def train_and_score(engine: Engine, cid: str, seed: int) -> EvaluationRecord:
    # The sandbox's deadline is the real limit: a Prefect timeout cannot interrupt blocking work.
    slots = shared_pool(engine.experiment.device, engine.budget.threads)
    cpus = slots.acquire()
    try:
        return engine.evaluate(cid, seed, cpus=cpus)
    finally:
        slots.release(cpus)


@task(name="commit", cache_policy=NO_CACHE)
def commit(engine: Engine, record: GenerationRecord) -> None:
    engine.store.commit(record)
