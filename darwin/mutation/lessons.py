"""Lessons: what each kind of change did so far, aggregated from trusted results.

A lesson is per kind of change: how often it was tried, its mean effect on val loss against the
parent (negative = better) with a 95 % interval, and how often it crashed. Lessons go into the LLM
prompt and steer the offline mutator's bandit; with memory off there are none.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

from darwin.mutation.answers import ChangeKind


@dataclass(frozen=True)
class Outcome:
    """One finished child: its kind of change and its trusted effect (None if it failed)."""

    kind: ChangeKind
    effect: float | None  # child val loss - parent val loss


@dataclass
class KindStats:
    kind: ChangeKind
    tried: int = 0
    crashed: int = 0
    effects: tuple[float, ...] = ()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.effects) if self.effects else None

    @property
    def half_width(self) -> float | None:
        if len(self.effects) < 2:
            return None
        return 1.96 * statistics.stdev(self.effects) / math.sqrt(len(self.effects))

    def line(self) -> str:
        if self.mean is None:
            return f"{self.kind.value}: tried {self.tried}, all crashed"
        ci = f" ± {self.half_width:.3f}" if self.half_width is not None else ""
        verdict = "helped" if self.mean < 0 else "hurt"
        return (f"{self.kind.value}: tried {self.tried}, mean val-loss change {self.mean:+.3f}{ci} "
                f"({verdict}), {self.crashed} crashed")


def aggregate(outcomes: list[Outcome]) -> dict[ChangeKind, KindStats]:
    stats: dict[ChangeKind, KindStats] = {}
    for o in outcomes:
        s = stats.setdefault(o.kind, KindStats(o.kind))
        s.tried += 1
        if o.effect is None:
            s.crashed += 1
        else:
            s.effects = (*s.effects, o.effect)
    return stats


def first_run_outcomes(candidates: list, evaluations: list, first_seed: int) -> list[tuple]:
    """(candidate, its first run, Outcome) for every child with a kind of change whose first
    run is known: its effect is against its parent's first run (None when it failed)."""
    runs: dict[str, dict[int, object]] = {}
    for e in evaluations:
        runs.setdefault(e.candidate_id, {})[e.seed] = e
    found = []
    for record in candidates:
        if not record.kind or not record.parents:
            continue
        first = runs.get(record.id, {}).get(first_seed)
        if first is None:
            continue
        parent = runs.get(record.parents[0], {}).get(first_seed)
        try:
            kind = ChangeKind(record.kind)
        except ValueError:  # a kind this version does not know (a record from another)
            kind = ChangeKind.other
        if first.val_loss is None:
            found.append((record, first, Outcome(kind, None)))
        elif parent is not None and parent.val_loss is not None:
            found.append((record, first, Outcome(kind, first.val_loss - parent.val_loss)))
    return found


def lesson_lines(stats: dict[ChangeKind, KindStats], limit: int = 12) -> list[str]:
    """Most informative first: most tried."""
    ordered = sorted(stats.values(), key=lambda s: (-s.tried, s.kind.value))
    return [s.line() for s in ordered[:limit]]
