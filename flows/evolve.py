"""The run as a Prefect flow: generation 0 (the seed program over S seeds: the noise band),
then generation after generation, resuming after the last committed one, with a review between
generations when one is due (the model's requests, a review gate), then the test split.
"""

from __future__ import annotations

import time
from dataclasses import asdict

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from darwin.engine import (
    SEED_ID,
    Experiment,
    ReviewPolicy,
    RunRef,
    engine_for,
    final_candidates,
    generation_zero,
    shared_pool,
)
from darwin.flows.generation import generation, train_and_score
from darwin.flows.review import hold_review
from darwin.memory import GenerationRecord, io_stats
from darwin.tasks import publish as ui
from darwin.tasks import steps

# With a pool, the children one orchestrator keeps in flight at once (each a thread that only
# waits; the watcher polls for all of them with three requests): docs/scale.md.
POOL_IN_FLIGHT = 256


def _generation_zero(ref: RunRef) -> GenerationRecord:
    started, io_start = time.monotonic(), asdict(io_stats())
    engine = engine_for(ref)
    engine.candidates.add_seed_program(engine.store.code(engine.store.meta()["seed_code_sha"]))
    seeds = engine.seeds()  # S, and at least min_runs: the seed is a measured member
    evals = train_and_score(ref, [SEED_ID] * len(seeds), seeds)
    record = generation_zero(ref.run_id, evals, time.monotonic() - started,
                             ref.experiment.min_runs)
    steps.commit(ref, 0, record, io_start)
    ui.publish(ref.run_id, ref.storage_url, 0)
    ui.publish_latest(ref.run_id, ref.storage_url, 0)  # on the run's own page
    return record


@flow(name="evolve", flow_run_name="{run_id}", log_prints=True)
def evolve(experiment: Experiment, run_id: str, storage_url: str,
           review: ReviewPolicy | None = None, sandbox: str | None = None,
           slots: int | None = None) -> GenerationRecord:
    """Generations until the plan (or a review) ends the run. ``sandbox`` and ``slots``: what
    the run's launch chose (None: the DARWIN_* settings)."""
    ref = RunRef(run_id=run_id, storage_url=storage_url, experiment=experiment, sandbox=sandbox,
                 slots=slots)
    engine = engine_for(ref)
    pool = shared_pool(experiment.device, engine.budget.threads, engine.slots)
    steps.ensure_slot_limit(experiment.device, pool.size)
    runner = ThreadPoolTaskRunner(max_workers=POOL_IN_FLIGHT if experiment.pool
                                  else 2 * pool.size)
    head = engine.store.head()
    last = _generation_zero(ref) if head is None else engine.store.generation(head)
    while True:
        # Between generations (never holding a training slot): a review answered before a
        # crash is not asked again; one the crash cut short is.
        hold_review(ref, last.generation, review or ReviewPolicy())
        if last.generation >= engine.humans.planned_generations():  # a gate may stop or extend
            break
        last = generation.with_options(task_runner=runner)(
            experiment, run_id, storage_url, last.generation + 1, sandbox=sandbox, slots=slots)
        ui.publish_latest(run_id, storage_url, last.generation)  # on the run's own page
    last = engine.humans.amended(last)  # a gate's vetoes and pins count for the final claims too
    # Final claims use the test split, which selection never saw: the best and the seed.
    steps.final_test.map(unmapped(ref), final_candidates(last, experiment.min_runs)).result()
    ui.publish_status(engine.store, alive=False)  # as it stands once this process lets go
    return last
