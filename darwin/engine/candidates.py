"""The candidates of one run: the seed program, and each child's prompt and mutation (or its
repair), recorded in the store before it trains.

Candidate ids are deterministic (``g002-c01``, repairs ``g002-c01-r1``) and each mutation's
randomness is derived from (run seed, generation, child), so regenerating gives the same answer
for offline mutators, and persisted LLM answers are simply reused.
"""

from __future__ import annotations

import time

import numpy as np

from darwin.engine import reviews as hitl
from darwin.engine import tuning
from darwin.engine.faults import checkpoint
from darwin.engine.human_loop import HumanLoop
from darwin.engine.ids import SEED_ID, candidate_id, parse
from darwin.engine.knowledge import Knowledge
from darwin.engine.mutators import Mutators
from darwin.engine.run_context import RunContext
from darwin.evaluation import Failure
from darwin.memory import CandidateRecord, EvaluationRecord, code_hash
from darwin.mutation import (
    ChangeKind,
    MutationContext,
    MutationResult,
    make_mutator,
    mutator_modes,
    repair_case,
    tunes_seed,
)

DUPLICATE_REDRAWS = 4


class Candidates:
    def __init__(self, run: RunContext, mutators: Mutators, knowledge: Knowledge,
                 humans: HumanLoop):
        self.run = run
        self.mutators = mutators
        self.knowledge = knowledge
        self.humans = humans

    def add_seed_program(self, source: str) -> CandidateRecord:
        store = self.run.store
        existing = store.candidate(SEED_ID)
        if existing is not None:
            return existing
        record = CandidateRecord(id=SEED_ID, run_id=store.run_id, generation=0,
                                 code_sha=store.put_code(source), mutator="seed",
                                 reasoning="generation 0: the seed program", created_at=time.time())
        store.put_candidate(record)
        return record

    def _record(self, cid: str, gen: int, parents: list[str], result: MutationResult,
                started: float, repair_of: str | None = None) -> CandidateRecord:
        answer, store = result.answer, self.run.store
        if result.files is not None:  # the answer wrote extra files (an approved file layout)
            files = {name: store.put_code(text) for name, text in result.files.items()}
        else:  # the parent's extra files, unchanged
            parent = store.candidate(parents[0]) if parents else None
            files = dict(parent.files) if parent is not None else {}
        record = CandidateRecord(
            id=cid, run_id=store.run_id, generation=gen, parents=parents, repair_of=repair_of,
            code_sha=store.put_code(result.child) if result.child else "",
            files=files if result.child else {},
            diff=result.diff, mutator=result.mutator, mode=result.mode, operator=result.operator,
            kind=answer.kind.value if answer else None,
            reasoning=answer.reasoning if answer else "",
            requests=[r.model_dump(mode="json") for r in answer.requests] if answer else [],
            input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            cost_usd=result.cost_usd, llm_failure=result.failure if not result.ok else None,
            llm_detail=result.detail if not result.ok else "",
            notes=[*(answer.notes if answer else []), *result.notes], created_at=time.time(),
            mutate_s=round(time.time() - started, 3),
            llm_latency_s=[round(u.latency_s, 3) for u in result.usage],
        )
        store.put_candidate(record)  # persisted BEFORE it trains
        return record

    def mutation_context(self, target: str, proposer: str | None, gen: int = 0
                         ) -> MutationContext:
        kind_stats, lines, failures = self.knowledge.lessons()
        target_rec = self.run.store.candidate(target)
        return MutationContext(
            target_program=self.run.code(target),
            budget=self.run.budget,
            proposer_program=self.run.code(proposer) if proposer else None,
            target_score=self.knowledge.score_line(target) if target_rec else None,
            lessons=lines, failures=failures, kind_stats=kind_stats,
            human_notes=hitl.human_notes(self.run.store.reviews()),
            chunk_probability=self.run.experiment.chunk_probability,
            allowed_files=self.humans.grants(gen).files,
            files={name: self.run.store.code(sha)
                   for name, sha in (target_rec.files if target_rec else {}).items()},
        )  # the LLM's mode is a seeded draw from the mode mix, made in propose()

    def propose(self, gen: int, index: int, target: str, proposer: str | None) -> CandidateRecord:
        """Make (or reuse) child ``index`` of generation ``gen``: its prompt, then its mutation."""
        return self.mutate(gen, index, target, proposer, self.prompt(gen, index, target, proposer))

    def prompt(self, gen: int, index: int, target: str, proposer: str | None
               ) -> MutationContext | None:
        """What the mutator of child ``index`` is told (None when the child exists already):
        the programs, the lessons of the run so far, and for the LLM a seeded draw of its mode."""
        if self.run.store.candidate(candidate_id(gen, index)) is not None:
            return None
        ctx = self.mutation_context(target, proposer, gen)
        exp = self.run.experiment
        modes = [m for m in exp.mode_mix if m in mutator_modes(exp.mutator, self.run.settings.llm)]
        if len(modes) > 1:
            rng = np.random.default_rng([exp.seed, gen, index])
            weights = np.array([exp.mode_mix[m] for m in modes], dtype=float)
            ctx.mode = modes[int(rng.choice(len(modes), p=weights / weights.sum()))]  # type: ignore[assignment]
            ctx.seed = int(rng.integers(1 << 31))
        if not exp.memory:
            ctx.lessons, ctx.kind_stats = [], {}
        if tunes_seed(exp.mutator):  # a tuned search: the seed, and every earlier trial's result
            ctx.seed_program = self.run.code(SEED_ID)
            ctx.trials = tuning.history(self.run.store, gen, self.run.seeds()[0])
        return ctx

    def mutate(self, gen: int, index: int, target: str, proposer: str | None,
               ctx: MutationContext | None) -> CandidateRecord:
        """Child ``index`` of generation ``gen``, made by the mutator from ``ctx`` (or reused)."""
        cid = candidate_id(gen, index)
        existing = self.run.store.candidate(cid)
        if existing is not None:
            return existing
        if ctx is None:  # it was there when the prompt was built, and is gone: build it again
            ctx = self.prompt(gen, index, target, proposer)
            assert ctx is not None
        exp = self.run.experiment
        rng = np.random.default_rng([exp.seed, gen, index])
        started = time.time()
        mutator, result = self.mutators.run_mutator(rng, lambda m: m.mutate(ctx))
        checkpoint("mutate")
        if mutator.redraws_duplicates:
            # The catalogue can draw an edit an earlier generation already tried (its score is
            # known): draw again, a few times. Only earlier generations count, so the outcome
            # does not depend on which sibling was proposed first (resume stays reproducible).
            seen = {c.code_sha for c in self.run.store.candidates() if c.generation < gen}
            for redraw in range(1, DUPLICATE_REDRAWS + 1):
                if not result.child or code_hash(result.child) not in seen:
                    break
                again = make_mutator(exp.mutator, self.run.settings.llm,
                                     rng=np.random.default_rng([exp.seed, gen, index, redraw]))
                result = again.mutate(ctx)
        parents = [target] + ([proposer] if proposer else [])
        if mutator.edits_seed and result.child:
            parents = [SEED_ID]  # a tuned search's child is the seed with other constants
            tuning.put_trial(self.run.store, cid, result.trial)  # its state, before it trains
        return self._record(cid, gen, parents, result, started)

    def repair_by_id(self, cid: str, attempt: int) -> CandidateRecord:
        """Repair try ``attempt`` of candidate ``cid``, from its failed first run."""
        broken = self.run.store.candidate(cid)
        evaluation = self.run.store.evaluation(cid, self.run.seeds()[0])
        assert broken is not None and evaluation is not None, cid
        return self.repair(broken, evaluation, attempt)

    def repair(self, broken: CandidateRecord, evaluation: EvaluationRecord, attempt: int
               ) -> CandidateRecord:
        """A new candidate that tries to fix ``broken``; its parent is the broken one."""
        cid = str(parse(broken.id).repaired(attempt))
        existing = self.run.store.candidate(cid)
        if existing is not None:
            return existing
        failure = Failure(evaluation.status)
        case = repair_case(failure, evaluation.detail, evaluation.log_tail)
        parent_src = self.run.code(broken.parents[0]) if broken.parents else None
        started = time.time()
        _, result = self.mutators.run_mutator(attempt, lambda m: m.repair(
            self.run.code(broken.id), parent_src, case, self.run.budget))
        checkpoint("repair")
        if result.answer is not None and broken.kind:
            # A repair keeps the broken child's intent; its lesson counts for that kind.
            result.answer = result.answer.model_copy(update={"kind": ChangeKind(broken.kind)})
        return self._record(cid, broken.generation, [broken.id], result, started,
                            repair_of=broken.id)
