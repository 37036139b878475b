"""Parent selection and noise-aware survivor selection (pure, seeded).

Promotion rule ("a child only beats its parent beyond the noise", docs/scoring.md): the noise is the
seed program's spread over S seeds; a child may replace a population member only when, over at
least ``min_runs`` seeds (its first run plus re-runs), its mean val loss is lower than that
member's by more than ``margin = 2 sigma_seed``. We chose the 2-sigma margin over a Welch test
because with 3 runs per side a t-test has almost no power while the seed's sigma is measured
once per run with the same budget. A child may also fill an empty slot (while the population is
still growing) without a margin, since it displaces nobody; that is "filled", not "promoted".

Measured before best: a population is ranked with members measured on ``min_runs`` seeds first
(memory.records.rank_key), so a one-seed result is never the best, an elite (the best ``keep``
measured members, never replaced by a worse candidate) or the favoured parent. The generation
flow re-runs a child that would otherwise be the best on one seed (policy.to_confirm).
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from darwin.memory import mean_loss, rank_key


@dataclass
class Scored:
    """A candidate with its trusted val losses (one per seed) and optional MFU."""

    id: str
    losses: list[float] = field(default_factory=list)
    mfu: float | None = None
    # True only for an MFU measured by something the candidate cannot see; an estimated one
    # (FLOPs shown inside the candidate's own process, darwin/evaluation/flops.py) is reported
    # but never enters the Pareto set.
    mfu_measured: bool = False
    # False when any run was scored without a sandbox (--sandbox unsafe): its probes prove
    # nothing, so it is never promoted.
    verified: bool = True
    # Integrity flags of any run (darwin.evaluation.integrity_flags: held-out text suspected,
    # a program past the size bounds, ...): the loss may be memory, not modelling, so the child
    # never enters the population unless a person pins it at a review.
    flagged: list[str] = field(default_factory=list)

    @property
    def fitness(self) -> float:
        return mean_loss(self.losses)


def noise_margin(seed_losses: list[float], sigmas: float = 2.0) -> float:
    return sigmas * statistics.stdev(seed_losses) if len(seed_losses) >= 2 else 0.0


def ranked(members: Sequence[Scored], min_runs: int) -> list[Scored]:
    """Best first: measured members (``min_runs`` runs) by mean loss, then the others."""
    return sorted(members, key=lambda m: rank_key(m.losses, min_runs))


def choose_parents(population: list[Scored], n: int, rng: np.random.Generator,
                   min_runs: int = 1) -> list[tuple[str, str | None]]:
    """(target, proposer) pairs: targets by rank (better ranks more often, a member measured on
    fewer than ``min_runs`` seeds after every measured one), the proposer another member (the
    paper's agents rewrite one another's programs)."""
    ranked_ = ranked(population, min_runs)
    weights = np.array([1.0 / (r + 1) for r in range(len(ranked_))])
    weights /= weights.sum()
    pairs = []
    for _ in range(n):
        t = int(rng.choice(len(ranked_), p=weights))
        others = [i for i in range(len(ranked_)) if i != t]
        p = int(rng.choice(others)) if others else None
        pairs.append((ranked_[t].id, ranked_[p].id if p is not None else None))
    return pairs


class Selection(NamedTuple):
    population: list[Scored]  # ranked: measured members first, each group by mean loss
    promoted: list[str]  # children that displaced a member, beyond the noise over min_runs seeds
    filled: list[str]  # children that took an empty slot (they displaced nobody)


def select(population: list[Scored], children: list[Scored], size: int, keep: int,
           margin: float, min_runs: int = 3, pinned: frozenset[str] = frozenset()
           ) -> Selection:
    """The next population, the children promoted into it and those that filled an empty slot.
    Members a human pinned are never displaced (they may hold the population above ``size``).
    Children are taken measured first, so a child measured on ``min_runs`` seeds gets an empty
    slot before a one-seed child that looks better. A child with an integrity flag is not taken
    at all unless pinned (a person looked at it)."""
    current = ranked(population, min_runs)
    promoted: list[str] = []
    filled: list[str] = []
    eligible = [c for c in children
                if c.losses and c.verified and (not c.flagged or c.id in pinned)]
    for child in ranked(eligible, min_runs):
        if len(current) < size:
            current.append(child)
            filled.append(child.id)
        elif len(child.losses) >= min_runs:
            # The elites: the best ``keep`` MEASURED members (a one-seed member is never one).
            measured = [m for m in current if len(m.losses) >= min_runs]
            elites = {m.id for m in measured[:keep]}
            replaceable = [m for m in current if m.id not in elites and m.id not in pinned]
            worst = max(replaceable, key=lambda m: m.fitness, default=None)
            if worst is not None and child.fitness < worst.fitness - margin:
                current[current.index(worst)] = child
                promoted.append(child.id)
        current = ranked(current, min_runs)
    return Selection(current, promoted, filled)


def pareto(candidates: list[Scored], seed_loss: float | None = None,
           margin: float = 0.0) -> list[str]:
    """Ids not dominated on (lower val loss, higher MFU). MFU counts only when measured (an
    estimated one rests on the candidate's own process: it could be bought) and only for
    candidates not worse than the seed beyond the noise (``seed_loss + margin``): a model can buy
    MFU by wasting served tokens or compute, never by being worse."""

    def mfu(c: Scored) -> float:
        worse = seed_loss is not None and c.fitness > seed_loss + margin
        return 0.0 if c.mfu is None or worse or not c.mfu_measured else c.mfu

    pts = [(c.id, c.fitness, mfu(c)) for c in candidates if c.losses]
    out = []
    for cid, loss, mfu in pts:
        dominated = any(
            (l2 <= loss and m2 >= mfu) and (l2 < loss or m2 > mfu) for _, l2, m2 in pts
        )
        if not dominated:
            out.append(cid)
    return out
