"""The trusted scorer against hand-written tamper programs that train for real: each gets its
true score or a typed rejection, never the score it claims. (Models written to beat the scorer's
checks are in test_scorer_attacks.py, as output folders built directly.)"""

from __future__ import annotations

import math
import textwrap
import uuid
from pathlib import Path

import pytest

from darwin.evaluation.failures import Failure
from darwin.evaluation.trial import train_then_score

pytestmark = pytest.mark.sandbox

# A tiny bigram-style model and an honest training loop; each case below changes one thing.
BASE = '''
import json, os, shutil
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import save_model

V = int(os.environ.get("DARWIN_VOCAB_SIZE", "65"))


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(config["vocab_size"], 16)
        self.head = nn.Linear(16, config["vocab_size"])

    def forward(self, idx):
        return self.logits(idx)

    def logits(self, idx):
        return self.head(self.emb(idx))


def build_model(config):
    return Model(config)


def train_and_save(ce=F.cross_entropy):
    import darwin_io
    torch.manual_seed(0)
    model = build_model({"vocab_size": V})
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    while (b := darwin_io.get_batch(8, 32)) is not None:
        x, y = torch.from_numpy(b[:, :-1]), torch.from_numpy(b[:, 1:])
        loss = ce(model.logits(x).reshape(-1, V), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    save_model(model, "model.safetensors")
    json.dump({"vocab_size": V}, open("config.json", "w"))
    shutil.copyfile(__file__, "model.py")
    return model, loss.item()
'''

MAIN = '''
if __name__ == "__main__":
    train_and_save()
'''

CASES: dict[str, str] = {
    "honest": MAIN,
    "uniform": """
Model.forward = lambda self, idx: torch.zeros(*idx.shape, V)
""" + MAIN,
    "fake_claims": """
if __name__ == "__main__":
    train_and_save()
    print("val_loss 0.0100  perplexity 1.01  mfu 99.9%")
    json.dump({"val_loss": 0.01, "perplexity": 1.01}, open("claims.json", "w"))
""",
    # Patches the loss and the timer at import, i.e. inside the evaluation process too.
    "monkeypatch": """
import time
_real_ce = F.cross_entropy
F.cross_entropy = lambda *a, **k: torch.tensor(0.0)
torch.nn.functional.cross_entropy = F.cross_entropy
time.time = time.perf_counter = time.monotonic = lambda: 0.0
if __name__ == "__main__":
    train_and_save(ce=_real_ce)
""",
    "reads_heldout": """
import glob
if __name__ == "__main__":
    import sys
    places = ["/sandbox", "/tmp", "/root", "/home", "/work", "/srv", "/opt", sys.prefix]
    found = [p for d in places for p in glob.glob(d + "/**/*shakespeare*", recursive=True)]
    train_and_save()
    json.dump({"found": len(found)}, open("claims.json", "w"))
""",
    "nan": """
Model.forward = lambda self, idx: self.head(self.emb(idx)) * float("nan")
""" + MAIN,
    "pickle_weights": """
import pickle
class Evil:
    def __reduce__(self):
        return (os.system, ("touch @@MARKER@@",))
if __name__ == "__main__":
    train_and_save()
    with open("model.safetensors", "wb") as f:
        pickle.dump({"state": Evil()}, f)
""",
    "symlink": """
if __name__ == "__main__":
    train_and_save()
    os.remove("model.safetensors")
    os.symlink("/etc/passwd", "model.safetensors")
""",
    "extra_file": """
if __name__ == "__main__":
    train_and_save()
    open("notes.txt", "w").write("hello")
""",
    "no_weights": """
if __name__ == "__main__":
    train_and_save()
    os.remove("model.safetensors")
""",
    "wrong_weights": """
if __name__ == "__main__":
    train_and_save()
    big = nn.Linear(16, 16)
    save_model(big, "model.safetensors")
""",
    "broken_model_code": """
if __name__ == "__main__":
    train_and_save()
    open("model.py", "w").write("def build_model(config):\\n    return (\\n")
""",
}

EXPECTED_FAILURE = {
    "nan": Failure.invalid_logits,
    "pickle_weights": Failure.bad_weights,
    "symlink": Failure.bad_output,
    "extra_file": Failure.bad_output,
    "no_weights": Failure.missing_output,
    "wrong_weights": Failure.weights_mismatch,
    "broken_model_code": Failure.import_error,
}


def _evaluate(case: str, sandbox, tiny, tmp_path: Path, **fill: str):
    source = BASE + textwrap.dedent(CASES[case])
    for key, value in fill.items():
        source = source.replace(f"@@{key}@@", value)
    program = tmp_path / f"{case}.py"
    program.write_text(source)
    return train_then_score(program, tiny, 0, sandbox, tmp_path / "work")


@pytest.fixture(scope="module")
def honest(sandbox, tiny, tmp_path_factory):
    ev = _evaluate("honest", sandbox, tiny, tmp_path_factory.mktemp("honest"))
    assert ev.ok, (ev.failure, ev.detail, ev.score.log_tail if ev.score else ev.train.log_tail())
    assert ev.loss < math.log(65) - 0.5  # it learnt something
    assert ev.score.checks["probes"] == 256 + 64 and ev.score.checks["verified"] is True
    return ev


def test_uniform_logits_score_exactly_ln_vocab(sandbox, tiny, tmp_path):
    ev = _evaluate("uniform", sandbox, tiny, tmp_path)
    assert ev.ok, ev.detail
    assert abs(ev.loss - math.log(65)) < 1e-12
    assert abs(ev.score.perplexity - 65) < 1e-9


def test_claimed_score_is_recorded_but_never_used(sandbox, tiny, tmp_path, honest):
    ev = _evaluate("fake_claims", sandbox, tiny, tmp_path)
    assert ev.ok
    assert ev.loss == honest.loss  # same seed, same batches: the trusted number, bit for bit
    assert ev.claims["val_loss"] == 0.01
    assert any("disagrees" in f for f in ev.flags)


def test_monkeypatching_loss_and_timer_changes_nothing(sandbox, tiny, tmp_path, honest):
    ev = _evaluate("monkeypatch", sandbox, tiny, tmp_path)
    assert ev.ok, ev.detail
    assert ev.loss == honest.loss
    assert ev.train.wall_s > 0.3  # measured outside: the patched clock is not ours


def test_program_cannot_find_the_heldout_text(sandbox, tiny, tmp_path, honest):
    ev = _evaluate("reads_heldout", sandbox, tiny, tmp_path)
    assert ev.ok, ev.detail
    assert ev.claims["found"] == 0
    assert ev.loss == honest.loss


@pytest.mark.parametrize("case", sorted(EXPECTED_FAILURE))
def test_tampering_gets_a_typed_rejection(case, sandbox, tiny, tmp_path):
    marker = Path("/tmp") / f"darwin-pwned-{uuid.uuid4().hex}"
    ev = _evaluate(case, sandbox, tiny, tmp_path, MARKER=str(marker))
    assert ev.failure is EXPECTED_FAILURE[case], (ev.failure, ev.detail)
    assert ev.loss is None  # no score at all, not a wrong one
    assert ev.detail
    assert not marker.exists()  # the pickle was never loaded on our side
