"""One generation as a Prefect flow: select parents -> mutate (mapped) -> train and score
(mapped) -> repair the failures (bounded) -> re-run the best children -> select -> commit.

The flow holds control flow only; every decision lives in the core package (darwin.engine.steps,
darwin.engine.selection). A crashed child never fails the generation; an infrastructure failure raises
before anything is committed, so the run resumes from the last committed generation.
"""

from __future__ import annotations

import time

import numpy as np
from prefect import flow, unmapped
from prefect.futures import as_completed

from darwin.engine.experiment import Experiment
from darwin.engine.selection import choose_parents, pareto, select
from darwin.engine.steps import build_engine
from darwin.memory.records import GenerationRecord, Member
from darwin.tasks import engine as steps
from darwin.tasks import publish as ui


def _train_all(engine, ids, seed, progress, done_before, total):
    """Train (mapped), moving the generation's progress artifact as each child finishes."""
    futures = steps.train_and_score.map(unmapped(engine), ids, seed)
    done = done_before
    for _ in as_completed(list(futures)):
        done += 1
        ui.set_progress(progress, 100.0 * done / total)
    return futures.result(), done


@flow(name="generation", flow_run_name="gen-{gen:03d}", log_prints=True)
def generation(experiment: Experiment, run_id: str, store_url: str, gen: int) -> GenerationRecord:
    started = time.monotonic()
    engine = build_engine(run_id, store_url, experiment)
    exp = experiment
    first_seed, *more_seeds = engine.seeds()
    previous = engine.store.generation(gen - 1)
    population = [engine.scored(m.candidate_id) for m in previous.population]

    # 1. parents: agent `proposer` rewrites agent `target`'s program.
    pairs = choose_parents(population, exp.children, np.random.default_rng([exp.seed, gen, 7]))
    children = steps.propose.map(
        unmapped(engine), gen, list(range(exp.children)),
        [t for t, _ in pairs], [p for _, p in pairs],
    ).result()

    # 2. train and score every child once, in parallel slots.
    progress = ui.start_progress(run_id, gen)
    planned = exp.children + exp.reruns * (exp.min_runs - 1)
    evals, done = _train_all(engine, [c.id for c in children], first_seed, progress, 0, planned)

    # 3. repair what failed, each try a new candidate whose parent is the broken one.
    final = list(zip(children, evals))
    for attempt in range(1, exp.repair_tries + 1):
        broken = [(i, c, e) for i, (c, e) in enumerate(final) if e.status != "ok" and c.code_sha]
        if not broken:
            break
        fixes = steps.repair.map(unmapped(engine), [c for _, c, _ in broken],
                                 [e for _, _, e in broken], attempt).result()
        planned += len(fixes)
        fixed, done = _train_all(engine, [f.id for f in fixes], first_seed, progress, done,
                                 planned)
        for (i, _, _), f, e in zip(broken, fixes, fixed):
            if f.code_sha:
                final[i] = (f, e)

    # 4. re-run the most promising children on more seeds, so promotion is beyond noise.
    worst = max(p.fitness for p in population)
    ok = sorted((e.val_loss, c.id) for c, e in final if e.val_loss is not None)
    promising = [cid for loss, cid in ok if loss < worst][: exp.reruns]
    if promising and more_seeds:
        reruns = [(cid, s) for cid in promising for s in more_seeds[: exp.min_runs - 1]]
        futures = steps.train_and_score.map(unmapped(engine), [c for c, _ in reruns],
                                            [s for _, s in reruns])
        for _ in as_completed(list(futures)):
            done += 1
            ui.set_progress(progress, 100.0 * done / planned)

    # 5. survivors, then commit atomically.
    scored = [engine.scored(c.id) for c, e in final if e.val_loss is not None]
    new_pop, promoted = select(population, scored, exp.population, exp.keep, previous.noise,
                               exp.min_runs)
    record = GenerationRecord(
        run_id=run_id, generation=gen,
        population=[Member(candidate_id=m.id, losses=m.losses, mfu=m.mfu) for m in new_pop],
        children=[c.id for c, _ in final], promoted=promoted, noise=previous.noise,
        pareto=pareto(new_pop + scored, engine.seed_fitness(), previous.noise),
        wall_s=time.monotonic() - started,
    )
    steps.commit(engine, record)
    ui.set_progress(progress, 100.0)
    ui.publish(engine.store, gen)
    best = new_pop[0]
    print(f"gen {gen}: best {best.id} val loss {best.fitness:.4f}; promoted {promoted or 'none'}")
    return record
