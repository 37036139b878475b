"""Scorer v2 against output folders written to beat it, built directly (model.py + safetensors +
config.json, no training). Each attack is blocked with its typed failure (or flag), and inside the
same test shown to get through a scorer without that check (tests/evaluation/weakened.py), so
every check here can fail.
"""

from __future__ import annotations

import json
import math
import struct
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from darwin.evaluation.budgets import get_budget
from darwin.evaluation.data import load_dataset
from darwin.evaluation.failures import Failure
from darwin.evaluation.scoring import EDGE, TOLERANCE, TRUSTED

from .weakened import weakened

pytestmark = pytest.mark.sandbox

V = 65
# A bigram model: honest by construction (each position sees only its own token).
BASE = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

V = 65


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.emb = nn.Embedding(V, 16)
        self.head = nn.Linear(16, V)

    def honest(self, idx):
        return self.head(self.emb(idx))

    def forward(self, idx):
        return self.honest(idx)


def build_model(config):
    return Model(config)


def peek(idx, strength):
    """+strength on the logit of the next input token (the target, in contiguous text)."""
    nxt = torch.roll(idx, -1, dims=1)
    bonus = F.one_hot(nxt, V).float() * strength
    bonus[:, -1] = 0.0
    return bonus
'''

ATTACKS = {
    # Peeks everywhere but at the positions v1 of the scorer probed ({0, t//2, t-2}).
    "peek_off_fixed_positions": '''
