"""The offline catalogue, the bandit, random search, chunking and repair."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program
from darwin.mutation.answers import ChangeKind
from darwin.mutation.base import MutationContext
from darwin.mutation.catalogue import CATALOGUE, OPERATORS
from darwin.mutation.chunks import join, split
from darwin.mutation.lessons import KindStats
from darwin.mutation.offline import OfflineMutator, RandomMutator
from darwin.mutation.registry import make_mutator

SEED = seed_program().read_text()

# What each operator's diff must touch (a word on a changed line).
CONSTRUCT = {
    "learning_rate": "learning_rate", "warmup": "max_warmup_iters", "decay_floor": "min_lr",
    "dropout": "dropout", "weight_decay": "weight_decay", "betas": "beta", "grad_clip": "grad_clip",
    "width": "n_embd", "depth": "n_layer", "heads": "n_head", "batch_block": "batch_size",
    "activation": "F.gelu", "rmsnorm": "RMSNorm", "post_norm": "self.ln_1(x + self.attn(x))",
    "untie_embeddings": "lm_head.weight", "optimizer": "torch.optim.Adam(",
    "init_scale": "std=", "schedule_shape": "coeff", "mlp_ratio": "* cfg",
}


def test_catalogue_size_and_variety():
    assert len(CATALOGUE) >= 15
    assert sum(op.structural for op in CATALOGUE) >= 6
    assert set(CONSTRUCT) == set(OPERATORS)
    for name in ("activation", "rmsnorm", "untie_embeddings", "optimizer", "init_scale",
                 "schedule_shape"):
        assert OPERATORS[name].structural


@pytest.mark.parametrize("budget", ["tiny", "cpu", "paper"])
def test_every_operator_applies_to_the_seed(budget):
    rng = np.random.default_rng(0)
    for op in CATALOGUE:
        assert op.propose(SEED, rng, budget) is not None, op.name


def test_operators_refuse_programs_without_their_construct():
    rng = np.random.default_rng(0)
    for op in CATALOGUE:
        assert op.propose("print('no training here')\n", rng, "tiny") is None, op.name


def _share(mutator, stats, kind, n=300):
    ctx = MutationContext(target_program=SEED, budget=get_budget("tiny"), kind_stats=stats)
    kinds = collections.Counter(mutator.mutate(ctx).answer.kind for _ in range(n))
    return kinds[kind] / n


def test_bandit_shifts_towards_what_the_lessons_say_helped():
    helped = {ChangeKind.regularisation: KindStats(ChangeKind.regularisation, 6, 0, (-0.15,) * 6)}
    for k in (ChangeKind.learning_rate, ChangeKind.schedule, ChangeKind.optimizer):
        helped[k] = KindStats(k, 6, 0, (0.05,) * 6)
    without = _share(OfflineMutator(1), {}, ChangeKind.regularisation)
    with_lessons = _share(OfflineMutator(1), helped, ChangeKind.regularisation)
    random_arm = _share(RandomMutator(1), helped, ChangeKind.regularisation)
    assert with_lessons > 0.6 > without + 0.3
    assert abs(random_arm - 3 / len(CATALOGUE)) < 0.08  # uniform over operators, lessons ignored


def test_crashing_kinds_are_avoided():
    crashed = {ChangeKind.width_depth: KindStats(ChangeKind.width_depth, 8, 8, ())}
    assert _share(OfflineMutator(2), crashed, ChangeKind.width_depth) < _share(
        OfflineMutator(2), {}, ChangeKind.width_depth)


def test_same_seed_same_mutations():
    ctx = MutationContext(target_program=SEED, budget=get_budget("cpu"))
    a = [OfflineMutator(7).mutate(ctx).diff for _ in range(1)]
    b = [OfflineMutator(7).mutate(ctx).diff for _ in range(1)]
    assert a == b


def test_auto_mutator_without_a_key_is_offline(monkeypatch):
    from darwin.settings import LLMSettings

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_mutator("auto", LLMSettings()).name == "offline"
    assert make_mutator("random", LLMSettings()).name == "random"
    assert make_mutator("auto", LLMSettings(api_key="sk-x")).name == "openai"


CHUNKY = '''"""doc"""
import os
from math import pi

X = 1  # a global
Y = 2


# a comment about f
@staticmethod
def f(a,
      b):
    return a + b  # tail


class C:
    """c"""

    def m(self):
        return 1
if __name__ == "__main__":
    f(1, 2)
'''


@pytest.mark.parametrize("source", [SEED, CHUNKY, "", "x = 1\n", "def f():\n    pass"])
def test_chunking_round_trips(source):
    chunks = split(source)
    assert join(chunks) == source
    if source == CHUNKY:
        kinds = [(c.kind, c.name) for c in chunks]
        assert ("function", "f") in kinds and ("class", "C") in kinds
        f = next(c for c in chunks if c.name == "f")
        assert f.text.startswith("\n\n# a comment about f\n@staticmethod")
