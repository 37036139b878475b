"""One generation as a Prefect flow: parents -> prompt and mutate (mapped) -> train and score
(mapped) -> repair the failures (bounded) -> re-run the best children, and any one-seed child
that would be the best -> select -> commit.

The flow holds control flow only; every decision lives in the core (darwin.engine.policy,
darwin.engine.selection) and every step in a task that takes ids. A crashed child never fails
the generation; an infrastructure failure raises before anything is committed, so the run
resumes from the last committed generation.
"""

from __future__ import annotations

import time
from dataclasses import asdict

import numpy as np
from prefect import flow, unmapped
from prefect.futures import as_completed

from darwin.engine import (
    Experiment,
    RunRef,
    apply_repairs,
    candidate_id,
    choose_parents,
    engine_for,
    to_confirm,
    to_repair,
    to_rerun,
)
from darwin.memory import EvaluationRecord, GenerationRecord, io_stats
from darwin.tasks import pool, steps
from darwin.tasks import publish as ui


class Progress:
    """The generation's progress artifact, moved as each child is scored."""

    def __init__(self, run_id: str, gen: int, planned: int):
        self.artifact, self.done, self.planned = ui.start_progress(run_id, gen), 0, planned

    def one_done(self) -> None:
        self.done += 1
        ui.set_progress(self.artifact, 100.0 * self.done / max(self.planned, 1))


def train_and_score(ref: RunRef, ids: list[str], seeds: list[int],
                    progress: Progress | None = None) -> list[EvaluationRecord]:
    """Train each (id, seed) in the sandbox, then score it, each score waiting only for its
    own training."""
    trained = None
    if ref.experiment.pool:  # workers elsewhere train and score them (darwin run --pool)
        scored = pool.evaluate_on_pool.map(unmapped(ref), ids, seeds)
    else:
        trained = steps.train.map(unmapped(ref), ids, seeds)
        scored = steps.score.map(unmapped(ref), ids, seeds, trained)
    try:
        for _ in as_completed(list(scored)):
            if progress is not None:
                progress.one_done()
    except BaseException:  # SIGTERM arrives here as Prefect's TerminationSignal, whose
        if ref.experiment.pool:  # teardown would wait for tasks that wait for workers
            pool.stop_waiting()
        raise
    if trained is not None:
        # A training that raised (an infrastructure failure: the store down) leaves its score
        # unrun, whose result would only say "not finished": raise the training's own error.
        trained.result()
    return scored.result()


@flow(name="generation", flow_run_name="gen-{gen:03d}", log_prints=True)
def generation(experiment: Experiment, run_id: str, storage_url: str, gen: int,
               sandbox: str | None = None, slots: int | None = None) -> GenerationRecord:
    started_at, io_start = time.time(), asdict(io_stats())
    ref = RunRef(run_id=run_id, storage_url=storage_url, experiment=experiment, sandbox=sandbox,
                 slots=slots)
    engine, exp = engine_for(ref), experiment
    first_seed, *more_seeds = engine.seeds()
    # The previous population as the humans left it (vetoes, pins), if they reviewed it.
    population = [engine.knowledge.scored(c) for c in engine.humans.population_ids(gen - 1)]

    # 1. parents (agent `proposer` rewrites agent `target`'s program), prompts, mutations.
    pairs = choose_parents(population, exp.children, np.random.default_rng([exp.seed, gen, 7]),
                           exp.min_runs)
    ids = [candidate_id(gen, i) for i in range(exp.children)]
    targets, proposers = [t for t, _ in pairs], [p for _, p in pairs]
    prompts = steps.prompt.map(unmapped(ref), ids, targets, proposers)
    children = steps.mutate.map(unmapped(ref), ids, targets, proposers, prompts).result()

    # 2. train and score every child once, in parallel slots.
    progress = Progress(run_id, gen, exp.children + exp.reruns * (exp.min_runs - 1))
    ids = [c.id for c in children]
    final = list(zip(children, train_and_score(ref, ids, [first_seed] * len(ids), progress)))

    # 3. repair what failed, each try a new candidate whose parent is the broken one.
    for attempt in range(1, exp.repair_tries + 1):
        broken = to_repair(final)
        if not broken:
            break
        fixes = steps.repair.map(unmapped(ref), [final[i][0].id for i in broken],
                                 attempt).result()
        progress.planned += len(fixes)
        fixed = train_and_score(ref, [f.id for f in fixes], [first_seed] * len(fixes), progress)
        final = apply_repairs(final, broken, fixes, fixed)

    # 4. re-run the most promising children on more seeds, so promotion is beyond noise.
    reruns = to_rerun(population, final, exp.reruns, more_seeds, exp.min_runs)
    if reruns:
        train_and_score(ref, [c for c, _ in reruns], [s for _, s in reruns], progress)
    # 4b. a one-seed child that would be the best is measured on min_runs seeds before the
    # generation commits (the same trainings as re-runs); a confirmed one may lift the bar
    # another must pass, so until none is left (each child at most once).
    done = {c for c, _ in reruns}
    while confirm := to_confirm(population, [engine.knowledge.scored(c.id) for c, _ in final],
                                more_seeds, exp.min_runs, done):
        progress.planned += len(confirm)
        train_and_score(ref, [c for c, _ in confirm], [s for _, s in confirm], progress)
        done |= {c for c, _ in confirm}

    # 5. survivors, then commit atomically.
    record = steps.select(ref, gen, [c.id for c, _ in final], started_at)
    steps.commit(ref, gen, record, io_start)
    ui.set_progress(progress.artifact, 100.0)
    ui.publish(run_id, storage_url, gen)
    best = record.population[0]
    print(f"gen {gen}: best {best.candidate_id} val loss {best.fitness:.4f} over "
          f"{len(best.losses)} seed(s); promoted {record.promoted or 'none'}, "
          f"filled an empty slot {record.filled or 'none'}")
    return record
