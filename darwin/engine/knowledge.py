"""What the run knows so far, read from its store: each candidate's scores, the seed program's
fitness, and the lessons (per kind of change, and the latest failures) the next prompts get."""

from __future__ import annotations

from darwin.engine.run_context import RunContext
from darwin.engine.selection import Scored
from darwin.evaluation import integrity_flags
from darwin.mutation import FailureNote, aggregate, first_run_outcomes, lesson_lines


class Knowledge:
    def __init__(self, run: RunContext):
        self.run = run

    def scored(self, cid: str) -> Scored:
        evals = [e for e in self.run.store.evaluations() if e.candidate_id == cid]
        losses = [e.val_loss for e in sorted(evals, key=lambda e: e.seed) if e.val_loss is not None]
        mfus = [e.mfu for e in evals if e.mfu is not None]
        return Scored(cid, losses, mfu=sum(mfus) / len(mfus) if mfus else None,
                      verified=all(e.isolated for e in evals),
                      flagged=[f for e in evals for f in integrity_flags(e.flags)])

    def seed_fitness(self) -> float:
        """The seed program's mean val loss (generation 0)."""
        return self.run.store.generation(0).population[0].fitness

    def score_line(self, cid: str) -> str | None:
        """``cid``'s score as a prompt states it (None: not scored)."""
        s = self.scored(cid)
        if not s.losses:
            return None
        return f"{s.fitness:.4f} (mean of {len(s.losses)} seed(s))"

    def lessons(self) -> tuple[dict, list[str], list[FailureNote]]:
        """Per kind of change: effects of children against their parents (first runs), and the
        most recent failures, for the next prompts and the offline bandit."""
        if not self.run.experiment.memory:
            return {}, [], []
        store = self.run.store
        found = first_run_outcomes(store.candidates(), store.evaluations(), self.run.seeds()[0])
        outcomes = [o for _, _, o in found]
        failures = [(rec.created_at, rec, ev) for rec, ev, o in found if o.effect is None]
        stats = aggregate(outcomes)
        notes = [
            FailureNote(f"{rec.id} ({rec.kind}, {rec.operator or rec.mode}) failed: {ev.status}"
                        f" - {ev.detail[:200]}", ev.log_tail[-1500:])
            for _, rec, ev in sorted(failures, key=lambda x: x[0])[-3:]
        ]
        return stats, lesson_lines(stats), notes
