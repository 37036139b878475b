"""The generation's decisions, as plain functions of records (no Prefect, no I/O): which children
get a repair, which are re-run on more seeds, what generation 0 records, which candidates the
final test scores. The flows call these and only map tasks over what they return."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from darwin.engine.ids import SEED_ID
from darwin.engine.selection import Scored, noise_margin
from darwin.errors import UserError
from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord, Member


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


def generation_zero(run_id: str, evaluations: Sequence[EvaluationRecord], wall_s: float
                    ) -> GenerationRecord:
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
        run_id=run_id, generation=0,
        population=[Member(candidate_id=SEED_ID, losses=losses,
                           mfu=statistics.fmean(mfus) if mfus else None)],
        noise=noise_margin(losses), pareto=[SEED_ID], wall_s=wall_s,
    )


def final_candidates(last: GenerationRecord) -> list[str]:
    """What the test split scores at the end: the best and the seed (never used to select)."""
    return sorted({last.population[0].candidate_id, SEED_ID})
