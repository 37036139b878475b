"""Parent selection and noise-aware survivor selection (pure, seeded).

Promotion rule ("a child only beats its parent beyond the noise", README.md): the noise is the
seed program's spread over S seeds; a child may replace a population member only when, over at
least ``min_runs`` seeds (its first run plus re-runs), its mean val loss is lower than that
member's by more than ``margin = 2 sigma_seed``. We chose the 2-sigma margin over a Welch test
because with 3 runs per side a t-test has almost no power while the seed's sigma is measured
once per run with the same budget. Elites (the best ``keep`` members) are never replaced by a
worse candidate; a child fills an empty slot (while the population is still growing) without a
margin, since it displaces nobody.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from darwin.memory.records import mean_loss


@dataclass
class Scored:
    """A candidate with its trusted val losses (one per seed) and optional MFU."""

    id: str
    losses: list[float] = field(default_factory=list)
    mfu: float | None = None
    # False when any run was scored without a sandbox (--sandbox unsafe): its probes prove
    # nothing, so it is never promoted.
    verified: bool = True

    @property
    def fitness(self) -> float:
        return mean_loss(self.losses)


def noise_margin(seed_losses: list[float], sigmas: float = 2.0) -> float:
    return sigmas * statistics.stdev(seed_losses) if len(seed_losses) >= 2 else 0.0


def choose_parents(population: list[Scored], n: int, rng: np.random.Generator
                   ) -> list[tuple[str, str | None]]:
    """(target, proposer) pairs: targets by rank (better ranks more often), the proposer another
    member (the paper's agents rewrite one another's programs)."""
    ranked = sorted(population, key=lambda m: m.fitness)
    weights = np.array([1.0 / (r + 1) for r in range(len(ranked))])
    weights /= weights.sum()
    pairs = []
    for _ in range(n):
        t = int(rng.choice(len(ranked), p=weights))
        others = [i for i in range(len(ranked)) if i != t]
        p = int(rng.choice(others)) if others else None
        pairs.append((ranked[t].id, ranked[p].id if p is not None else None))
    return pairs


def select(population: list[Scored], children: list[Scored], size: int, keep: int,
           margin: float, min_runs: int = 3, pinned: frozenset[str] = frozenset()
           ) -> tuple[list[Scored], list[str]]:
    """The next population and the ids of the children promoted into it. Members a human
    pinned are never displaced (they may hold the population above ``size``)."""
    current = sorted(population, key=lambda m: m.fitness)
    promoted: list[str] = []
    for child in sorted((c for c in children if c.losses and c.verified),
                        key=lambda c: c.fitness):
        if len(current) < size:
            current.append(child)
            promoted.append(child.id)
        elif len(child.losses) >= min_runs and len(current) > keep:
            replaceable = [i for i in range(keep, len(current)) if current[i].id not in pinned]
            if replaceable and child.fitness < current[replaceable[-1]].fitness - margin:
                current[replaceable[-1]] = child
                promoted.append(child.id)
        current.sort(key=lambda m: m.fitness)
    return current, promoted


def pareto(candidates: list[Scored], seed_loss: float | None = None,
           margin: float = 0.0) -> list[str]:
    """Ids not dominated on (lower val loss, higher MFU). MFU counts only for candidates not
    worse than the seed beyond the noise (``seed_loss + margin``): a model can buy MFU by
    wasting served tokens or compute, never by being worse."""

    def mfu(c: Scored) -> float:
        worse = seed_loss is not None and c.fitness > seed_loss + margin
        return 0.0 if c.mfu is None or worse else c.mfu

    pts = [(c.id, c.fitness, mfu(c)) for c in candidates if c.losses]
    out = []
    for cid, loss, mfu in pts:
        dominated = any(
            (l2 <= loss and m2 >= mfu) and (l2 < loss or m2 > mfu) for _, l2, m2 in pts
        )
        if not dominated:
            out.append(cid)
    return out
