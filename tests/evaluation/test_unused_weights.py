"""Unused-weight detection decides the same for the same program on every backend and every
secret draw: a near-zero bias of an honest model (nanoGPT zero-initialises them) moves the
output by about the tolerance under noise of its own scale, and was flagged on one backend and
not the other (issue #34). A pad tensor nothing reads is still flagged every time."""

from __future__ import annotations

import textwrap

import pytest

from darwin.evaluation.budgets import get_budget
from darwin.evaluation.scoring import score
from tests.evaluation.test_scorer_attacks import weights, write_folder

pytestmark = pytest.mark.sandbox

# nanoGPT's shapes and init at small size: a LayerNorm and a Linear bias start at zero and a
# 0.02-std head: perturbing the biases by their own scale moves log-probabilities ~1e-4..1e-3.
FORK = '''
import torch
import torch.nn as nn

V = 65


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.ln = nn.LayerNorm(16)
        self.fc = nn.Linear(16, 16)
        self.head = nn.Linear(16, V, bias=False)
        for p in (self.fc.weight, self.head.weight):
            nn.init.normal_(p, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, idx):
        return self.head(self.fc(self.ln(self.emb(idx))))


def build_model(config):
    return Model(config)
'''
PAD = FORK + textwrap.dedent('''
    _init = Model.__init__
    def __init__(self, config):
        _init(self, config)
        self.pad = nn.Parameter(torch.zeros(64, 64))  # never read
    Model.__init__ = __init__
    ''')


def _unused(source: str, box, tmp_path, draws: int) -> list[list[str]]:
    folder = write_folder(tmp_path / "out", source, weights(source))
    found = []
    for k in range(draws):  # each scoring draws its own secret seed (os.urandom)
        s = score(folder, get_budget("tiny"), box, tmp_path / f"work-{box.name}-{k}")
        assert s.ok, (s.failure, s.detail)
        found.append(s.unused)
    return found


def test_an_honest_model_has_no_unused_weights_on_any_draw(sandbox, tmp_path):
    # Before the fix: fc.bias and ln.bias flagged, on some draws only.
    assert _unused(FORK, sandbox, tmp_path, draws=2) == [[]] * 2


def test_the_flags_are_the_same_on_both_backends(sandbox, docker_sandbox, tmp_path):
    assert _unused(PAD, sandbox, tmp_path, 1) == _unused(PAD, docker_sandbox, tmp_path, 1) == [
        ["pad"]]
