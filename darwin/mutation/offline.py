"""Mutators that need no network: the offline catalogue steered by lessons, and random search.

``OfflineMutator`` picks a kind of change with a bandit over the lessons (kinds that helped are
tried more, untried kinds get an optimism bonus, crashes cost), then an operator of that kind; with
memory off it has no lessons and explores evenly. ``RandomMutator`` is the baseline every search
must beat: the same catalogue, operators chosen uniformly, lessons ignored. Both return the same
MutationResult an LLM mutator does, through the same strict applier.
"""

from __future__ import annotations

import math

import numpy as np

from darwin.evaluation import Budget
from darwin.mutation.answers import ChangeKind
from darwin.mutation.base import MutationContext, MutationResult, RepairCase, apply_answer
from darwin.mutation.catalogue import CATALOGUE, Operator
from darwin.mutation.edits import EditError, unified_diff
from darwin.mutation.lessons import KindStats
from darwin.mutation.repair import RuleRepair

EXPLORATION = 0.05  # loss units: how much an untried kind is worth
CRASH_COST = 0.1  # loss units per crash share
TEMPERATURE = 0.02  # softmax over bandit scores (loss units)


def bandit_scores(kinds: list[ChangeKind], stats: dict[ChangeKind, KindStats]) -> np.ndarray:
    total = sum(s.tried for s in stats.values())
    scores = []
    for kind in kinds:
        s = stats.get(kind)
        tried = s.tried if s else 0
        gain = -(s.mean or 0.0) if s and s.mean is not None else 0.0
        crash = (s.crashed / s.tried) if s and s.tried else 0.0
        bonus = EXPLORATION * math.sqrt(math.log(total + 1) / (tried + 1)) if total else EXPLORATION
        scores.append(gain + bonus - CRASH_COST * crash)
    return np.array(scores)


class _CatalogueMutator:
    name = "offline"
    modes = ("search_replace",)
    redraws_duplicates = True  # seeded and free: an edit an earlier generation tried is redrawn
    uses_llm = False
    edits_seed = False

    def __init__(self, rng: np.random.Generator | int = 0):
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def _order(self, ctx: MutationContext, applicable: dict[Operator, object]) -> list[Operator]:
        raise NotImplementedError

    def mutate(self, ctx: MutationContext) -> MutationResult:
        result = MutationResult(mutator=self.name, mode="search_replace")
        proposals = {}
        for op in CATALOGUE:
            answer = op.propose(ctx.target_program, self.rng, ctx.budget.name)
            if answer is not None:
                proposals[op] = answer
        for op in self._order(ctx, proposals):
            result.attempts += 1
            answer = proposals[op]
            try:
                child = apply_answer(ctx.target_program, answer, "search_replace")
            except EditError:
                continue
            answer.reasoning = f"[{op.name}] {answer.reasoning}"
            result.child, result.answer = child, answer
            result.diff = unified_diff(ctx.target_program, child)
            result.operator = op.name
            return result
        result.failure = "no_operator_applies"
        result.detail = "no catalogue operator found its construct in this program"
        return result

    def repair(self, broken: str, parent: str | None, case: RepairCase,
               budget: Budget) -> MutationResult:
        """No LLM: the rules (NaN, out of memory, else revert the offending hunk)."""
        return RuleRepair().repair(broken, parent, case, budget)


class OfflineMutator(_CatalogueMutator):
    name = "offline"

    def _order(self, ctx, proposals):
        by_kind: dict[ChangeKind, list[Operator]] = {}
        for op in proposals:
            by_kind.setdefault(op.kind, []).append(op)
        kinds = list(by_kind)
        order: list[Operator] = []
        while kinds:
            scores = bandit_scores(kinds, ctx.kind_stats)
            p = np.exp((scores - scores.max()) / TEMPERATURE)
            kind = kinds[int(self.rng.choice(len(kinds), p=p / p.sum()))]
            ops = by_kind.pop(kind)
            order += [ops[i] for i in self.rng.permutation(len(ops))]
            kinds.remove(kind)
        return order


class RandomMutator(_CatalogueMutator):
    name = "random"

    def _order(self, ctx, proposals):
        ops = list(proposals)
        return [ops[i] for i in self.rng.permutation(len(ops))]
