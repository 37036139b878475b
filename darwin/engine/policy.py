"""The generation's decisions, as plain functions of records (no Prefect, no I/O): which children
get a repair, which are re-run on more seeds, what generation 0 records, which candidates the
final test scores. The flows call these and only map tasks over what they return."""

from __future__ import annotations

import statistics
from collections.abc import Collection, Sequence

from darwin.engine.ids import SEED_ID
from darwin.engine.selection import Scored, noise_margin
from darwin.errors import UserError
from darwin.memory import CandidateRecord, EvaluationRecord, GenerationRecord, Member


class SeedFailed(UserError):
    """The seed program does not train: there is nothing to evolve from (one line, exit 2)."""


def to_repair(final: Sequence[tuple[CandidateRecord, EvaluationRecord]]) -> list[int]:
    """Positions of the children to repair: those that failed although they have a program (a
    mutation that produced nothing has nothing to repair)."""
    return [i for i, (c, e) in enumerate(final) if e.status != "ok" and c.code_sha]


def apply_repairs(final: list[tuple[CandidateRecord, EvaluationRecord]], positions: list[int],
                  fixes: Sequence[CandidateRecord], evaluations: Sequence[EvaluationRecord]
                  ) -> list[tuple[CandidateRecord, EvaluationRecord]]:
    """A repair takes its broken child's place when it produced a program (even one that fails
    again: the next try repairs the latest version)."""
    out = list(final)
    for i, fix, ev in zip(positions, fixes, evaluations):
        if fix.code_sha:
            out[i] = (fix, ev)
    return out


def to_rerun(population: Sequence[Scored], final: Sequence[tuple[CandidateRecord,
             EvaluationRecord]], reruns: int, more_seeds: Sequence[int], min_runs: int
             ) -> list[tuple[str, int]]:
    """(candidate, seed) pairs to train again: the ``reruns`` best children that beat the worst
    member on their first run, on enough more seeds to reach ``min_runs``, so a promotion rests
    on more than one lucky seed."""
    if not population or not more_seeds or reruns <= 0:
        return []
    worst = max(p.fitness for p in population)
    ok = sorted((e.val_loss, c.id) for c, e in final if e.val_loss is not None)
    promising = [cid for loss, cid in ok if loss < worst][:reruns]
    return [(cid, s) for cid in promising for s in list(more_seeds)[: max(0, min_runs - 1)]]


def to_confirm(population: Sequence[Scored], children: Sequence[Scored], more_seeds: Sequence[int],
               min_runs: int, done: Collection[str] = ()) -> list[tuple[str, int]]:
    """(candidate, seed) pairs to train again before the generation commits: the one-seed
    children (fewer than ``min_runs`` runs) that would be the best if their mean held, that is,
    lower than every member and child measured on ``min_runs`` seeds. Without these runs such a
    child ranks behind every measured one (selection.ranked); with them it is judged like any
    other. ``done``: children already re-run (a re-run that failed is not retried)."""
    def measured(c: Scored) -> bool:
        return len(c.losses) >= min_runs

    known = [c for c in [*population, *children] if measured(c)]
    bar = min((c.fitness for c in known), default=float("inf"))
    lucky = [c for c in children if c.losses and c.verified and not c.flagged and not measured(c)
             and c.id not in done and c.fitness < bar]
    seeds = list(more_seeds)[: max(0, min_runs - 1)]
    return [(c.id, s) for c in sorted(lucky, key=lambda c: c.fitness) for s in seeds]


def generation_zero(run_id: str, evaluations: Sequence[EvaluationRecord], wall_s: float,
                    min_runs: int = 1) -> GenerationRecord:
    """The seed program measured over S seeds: the population of one and the noise band every
    later promotion must clear. SeedFailed when any seed's run failed."""
    failed = [e for e in evaluations if e.val_loss is None]
    if failed:
        f = min(failed, key=lambda e: e.seed)
        raise SeedFailed(f"the seed program failed on seed {f.seed}: {f.status} {f.detail}; "
                         "it must train before it can evolve")
    losses = [e.val_loss for e in sorted(evaluations, key=lambda e: e.seed)]
    mfus = [e.mfu for e in evaluations if e.mfu is not None]
    return GenerationRecord(
        run_id=run_id, generation=0, min_runs=min_runs,
        population=[Member(candidate_id=SEED_ID, losses=losses,
                           mfu=statistics.fmean(mfus) if mfus else None)],
        noise=noise_margin(losses), pareto=[SEED_ID], wall_s=wall_s,
    )


def final_candidates(last: GenerationRecord, min_runs: int = 1) -> list[str]:
    """What the test split scores at the end: the best and the seed (never used to select).
    Only a member measured on ``min_runs`` seeds is the best: without one, only the seed."""
    best = last.best(min_runs)
    return sorted({SEED_ID} | ({best.candidate_id} if best else set()))
