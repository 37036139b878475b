"""Synthetic runs for the report tests: records built directly (no training), shaped like a
real run's, with crashes, repairs, cross-agent children, curves, timings and LLM usage."""

from __future__ import annotations

import math

import numpy as np

from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    Member,
    ReviewAnswer,
    ReviewRecord,
)
from darwin.reports.data import RunData

KINDS = ("optimizer", "architecture", "schedule", "regularisation")


def curve(final: float, steps: int = 20) -> list[list[float]]:
    return [[10 * (i + 1), 0.5 * (i + 1), final + 1.5 * math.exp(-i / 4)] for i in range(steps)]


def run(generations: int = 3, children: int = 4, crash_every: int = 3, seed: int = 0,
        run_id: str = "synthetic", llm: bool = True) -> RunData:
    """A run whose child k of generation g crashes when (g + k) % crash_every == 0; the first
    crash of each generation has a repair that scores."""
    rng = np.random.default_rng(seed)
    t = 1_000_000.0
    data = RunData(run_id, meta={"experiment": {"seed": 0, "mutator": "openai" if llm else
                                                "offline", "memory": True, "budget": "tiny"}})

    def evaluate(cid: str, loss: float | None, s: int, start: float) -> None:
        data.evaluations.append(EvaluationRecord(
            candidate_id=cid, code_sha="x", seed=s, budget="tiny",
            status="ok" if loss is not None else "crash", val_loss=loss,
            perplexity=math.exp(loss) if loss is not None else None,
            mfu=0.01 + 0.02 * rng.random() if loss is not None else None,
            train_wall_s=10.0, eval_wall_s=2.0 if loss is not None else None,
            train_started_at=start, scored_at=start + 13.0, queue_wait_s=1.0,
            curve=curve(loss + 0.05) if loss is not None else []))

    data.candidates.append(CandidateRecord(id="seed", run_id=run_id, generation=0, code_sha="x",
                                           mutator="seed", created_at=t))
    for s in (0, 1):
        evaluate("seed", 2.50 + 0.01 * s, s, t + 1)
    data.generations.append(GenerationRecord(run_id=run_id, generation=0, population=[
        Member(candidate_id="seed", losses=[2.50, 2.51])], noise=0.02, wall_s=30.0,
        committed_at=t + 30))
    population = ["seed"]
    best = 2.505
    for g in range(1, generations + 1):
        start = t + 100 * g
        ids = []
        for k in range(children):
            cid = f"g{g:03d}-c{k:02d}"
            parents = [population[k % len(population)]]
            if k == 1 and len(population) > 1:
                parents.append(population[0])  # cross-agent
            data.candidates.append(CandidateRecord(
                id=cid, run_id=run_id, generation=g, parents=parents, code_sha="x",
                mutator="openai" if llm else "offline", kind=KINDS[k % len(KINDS)],
                reasoning=f"try {KINDS[k % len(KINDS)]}", created_at=start + 5, mutate_s=4.0,
                llm_latency_s=[3.5] if llm else [], input_tokens=1200 if llm else 0,
                output_tokens=300 if llm else 0, cost_usd=0.002 if llm else 0.0))
            crashed = (g + k) % crash_every == 0
            loss = None if crashed else best - 0.03 * rng.random() + 0.02
            evaluate(cid, loss, 0, start + 6)
            final = cid
            if crashed and not any(c.endswith("-r1") for c in ids):
                final = f"{cid}-r1"
                data.candidates.append(CandidateRecord(
                    id=final, run_id=run_id, generation=g, parents=[cid], repair_of=cid,
                    code_sha="x", mutator="openai" if llm else "offline",
                    kind=KINDS[k % len(KINDS)], created_at=start + 20, mutate_s=2.0))
                evaluate(final, best + 0.01, 0, start + 21)
            ids.append(final)
        scored = sorted(((c, data.fitness(c)) for c in ids if data.fitness(c) is not None),
                        key=lambda x: x[1])
        members = sorted({*population, *(c for c, _ in scored[:2])},
                         key=lambda c: data.fitness(c))[:2]
        best = min(best, data.fitness(members[0]))
        population = members
        data.generations.append(GenerationRecord(
            run_id=run_id, generation=g,
            population=[Member(candidate_id=c, losses=data.losses(c)) for c in members],
            children=ids, promoted=[c for c in members if c in ids], noise=0.02,
            pareto=members[:1], wall_s=60.0, committed_at=start + 60))
        data.reviews.append(ReviewRecord(run_id=run_id, generation=g, gate=True,
                                         answer=ReviewAnswer(via="no-review"),
                                         defaults_applied=True))
    for cache in ("by_id", "runs"):
        data.__dict__.pop(cache, None)
    return data


def write(data: RunData, root, code=None) -> "RunStore":  # noqa: F821
    """``data`` as a run in a local store under ``root`` (what `darwin report` reads);
    ``code(candidate)``: its program (default: two lines naming it)."""
    from darwin.memory.store import RunStore

    store = RunStore(root, data.run_id)
    store.create(data.meta)
    for c in data.candidates:
        text = code(c) if code else f"# {c.id}\nprint('iter 1: loss 2.5')\n"
        store.put_candidate(c.model_copy(update={"code_sha": store.put_code(text)}))
    for e in data.evaluations:
        store.put_evaluation(e)
    for g in data.generations:
        store.commit(g.model_copy())
    for r in data.reviews:
        store.put_review(r)
    return store
