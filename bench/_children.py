"""Children through the real flow, for the benchmarks: Prefect tasks (train, then score, each in a
slot), the sandbox, the trusted scorer and the run store, exactly as `darwin run` does them, for
the seed program on given seeds. Settings come from the environment (DARWIN_HOME, DARWIN_WARM,
DARWIN_SLOTS, DARWIN_SANDBOX) as read when the first run's engine is built."""

from __future__ import annotations

import time

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from darwin.engine.engine import RunRef, engine_for
from darwin.engine.experiment import make_experiment
from darwin.engine.ids import SEED_ID
from darwin.engine.runs import create_run
from darwin.engine.slots import shared_pool
from darwin.evaluation.training import seed_program
from darwin.flows.admin import quiet_prefect
from darwin.flows.generation import train_and_score
from darwin.memory.records import EvaluationRecord
from darwin.settings import get_settings
from darwin.tasks import steps


@flow(name="bench-warm-up")
def _hello() -> int:
    return 1


def start_prefect() -> float:
    """Start (the ephemeral) Prefect before anything is timed; returns how long that took."""
    quiet_prefect()
    started = time.monotonic()
    _hello()
    return time.monotonic() - started


def through_flow(budget: str, seeds: list[int], pool: str | None = None
                 ) -> tuple[float, list[EvaluationRecord], int]:
    """Train and score the seed program once per seed as a run's children (on the workers of
    ``pool`` when given: its deployment is registered first); returns the wall time of the
    flow, the evaluation records and the number of slots used."""
    experiment = make_experiment(budget=budget, mutator="offline", pool=pool)
    if pool:
        from darwin.flows.child import deploy_child

        deploy_child(pool)
    url = get_settings().storage_url
    opened = create_run(url, experiment, seed_program(), {})
    ref = RunRef(run_id=opened.run_id, storage_url=url, experiment=experiment)
    engine = engine_for(ref)
    engine.candidates.add_seed_program(engine.store.code(engine.store.meta()["seed_code_sha"]))
    pool = shared_pool(experiment.device, engine.budget.threads, engine.slots)
    steps.ensure_slot_limit(experiment.device, pool.size)

    @flow(name="bench-children",
          task_runner=ThreadPoolTaskRunner(max_workers=64 if experiment.pool else 2 * pool.size))
    def children() -> list[EvaluationRecord]:
        return train_and_score(ref, [SEED_ID] * len(seeds), seeds)

    started = time.monotonic()
    records = children()
    wall = time.monotonic() - started
    bad = [r for r in records if r.status != "ok"]
    assert not bad, bad[0].detail
    return wall, records, pool.size
