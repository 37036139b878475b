"""FLOPs that can be bought (issue #31, item 3), against output folders written to buy them, built
directly like tests/evaluation/test_scorer_attacks.py. Each attack claims far more FLOPs than the
bigram it wraps: the trusted scorer gives it the bigram's, and a scorer without that check
(tests/evaluation/weakened.py) gives it the claim. Honest tied embeddings, float buffers and bool
masks keep theirs.
"""

from __future__ import annotations

import textwrap

import pytest

from .test_scorer_attacks import BASE, V, honest, run, weights, write_folder  # noqa: F401

pytestmark = pytest.mark.sandbox

HEAD_FLOPS = 6.0 * V * 16  # the bigram's one matmul: its head (the embedding is read by index)

ATTACKS = {
    # Integer and bool padding: never perturbed, so never shown unused; scorer v2 counted them.
    "integer_padding": ("dtype", '''
_init = Model.__init__
def __init__(self, config):
    _init(self, config)
    self.register_buffer("ipad", torch.zeros(512, 512, dtype=torch.int32))
    self.register_buffer("bpad", torch.zeros(512, 512, dtype=torch.bool))
Model.__init__ = __init__
'''),
    # A wide table read by index: O(width) per token, claimed as a (V x width) matmul.
    "index_read_table": ("subsets", '''
_init = Model.__init__
def __init__(self, config):
    _init(self, config)
    self.table = nn.Parameter(torch.randn(V, 64 * V) * 0.02)
Model.__init__ = __init__
def forward(self, idx):
    return self.honest(idx) + self.table[idx].view(*idx.shape, 64, V).mean(-2)
Model.forward = forward
'''),
    # An unused pad, and one element watched: when the scorer's noise moves it, the model fakes
    # dependence at every position (whole-tensor noise always moved it).
    "watches_for_perturbation": ("subsets", '''
_init = Model.__init__
def __init__(self, config):
    _init(self, config)
    self.pad = nn.Parameter(torch.randn(512, 512))
Model.__init__ = __init__
def forward(self, idx):
    out = self.honest(idx)
    seen = float(self.pad[300, 300])
    if not hasattr(self, "_seen"):
        self._seen = seen
    if seen != self._seen:
        out = out + (seen - self._seen) * torch.randn_like(out)
    return out
Model.forward = forward
'''),
}


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_bought_flops_are_not_counted(attack, sandbox, tmp_path, honest):  # noqa: F811
    check, patch = ATTACKS[attack]
    source = BASE + textwrap.dedent(patch)
    folder = write_folder(tmp_path / "out", source, weights(source))
    s = run(folder, sandbox, tmp_path)
    assert s.ok, (s.failure, s.detail)
    assert honest.flops_per_token == HEAD_FLOPS, honest.checks
    assert s.flops_per_token == HEAD_FLOPS, (s.flops_per_token, s.unused, s.index_read)
    if attack == "index_read_table":
        assert sorted(s.index_read) == ["emb.weight", "table"]
    weakened = run(folder, sandbox, tmp_path, weaken=(check,))
    assert weakened.ok, (weakened.failure, weakened.detail)
    assert weakened.flops_per_token > 10 * HEAD_FLOPS, weakened.flops_per_token


HONEST_VARIANTS = '''
import torch
import torch.nn as nn

V = 65


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.register_buffer("mix", torch.randn(16, 16) / 4)  # a float buffer, multiplied by
        self.register_buffer("causal", torch.ones(64, 64, dtype=torch.bool).tril())

    def forward(self, idx):
        h = self.emb(idx)
        t = idx.shape[1]
        att = (h @ h.transpose(1, 2)) / 4
        att = att.masked_fill(~self.causal[:t, :t], float("-inf")).softmax(-1)
        h = (h + att @ h) @ self.mix
        return h @ self.emb.weight.T  # tied: the table read by index is the output matmul too


def build_model(config):
    return Model(config)
'''


def test_tied_embeddings_buffers_and_bool_masks_keep_their_flops(sandbox, tmp_path):
    folder = write_folder(tmp_path / "out", HONEST_VARIANTS, weights(HONEST_VARIANTS))
    s = run(folder, sandbox, tmp_path)
    assert s.ok, (s.failure, s.detail)
    assert s.unused == [] and s.index_read == [], (s.unused, s.index_read)
    assert s.flops_per_token == 6.0 * (V * 16 + 16 * 16)  # the tied table and the buffer