def forward(self, idx):
    out = self.honest(idx)
    t = idx.shape[1]
    bonus = peek(idx, 8.0)
    bonus[:, sorted({0, t // 2, t - 2})] = 0.0
    return out + bonus
Model.forward = forward
''',
    # Remembers every batch it answered: a batch sent again gets the same answer.
    "in_process_memo": '''
_memo = {}
def forward(self, idx):
    key = idx.numpy().tobytes()
    if key not in _memo:
        _memo[key] = self.honest(idx) + peek(idx, 8.0)
    return _memo[key]
Model.forward = forward
''',
    # Honest on its first call (v1 re-sent the first batch), peeking afterwards.
    "honest_first_call": '''
_calls = [0]
def forward(self, idx):
    _calls[0] += 1
    return self.honest(idx) + (peek(idx, 8.0) if _calls[0] > 1 else 0.0)
Model.forward = forward
''',
    # Huge logits (a tolerance scaled by them would be huge) and a small peek.
    "shifted_logits_small_peek": '''
def forward(self, idx):
    return self.honest(idx) + 1000.0 + peek(idx, 0.3)
Model.forward = forward
''',
    # Mixes the rows of a batch (adjacent windows would leak targets this way).
    "cross_row_read": '''
def forward(self, idx):
    h = self.emb(idx)
    return self.head(h + h.mean(dim=0, keepdim=True))
Model.forward = forward
''',
}


def weights(source: str = BASE) -> dict:
    """The state dict of ``source``'s model (only ever our own harmless model code: attack
    sources are never run in the test process)."""
    ns: dict = {}
    exec(source, ns)
    torch.manual_seed(0)
    return {k: v.contiguous() for k, v in ns["Model"]({}).state_dict().items()}


def write_folder(folder: Path, source: str, tensors: dict | None = None,
                 header_hook=None) -> Path:
    """An output folder as a training program would leave it."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.py").write_text(source)
    (folder / "config.json").write_text(json.dumps({"vocab_size": V}))
    if tensors is None:
        tensors = weights()
    save_file(tensors, str(folder / "model.safetensors"))
    if header_hook is not None:
        header_hook(folder / "model.safetensors")
    return folder


def run(folder: Path, sandbox, tmp_path: Path, weaken: tuple[str, ...] = (), **kw):
    scorer = weakened(*weaken) if weaken else TRUSTED
    return scorer.score(folder, get_budget("tiny"), sandbox,
                        tmp_path / f"work-{len(weaken)}-{len(kw)}-{id(kw)}", **kw)


@pytest.fixture(scope="module")
def honest(sandbox, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("honest")
    s = run(write_folder(tmp / "out", BASE), sandbox, tmp)
    assert s.ok, (s.failure, s.detail)
    assert s.checks["probes"] == 256 + 64 and s.checks["verified"] is True
    assert s.checks["max_diff"] <= TOLERANCE["cpu"] and s.checks["edge"] <= EDGE["cpu"]
    return s


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_a_model_that_reads_ahead_is_caught_by_a_fresh_process(attack, sandbox, tmp_path,
                                                                honest):
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent(ATTACKS[attack]))
    caught = run(folder, sandbox, tmp_path)
    expected = Failure.inconsistent_logits if attack == "cross_row_read" else Failure.noncausal
    assert caught.failure is expected, (caught.failure, caught.detail, caught.checks)
    assert caught.loss is None
    # Without the second process the same folder is accepted, and (but for the row mixer,
    # which gains nothing once no two touching windows share a batch) scores far too well.
    weakened = run(folder, sandbox, tmp_path, weaken=("probes",))
    assert weakened.ok, (weakened.failure, weakened.detail)
    if attack != "cross_row_read":
        assert weakened.loss < honest.loss - 0.1


def test_a_peek_below_the_tolerance_is_caught_by_the_edge(sandbox, tmp_path, honest):
    strength = 0.9 * TOLERANCE["cpu"]  # each probe within the tolerance...
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent(f'''
        def forward(self, idx):
            return self.honest(idx) + peek(idx, {strength!r})
        Model.forward = forward
        '''))
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.noncausal, (caught.failure, caught.checks)
    assert "mean edge" in caught.detail  # ...but A gains on every probe: the edge adds up
    weakened = run(folder, sandbox, tmp_path, weaken=("probes",))
    assert weakened.ok and weakened.loss < honest.loss


def test_an_honest_bf16_autocast_model_passes(sandbox, tmp_path, honest):
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent('''
        def forward(self, idx):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return self.honest(idx).float()
        Model.forward = forward
        '''))
    s = run(folder, sandbox, tmp_path)
    assert s.ok, (s.failure, s.detail, s.checks)
    assert s.checks["max_diff"] <= TOLERANCE["cpu"]


def _heldout_tokens(n: int = 48):
    return load_dataset().val[5000:5000 + n]


def test_heldout_text_in_the_weights_is_refused(sandbox, tmp_path, honest):
    source = BASE + textwrap.dedent('''
        _init = Model.__init__
        def __init__(self, config):
            _init(self, config)
            self.register_buffer("memory", torch.zeros(48))
        Model.__init__ = __init__
        ''')
    state = weights(source)
    state["memory"] = torch.tensor(_heldout_tokens().astype("float32"))  # as float32 token ids
    folder = write_folder(tmp_path / "out", source, state)
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.heldout_in_program, caught.failure
    assert "float32" in caught.detail and "val" in caught.detail
    text = load_dataset().text(_heldout_tokens())
    assert text[:20] not in caught.detail  # the finding names the place, never the text
    weakened = run(folder, sandbox, tmp_path, weaken=("heldout_scan",))
    assert weakened.ok, (weakened.failure, weakened.detail)


def test_heldout_text_in_the_model_code_is_refused(sandbox, tmp_path, honest):
    text = load_dataset().text(_heldout_tokens())
    folder = write_folder(tmp_path / "out", BASE + f"\nSCRIPT = {text!r}\n")
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.heldout_in_program, caught.failure
    weakened = run(folder, sandbox, tmp_path, weaken=("heldout_scan",))
    assert weakened.ok, weakened.detail


def test_heldout_text_in_the_training_program_is_refused(sandbox, tmp_path, honest):
    program = tmp_path / "train.py"
    program.write_text('NOTES = """' + load_dataset().text(load_dataset().test[100:140]) + '"""\n')
    folder = write_folder(tmp_path / "out", BASE)
    caught = run(folder, sandbox, tmp_path, program=program)
    assert caught.failure is Failure.heldout_in_program, caught.failure
    assert "test text" in caught.detail
    assert run(folder, sandbox, tmp_path, program=program,
               weaken=("heldout_scan",)).ok


def test_an_unused_weight_pad_does_not_count_toward_flops(sandbox, tmp_path, honest):
    source = BASE + textwrap.dedent('''
        _init = Model.__init__
        def __init__(self, config):
            _init(self, config)
            self.pad = nn.Parameter(torch.randn(512, 512))  # never used
        Model.__init__ = __init__
        ''')
    folder = write_folder(tmp_path / "out", source, weights(source))
    s = run(folder, sandbox, tmp_path)
    assert s.ok, s.detail
    assert s.unused == ["pad"] and any(f.startswith("unused_weights") for f in s.flags)
    assert s.flops_per_token == honest.flops_per_token
    weakened = run(folder, sandbox, tmp_path, weaken=("perturb",))
    assert weakened.flops_per_token > 10 * honest.flops_per_token


def test_forged_frames_are_a_typed_failure_and_their_text_stays_inside(sandbox, tmp_path,
                                                                       honest):
    # At import, write a forged error frame (carrying text) straight to the protocol's pipe.
    forged = json.dumps({"stage": "import", "error": "FORGED-SECRET-TEXT", "frames": [
        ["FORGED-SECRET-TEXT.py", 7]]}).encode()
    source = BASE + textwrap.dedent(f'''
        import os, struct
        _frame = b"ERR " + struct.pack("<I", {len(forged)}) + {forged!r}
        for fd in range(3, 64):
            try:
                os.write(fd, _frame)
            except OSError:
                pass
        ''')
    folder = write_folder(tmp_path / "out", source)
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is not None and caught.failure.stage == "eval", caught.failure
    assert "FORGED" not in caught.detail + caught.log_tail
    weakened = run(folder, sandbox, tmp_path, weaken=("messages",))
    assert "FORGED-SECRET-TEXT" in weakened.detail  # trusting the frame lets its text out


def test_an_exception_message_carrying_the_input_stays_inside(sandbox, tmp_path, honest):
    source = BASE + textwrap.dedent('''
        def forward(self, idx):
            raise ValueError("INPUT " + " ".join(map(str, idx[0].tolist())))
        Model.forward = forward
        ''')
    folder = write_folder(tmp_path / "out", source)
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.eval_crash
    line = source.splitlines().index('    raise ValueError("INPUT " + " ".join(map(str, idx[0].tolist())))') + 1
    assert caught.detail == f"forward raised ValueError at model.py line {line}"
    assert "INPUT" not in caught.detail + caught.log_tail
    weakened = run(folder, sandbox, tmp_path, weaken=("messages",))
    assert "INPUT" in weakened.detail


def _rewrite_header(path: Path, header: bytes) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    path.write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n:])


def test_a_deeply_nested_header_is_bad_weights(sandbox, tmp_path):
    nested = b'{"__metadata__": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    with pytest.raises(RecursionError):  # the control: a plain parse of it blows up
        json.loads(nested)
    folder = write_folder(tmp_path / "out", BASE,
                          header_hook=lambda p: _rewrite_header(p, nested))
    s = run(folder, sandbox, tmp_path)
    assert s.failure is Failure.bad_weights, (s.failure, s.detail)


def test_an_overflowing_shape_is_bad_weights(sandbox, tmp_path):
    huge = json.dumps({"emb.weight": {"dtype": "F32", "shape": [1e400, 16],
                                      "data_offsets": [0, 4160]}}).replace("Infinity", "1e400")
    with pytest.raises(OverflowError):  # the control: int() of it raises, and not ValueError
        int(json.loads(huge)["emb.weight"]["shape"][0])
    folder = write_folder(tmp_path / "out", BASE,
                          header_hook=lambda p: _rewrite_header(p, huge.encode()))
    s = run(folder, sandbox, tmp_path)
    assert s.failure is Failure.bad_weights, (s.failure, s.detail)


def test_scoring_never_raises_a_bug_of_ours_is_scorer_error(sandbox, tmp_path, monkeypatch):
    import darwin.evaluation.scoring as scoring

    def broken(*a, **k):
        raise ZeroDivisionError("a bug of ours")

    monkeypatch.setattr(scoring, "secret_batches", broken)
    s = run(write_folder(tmp_path / "out", BASE), sandbox, tmp_path)
    assert s.failure is Failure.scorer_error and s.loss is None
    assert "DARWIN bug" in s.detail


def test_without_a_sandbox_the_probes_are_unverified(tmp_path):
    from darwin.sandbox.unsafe import UnsafeSandbox

    s = run(write_folder(tmp_path / "out", BASE), UnsafeSandbox(), tmp_path)
    assert s.ok and s.checks["verified"] is False
    assert any(f.startswith("unverified") for f in s.flags)


def test_uniform_logits_score_exactly_ln_vocab(sandbox, tmp_path):
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent('''
        Model.forward = lambda self, idx: torch.zeros(*idx.shape, V)
        '''))
    s = run(folder, sandbox, tmp_path)
    assert s.ok and abs(s.loss - math.log(V)) < 1e-12


def test_heldout_text_the_scan_cannot_see_is_still_flagged(sandbox, tmp_path, honest):
    """Val text stored shifted by 1000 (no scan view holds it) and looked up causally: every
    check passes, but its val loss sits far below its loss on its own training text."""
    source = BASE + textwrap.dedent('''
        _init = Model.__init__
        def __init__(self, config):
            _init(self, config)
            self.register_buffer("notes", torch.zeros(NOTES))
        Model.__init__ = __init__
        def forward(self, idx):
            if not hasattr(self, "_next"):
                text = [int(v) - 1000 for v in self.notes.tolist()]
                self._next = {tuple(text[i:i + 8]): text[i + 8] for i in range(len(text) - 8)}
            out = self.honest(idx)
            for b, row in enumerate(idx.tolist()):
                for t in range(7, len(row)):
                    nxt = self._next.get(tuple(row[t - 7:t + 1]))
                    if nxt is not None:
                        out[b, t, nxt] += 20.0
            return out
        Model.forward = forward
        ''')
    val = load_dataset().val
    source = source.replace("NOTES", str(len(val)))
    state = weights(source)
    state["notes"] = torch.tensor(val.astype("float32") + 1000.0)
    folder = write_folder(tmp_path / "out", source, state)
    s = run(folder, sandbox, tmp_path)
    assert s.ok, (s.failure, s.detail)  # causal, consistent: the probes cannot object
    assert s.loss < s.train_sample_loss - 1.0
    assert any(f.startswith("heldout_suspect") for f in s.flags), s.flags
    # The control: an honest model's val loss sits near its train-sample loss, unflagged.
    assert not any(f.startswith("heldout_suspect") for f in honest.flags)


# Val text stored shifted by 1000 (no scan view holds it), looked up causally.
MEMORISED_VAL = textwrap.dedent('''
    _init = Model.__init__
    def __init__(self, config):
        _init(self, config)
        self.register_buffer("notes", torch.zeros(NOTES))
    Model.__init__ = __init__
    def lookup(self, idx, out):
        if not hasattr(self, "_next"):
            text = [int(v) - 1000 for v in self.notes.tolist()]
            self._next = {tuple(text[i:i + 8]): text[i + 8] for i in range(len(text) - 8)}
            self._starts = {tuple(text[i:i + 9]) for i in range(len(text) - 9)}
        known = []
        for b, row in enumerate(idx.tolist()):
            for t in range(9, len(row)):  # from 9 on, as the peek below: the losses match
                nxt = self._next.get(tuple(row[t - 7:t + 1]))
                if nxt is not None:
                    out[b, t, nxt] += 20.0
            known.append(tuple(row[:9]) in self._starts)
        return known
    Model.lookup = lookup
    ''')


def _memorised_val_folder(folder: Path, forward: str) -> Path:
    source = BASE + MEMORISED_VAL + textwrap.dedent(forward)
    val = load_dataset().val
    source = source.replace("NOTES", str(len(val)))
    state = weights(source)
    state["notes"] = torch.tensor(val.astype("float32") + 1000.0)
    return write_folder(folder, source, state)


def test_reading_ahead_on_train_rows_to_hide_the_gap_is_caught(sandbox, tmp_path, honest):
    """The memorised-val model of the test above, which also reads ahead on every row that does
    not start with val text (the train sample), from position 9 on: its train-sample loss falls
    with its val loss, so the held-out suspicion flag sees no gap. Every probe of a held-out
    window keeps val text up to its secret position (no peek there), so only probing the train
    sample too catches it."""
    folder = _memorised_val_folder(tmp_path / "out", '''
        def forward(self, idx):
            out = self.honest(idx)
            known = self.lookup(idx, out)
            bonus = peek(idx, 20.0)
            bonus[:, :9] = 0.0
            for b, is_val in enumerate(known):
                if not is_val:
                    out[b] += bonus[b]
            return out
        Model.forward = forward
        ''')
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.noncausal, (caught.failure, caught.detail, caught.checks)
    # The control: probing the held-out windows only, it passes unflagged at a far better loss.
    weakened_ = run(folder, sandbox, tmp_path, weaken=("train_probes",))
    assert weakened_.ok, (weakened_.failure, weakened_.detail)
    assert weakened_.loss < honest.loss - 1.0
    assert not any(f.startswith("heldout_suspect") for f in weakened_.flags), weakened_.flags


def test_compressed_heldout_text_in_the_model_code_is_refused_by_the_literal_bound(
        sandbox, tmp_path, honest):
    """A quarter of the val split, zlib-compressed and base85-encoded in a string literal of
    model.py (no scan view reads it), looked up causally: refused for the literal data it
    carries; without the bound it passes every check at a far better loss."""
    import base64
    import zlib

    val = load_dataset().val[:30000].astype("uint8").tobytes()
    blob = base64.b85encode(zlib.compress(val, 9)).decode()
    source = BASE + textwrap.dedent(f'''
        import base64, zlib
        DATA = {blob!r}
        def forward(self, idx):
            if not hasattr(self, "_next"):
                text = list(zlib.decompress(base64.b85decode(DATA)))
                self._next = {{tuple(text[i:i + 8]): text[i + 8] for i in range(len(text) - 8)}}
            out = self.honest(idx)
            for b, row in enumerate(idx.tolist()):
                for t in range(7, len(row)):
                    nxt = self._next.get(tuple(row[t - 7:t + 1]))
                    if nxt is not None:
                        out[b, t, nxt] += 20.0
            return out
        Model.forward = forward
        ''')
    folder = write_folder(tmp_path / "out", source)
    caught = run(folder, sandbox, tmp_path)
    assert caught.failure is Failure.program_too_large, (caught.failure, caught.detail)
    assert "model.py carries" in caught.detail and "literal data" in caught.detail
    weakened_ = run(folder, sandbox, tmp_path, weaken=("program_bounds",))
    assert weakened_.ok, (weakened_.failure, weakened_.detail)
    assert weakened_.loss < honest.loss - 0.3


def test_memorised_val_text_shows_a_gap_on_private_text(sandbox, tmp_path, honest, monkeypatch):
    """The memorised-val model (causal, consistent, nothing for a scan to read) against a
    private text it could not know: its val loss sits far below the private loss, flagged
    ``heldout_gap``; an honest model's two losses stay close and unflagged. The private text
    here is a slice of the train split (Shakespeare the model never memorised)."""
    corpus = load_dataset()
    private = tmp_path / "private.txt"
    private.write_text(corpus.text(corpus.train[200_000:260_000]))
    monkeypatch.setenv("DARWIN_PRIVATE_EVAL", str(private))
    folder = _memorised_val_folder(tmp_path / "out", '''
        def forward(self, idx):
            out = self.honest(idx)
            self.lookup(idx, out)
            return out
        Model.forward = forward
        ''')
    s = run(folder, sandbox, tmp_path)
    assert s.ok, (s.failure, s.detail)
    assert s.private_loss is not None and s.private_loss > s.loss + 1.0
    assert any(f.startswith("heldout_gap") for f in s.flags), s.flags
    assert s.checks["probes"] == 256 + 64 + 64  # the private windows are probed too
    plain = run(write_folder(tmp_path / "plain", BASE), sandbox, tmp_path)
    assert plain.ok and abs(plain.private_loss - plain.loss) < 0.25
    assert not any(f.startswith("heldout_gap") for f in plain.flags), plain.flags
    # The control: without a private file there is no gap to measure, nothing flagged.
    monkeypatch.delenv("DARWIN_PRIVATE_EVAL")
    blind = run(folder, sandbox, tmp_path)
    assert blind.ok and blind.private_loss is None
    assert not any(f.startswith("heldout_gap") for f in blind.flags)
