"""The design card's steps as Prefect tasks, one side effect each and no logic of their own:
prompt construction, LLM mutation, sandboxed training, benchmarking (trusted scoring), repair,
selection and commit, mapped per child where per child.

Tasks take ids and settings (``RunRef``: the run's id, its store URL, the experiment, and the
sandbox and slot count when given), never live objects: each process rebuilds its engine from
them (once per process), so a task could run anywhere and the UI shows readable parameters.
Prefect's result caching is off (NO_CACHE): the run store and the training cache decide what is
reused, keyed on what matters (code hash, budget, seed, scorer version). Candidate failures are
returned as data; only infrastructure problems raise.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.concurrency.sync import concurrency

from darwin.engine import RunRef, checkpoint, engine_for, parse, shared_pool, warm_gate
from darwin.memory import CandidateRecord, EvaluationRecord, GenerationRecord, IOStats, io_stats
from darwin.mutation import MutationContext
from darwin.sandbox import pid_alive


@task(name="prompt", task_run_name="prompt-{cid}", cache_policy=NO_CACHE)
def prompt(ref: RunRef, cid: str, target: str, proposer: str | None) -> MutationContext | None:
    at = parse(cid)
    return engine_for(ref).candidates.prompt(at.generation, at.index, target, proposer)


@task(name="mutate", task_run_name="mutate-{cid}", cache_policy=NO_CACHE)
def mutate(ref: RunRef, cid: str, target: str, proposer: str | None,
           ctx: MutationContext | None) -> CandidateRecord:
    at = parse(cid)
    return engine_for(ref).candidates.mutate(at.generation, at.index, target, proposer, ctx)


@task(name="repair", task_run_name="repair-{cid}-r{attempt}", cache_policy=NO_CACHE)
def repair(ref: RunRef, cid: str, attempt: int) -> CandidateRecord:
    return engine_for(ref).candidates.repair_by_id(cid, attempt)


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


@contextlib.contextmanager
def _slot(engine, cid: str, seed: int):
    """A slot: its cores from this process's slot pool, which decides who runs next (a queue:
    a freed slot is taken at once), then the Prefect concurrency limit of the same size, which
    is then always free and shows the slots in the UI. Asked first, the limit made waiters poll
    the server, which tells them to come back after about the average slot occupancy (measured:
    freed slots idle 3-12 s, 20-35 s of each cpu generation). The lease is renewed while held;
    a short one lets the slot of an orchestrator killed with -9 come back within about a minute
    (an hour-long lease blocked `--resume` for that hour)."""
    asked = time.monotonic()
    slots = shared_pool(engine.experiment.device, engine.budget.threads, engine.slots)
    cpus = slots.acquire()
    try:
        with concurrency(slot_limit_name(engine.experiment.device), occupy=1, lease_duration=60):
            engine.evaluations.note_wait(cid, seed, time.monotonic() - asked)
            yield cpus
    finally:
        slots.release(cpus)


@contextlib.contextmanager
def _warm_slot(engine, cid: str, seed: int, prestart):
    """A slot, and what ``prestart()`` started while this task waited for it (None when the
    engine does not warm). One pre-started sandbox per slot at most: its gate is held from
    before the start until the slot is ours, so the next child of every slot, and no more,
    waits warm."""
    if not engine.warming:
        with _slot(engine, cid, seed) as cpus:
            yield cpus, None
        return
    gate = warm_gate(engine.experiment.device, engine.budget.threads, engine.slots)
    gate.acquire()
    gated, held = True, None
    try:
        held = prestart()
        with _slot(engine, cid, seed) as cpus:
            gate.release()
            gated = False
            yield cpus, held
    finally:
        if gated:
            gate.release()
        if held is not None:
            held.close()  # stops it if it was never used; nothing left to do otherwise


@task(name="train", task_run_name="train-{cid}-s{seed}", cache_policy=NO_CACHE)
def train(ref: RunRef, cid: str, seed: int) -> str:
    """Train in the sandbox (the sandbox's deadline is the real time limit: a Prefect timeout
    cannot interrupt it). Returns what happened: trained, or why nothing had to."""
    engine = engine_for(ref)
    if (known := engine.evaluations.needs_training(cid, seed)) is not None:
        return known  # nothing to train: no slot needed
    evaluations = engine.evaluations
    with _warm_slot(engine, cid, seed, lambda: evaluations.prestart_training(cid, seed)) as (
            cpus, pre):
        return evaluations.train(cid, seed, cpus=cpus, prestarted=pre)


@task(name="score", task_run_name="score-{cid}-s{seed}", cache_policy=NO_CACHE)
def score(ref: RunRef, cid: str, seed: int, trained: str) -> EvaluationRecord:
    """The trusted benchmark of what the training left (``trained``: the train task's outcome,
    which also makes this task wait for it)."""
    engine = engine_for(ref)
    if (known := engine.store.evaluation(cid, seed)) is not None:
        return known
    evaluations = engine.evaluations
    with _warm_slot(engine, cid, seed, lambda: evaluations.prestart_scoring(cid, seed)) as (
            cpus, pre):
        return evaluations.score(cid, seed, cpus=cpus, prestarted=pre)


@task(name="select", task_run_name="select-g{gen:03d}", cache_policy=NO_CACHE)
def select(ref: RunRef, gen: int, children: list[str], started_at: float) -> GenerationRecord:
    return engine_for(ref).select(gen, children, started_at)


@task(name="commit", task_run_name="commit-g{gen:03d}", cache_policy=NO_CACHE)
def commit(ref: RunRef, gen: int, record: GenerationRecord, io_start: dict) -> None:
    checkpoint("commit")
    engine = engine_for(ref)
    engine.evaluations.keep_models([m.candidate_id for m in record.population])
    record.storage = io_stats().minus(IOStats(**io_start))  # the generation's, to this commit
    engine.store.commit(record)


@task(name="final-test", task_run_name="test-split-{cid}", cache_policy=NO_CACHE)
def final_test(ref: RunRef, cid: str) -> dict:
    return engine_for(ref).evaluations.final_test(cid)
