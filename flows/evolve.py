"""The run as a Prefect flow: generation 0 (the seed program over S seeds: the noise band),
then generation after generation, resuming after the last committed one.
"""

from __future__ import annotations

import statistics
import time

from prefect import flow, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from darwin.engine.experiment import Experiment
from darwin.engine.ids import SEED_ID
from darwin.engine.selection import noise_margin
from darwin.engine.slots import shared_pool
from darwin.engine.steps import Engine, build_engine
from darwin.flows.generation import generation
from darwin.memory.records import GenerationRecord, Member
from darwin.tasks import engine as steps
from darwin.tasks import publish as ui


def _generation_zero(engine: Engine, seed_source: str) -> GenerationRecord:
    started = time.monotonic()
    engine.add_seed_program(seed_source)
    seeds = engine.seeds()[: engine.experiment.seeds]
    evals = steps.train_and_score.map(unmapped(engine), SEED_ID, seeds).result()
    failed = [e for e in evals if e.val_loss is None]
    if failed:
        raise RuntimeError(
            f"the seed program failed on seed {failed[0].seed}: {failed[0].status} "
            f"{failed[0].detail}; it must train before it can evolve")
    losses = [e.val_loss for e in sorted(evals, key=lambda e: e.seed)]
    mfus = [e.mfu for e in evals if e.mfu is not None]
    record = GenerationRecord(
        run_id=engine.store.run_id, generation=0,
        population=[Member(candidate_id=SEED_ID, losses=losses,
                           mfu=statistics.fmean(mfus) if mfus else None)],
        noise=noise_margin(losses), pareto=[SEED_ID], wall_s=time.monotonic() - started,
    )
    steps.commit(engine, record)
    ui.publish(engine.store, 0)
    return record


@flow(name="evolve", flow_run_name="{run_id}", log_prints=True)
def evolve(experiment: Experiment, run_id: str, store_url: str) -> GenerationRecord:
    engine = build_engine(run_id, store_url, experiment)
    slots = shared_pool(experiment.device, engine.budget.threads)
    steps.ensure_slot_limit(experiment.device, slots.size)
    runner = ThreadPoolTaskRunner(max_workers=2 * slots.size)
    head = engine.store.head()
    if head is None:
        seed_source = engine.store.code(engine.store.meta()["seed_code_sha"])
        last = _generation_zero(engine, seed_source)
        head = 0
    else:
        last = engine.store.generation(head)
    for gen in range(head + 1, experiment.generations + 1):
        last = generation.with_options(task_runner=runner)(experiment, run_id, store_url, gen)
    # Final claims use the test split, which selection never saw: the best and the seed.
    best = last.population[0].candidate_id
    steps.final_test.map(unmapped(engine), sorted({best, SEED_ID})).result()
    return last
