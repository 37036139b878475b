"""What a report draws, gathered once from a run's records.

``RunData`` holds the records (read from a store, or built directly in tests); the functions
below derive what the figures and the page need. A run that is still young (no committed
generation, only crashed children) gives empty or partial answers, never an error: the report
says what is missing.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from functools import cached_property

from darwin.engine import SEED_ID
from darwin.memory import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    ReviewRecord,
    RunStore,
    StoreError,
    mean_loss,
)

KEPT, DISCARDED, CRASHED, REPAIRED = "kept", "discarded", "crashed", "repaired"


@dataclass
class RunData:
    run_id: str
    meta: dict = field(default_factory=dict)
    candidates: list[CandidateRecord] = field(default_factory=list)
    evaluations: list[EvaluationRecord] = field(default_factory=list)
    generations: list[GenerationRecord] = field(default_factory=list)
    reviews: list[ReviewRecord] = field(default_factory=list)
    finals: dict[str, dict] = field(default_factory=dict)
    as_of: int | None = None  # drawn as the run was right after this generation (--at...)

    # -- reading ------------------------------------------------------------------------------
    @classmethod
    def load(cls, store: RunStore) -> RunData:
        try:
            meta = store.meta()
        except StoreError:
            meta = {}
        head = store.head()
        generations = []
        for n in range(head + 1 if head is not None else 0):
            try:
                generations.append(store.generation(n))
            except StoreError:  # a generation of an interrupted write: the others still show
                continue
        candidates = store.candidates()
        # The test split scores the seed and the best of the last generation (one read each:
        # on S3 a read per candidate would cost a request per candidate, every generation).
        tested = {SEED_ID, *(m.candidate_id for g in generations[-1:] for m in g.population)}
        finals = {c: f for c in sorted(tested) if (f := store.final(c)) is not None}
        return cls(store.run_id, meta, candidates, store.evaluations(), generations,
                   store.reviews(), finals, getattr(store, "at", None))

    # -- derived --------------------------------------------------------------------------------
    @property
    def experiment(self) -> dict:
        return self.meta.get("experiment", {})

    @property
    def first_seed(self) -> int:
        return int(self.experiment.get("seed", 0))

    @cached_property
    def by_id(self) -> dict[str, CandidateRecord]:
        return {c.id: c for c in self.candidates}

    @cached_property
    def runs(self) -> dict[str, list[EvaluationRecord]]:
        """Each candidate's evaluations, by seed."""
        found: dict[str, list[EvaluationRecord]] = {}
        for e in sorted(self.evaluations, key=lambda e: e.seed):
            found.setdefault(e.candidate_id, []).append(e)
        return found

    def losses(self, cid: str) -> list[float]:
        return [e.val_loss for e in self.runs.get(cid, []) if e.val_loss is not None]

    def fitness(self, cid: str) -> float | None:
        losses = self.losses(cid)
        return mean_loss(losses) if losses else None

    def mfu(self, cid: str) -> float | None:
        values = [e.mfu for e in self.runs.get(cid, []) if e.mfu is not None]
        return statistics.fmean(values) if values else None

    def first_run(self, cid: str) -> EvaluationRecord | None:
        mine = self.runs.get(cid, [])
        return next((e for e in mine if e.seed == self.first_seed), mine[0] if mine else None)

    @property
    def seed_loss(self) -> float | None:
        if self.generations:
            return self.generations[0].population[0].fitness
        return self.fitness(SEED_ID)

    @property
    def noise(self) -> float:
        return self.generations[0].noise if self.generations else 0.0

    @property
    def best(self) -> str | None:
        """The current best: the first member of the last committed generation."""
        return self.generations[-1].population[0].candidate_id if self.generations else None

    def status(self, cid: str) -> str:
        """kept (a member of its generation's population), discarded, crashed, or repaired (a
        repair that trained and scored)."""
        rec = self.by_id.get(cid)
        if self.fitness(cid) is None:
            return CRASHED
        members = set()
        for g in self.generations:
            if rec is not None and g.generation == rec.generation:
                members = {m.candidate_id for m in g.population}
        if cid in members or cid == SEED_ID:
            return KEPT
        return REPAIRED if rec is not None and rec.repair_of else DISCARDED

    def members_now(self) -> set[str]:
        """The current population (the last committed generation's)."""
        return {m.candidate_id for m in self.generations[-1].population} if self.generations \
            else set()

    def lineage(self, cid: str | None) -> list[str]:
        """``cid`` and its target parents back to the seed (oldest first)."""
        chain: list[str] = []
        while cid is not None and cid not in chain:
            chain.append(cid)
            rec = self.by_id.get(cid)
            cid = rec.parents[0] if rec is not None and rec.parents else None
        return chain[::-1]

    def best_so_far(self) -> list[tuple[int, float]]:
        """(generation, the best mean val loss of any population so far)."""
        points, best = [], math.inf
        for g in self.generations:
            if g.population:
                best = min(best, g.population[0].fitness)
                points.append((g.generation, best))
        return points

    def generation_window(self, g: GenerationRecord) -> tuple[float, float]:
        return g.committed_at - g.wall_s, g.committed_at

    def timing(self) -> list[dict]:
        """Per committed generation (the seed's included): where the time went (seconds) and
        what the LLM cost. llm / training / scoring / waiting are summed over the generation's tasks
        (parallel tasks add up); orchestration is the generation's wall time during which no
        mutation, training or scoring ran (scheduling, store I/O, selection, commit)."""
        rows = []
        for g in self.generations:
            if g.generation == 0 and not g.children:
                mine = [c for c in self.candidates if c.id == SEED_ID]
            else:
                mine = [c for c in self.candidates if c.generation == g.generation
                        and c.id != SEED_ID]
            ids = {c.id for c in mine}
            evals = [e for e in self.evaluations if e.candidate_id in ids and not e.cached]
            start, end = self.generation_window(g)
            busy: list[tuple[float, float]] = []
            for c in mine:
                if c.mutate_s and c.created_at:
                    busy.append((c.created_at - c.mutate_s, c.created_at))
            for e in evals:
                if e.train_started_at:
                    busy.append((e.train_started_at, e.train_started_at + e.train_wall_s))
                if e.scored_at and e.eval_wall_s:
                    busy.append((e.scored_at - e.eval_wall_s, e.scored_at))
            measured = bool(busy) and g.committed_at > 0
            rows.append({
                "generation": g.generation,
                "wall_s": g.wall_s,
                "llm_s": sum(sum(c.llm_latency_s) for c in mine),
                "mutation_s": sum(c.mutate_s for c in mine),
                "training_s": sum(e.train_wall_s for e in evals),
                "scoring_s": sum(e.eval_wall_s or 0.0 for e in evals),
                "waiting_s": sum(e.queue_wait_s for e in evals),
                "orchestration_s": max(0.0, g.wall_s - _covered(busy, start, end))
                if measured else None,
                "input_tokens": sum(c.input_tokens for c in mine),
                "output_tokens": sum(c.output_tokens for c in mine),
                "cost_usd": sum(c.cost_usd for c in mine),
            })
        return rows


def _covered(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of [start, end] covered by the union of ``intervals``."""
    total, reach = 0.0, start
    for a, b in sorted(intervals):
        a, b = max(a, reach), min(b, end)
        if b > a:
            total += b - a
            reach = b
    return total
