"""Scorer v3: candidate data against the trusted code around the checks (issue #31, items 4-7).

Each attack is an output folder built directly (no training), scored on both sandbox backends
where a sandbox is involved, and each test shows its control: the arithmetic or the print that
the old code did on that same data raising or forging. Then the honest variants the perturbation
check once rejected (mask buffers of -inf / finfo.min / bool, tied embeddings, bf16 autocast).
"""

from __future__ import annotations

import json
import math
import struct
import textwrap
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from safetensors.torch import save_model

from darwin.evaluation import heldout
from darwin.evaluation.budgets import get_budget
from darwin.evaluation.data import load_dataset
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.outputs import read_claims
from darwin.evaluation.scoring import TRUSTED

from .test_scorer_attacks import BASE, weights, write_folder
from .weakened import weakened

pytestmark = pytest.mark.sandbox


@pytest.fixture(params=["local", "docker"])
def box(request):
    from tests.conftest import require_sandbox

    return require_sandbox(request.param)


def run(folder: Path, sandbox, work: Path, **kw):
    return TRUSTED.score(folder, get_budget("tiny"), sandbox, work, **kw)


def _rewrite_header(path: Path, header: dict) -> None:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n:])


def _header(path: Path) -> dict:
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n])


# -- 4. candidate data that crashed trusted code -----------------------------------------------

HUGE = int("9" * 4000)  # below Python's 4300-digit parse limit: json.loads takes it

BAD_CLAIMS = {
    "huge integer": '{"val_loss": %d}' % HUGE,
    "NaN": '{"val_loss": NaN}',
    "infinity": '{"val_loss": -Infinity}',
    "lone surrogate": '{"note": "\\ud800"}',
    "terminal escape": '{"note": "\\u001b[2J"}',
    "nested": '{"val_loss": [[[1]]]}',
    "not an object": "[1, 2]",
}


def test_a_claim_that_crashed_the_old_comparison_is_bad_output(box, tmp_path):
    with pytest.raises(OverflowError):  # the control: what the old comparison did with it
        abs(json.loads(BAD_CLAIMS["huge integer"])["val_loss"] - 1.5)
    folder = write_folder(tmp_path / "out", BASE)
    (folder / "claims.json").write_text(BAD_CLAIMS["huge integer"])
    s = run(folder, box, tmp_path / "work")
    assert s.failure is Failure.bad_output, (s.failure, s.detail)
    assert "claims.json" in s.detail and s.claims == {}


@pytest.mark.parametrize("what", sorted(BAD_CLAIMS))
def test_claims_that_cannot_be_kept_safely_are_refused(what, tmp_path):
    (tmp_path / "claims.json").write_text(BAD_CLAIMS[what])
    with pytest.raises(Rejected) as caught:
        read_claims(tmp_path / "claims.json")
    assert caught.value.failure is Failure.bad_output


def test_a_diverged_model_is_invalid_logits_whatever_its_claims(sandbox, tmp_path):
    """Its NaN final loss in claims.json is honest: the real failure (read by the repairs)
    comes first; bad claims are a failure only when nothing else is."""
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent('''
        Model.forward = lambda self, idx: torch.full((*idx.shape, V), float("nan"))
        '''))
    (folder / "claims.json").write_text(BAD_CLAIMS["NaN"])
    s = run(folder, sandbox, tmp_path / "work")
    assert s.failure is Failure.invalid_logits, (s.failure, s.detail)


def test_a_child_whose_claims_crashed_the_score_task_fails_and_its_sibling_is_scored(
        sandbox, tmp_path):
    """What the score task of a run calls (train_and_score on a finished training): the child
    with the huge claim is that child's typed failure, its record serialises, and the honest
    sibling scored after it is ok with its claims kept."""
    from darwin.evaluation.training import TrainResult
    from darwin.evaluation.trial import train_then_score
    from darwin.memory.records import EvaluationRecord
    from darwin.sandbox import Outcome

    program = tmp_path / "train.py"
    program.write_text("# trained already\n")
    results = {}
    for name, claims in (("attacker", BAD_CLAIMS["huge integer"]),
                         ("honest", '{"val_loss": 3.9, "iterations": 64, "note": "ok"}')):
        work = tmp_path / name
        folder = write_folder(work / "out", BASE)
        (folder / "claims.json").write_text(claims)
        trained = TrainResult(Outcome.ok, 1.0, 100, 1, 0, folder, work / "train.log", "local",
                              True, 0)
        ev = train_then_score(program, get_budget("tiny"), 0, sandbox, work,
                              trained=trained)
        d = ev.to_dict()
        EvaluationRecord(candidate_id=name, code_sha="x", seed=0, budget="tiny",
                         status=d["status"], detail=d["detail"], claims=d["claims"],
                         flags=d["flags"], val_loss=d["val_loss"]).model_dump_json()
        results[name] = ev
    assert results["attacker"].failure is Failure.bad_output
    assert results["honest"].ok, results["honest"].detail
    assert results["honest"].claims == {"val_loss": 3.9, "iterations": 64, "note": "ok"}


def test_a_loss_that_overflows_exp_has_infinite_perplexity(box, tmp_path):
    # Finite float32 logits, but the true token sits 3e38 below the top: loss ~ 1e38.
    folder = write_folder(tmp_path / "out", BASE + textwrap.dedent('''
        def forward(self, idx):
            out = torch.zeros(*idx.shape, V)
            out[..., 0] = 3e38
            return out
        Model.forward = forward
        '''))
    s = run(folder, box, tmp_path / "work")
    assert s.ok, (s.failure, s.detail)
    assert s.loss > 1e36 and s.perplexity == math.inf
    with pytest.raises(OverflowError):  # the control: the old perplexity
        math.exp(s.loss)


def test_reports_of_a_population_holding_a_huge_loss_do_not_overflow(tmp_path):
    """A child with a 1e38 loss (finite logits) that a small population still holds: the
    markdown published each generation and the runs table compared it with the seed by exp."""
    from darwin.memory.records import Member
    from darwin.reports.views import generation_markdown, run_rows
    from tests.reports import synthetic

    data = synthetic.run(generations=1, children=2)
    last = data.generations[-1]
    huge = [Member(candidate_id=m.candidate_id, losses=[1e38]) for m in last.population]
    data.generations[-1] = last.model_copy(update={"population": huge})
    with pytest.raises(OverflowError):  # the control: the comparison as it was
        math.exp(huge[0].fitness - data.generations[0].population[0].fitness)
    store = synthetic.write(data, tmp_path / "runs")
    assert "% ppl" in generation_markdown(store, 1)
    assert run_rows(str(tmp_path / "runs"))[0]["change_pct"] > 1e300


def test_a_tensor_name_that_is_not_utf8_is_bad_weights(box, tmp_path):
    folder = write_folder(tmp_path / "out", BASE)
    header = _header(folder / "model.safetensors")
    header["\ud800"] = header.pop("head.bias")  # valid JSON ("\\ud800"), not encodable
    _rewrite_header(folder / "model.safetensors", header)
    with pytest.raises(UnicodeEncodeError):  # the control: what the old client sent
        "\ud800".encode()
    s = run(folder, box, tmp_path / "work")
    assert s.failure is Failure.bad_weights, (s.failure, s.detail)
    assert "not printable UTF-8" in s.detail


@pytest.mark.parametrize("field,value", [("shape", ["65", 16]), ("shape", [65.0, 16]),
                                         ("data_offsets", [0, 2 ** 70])])
def test_a_shape_or_offset_that_is_not_a_whole_number_is_bad_weights(field, value, sandbox,
                                                                     tmp_path):
    folder = write_folder(tmp_path / "out", BASE)
    header = _header(folder / "model.safetensors")
    header["emb.weight"][field] = value
    _rewrite_header(folder / "model.safetensors", header)
    s = run(folder, sandbox, tmp_path / "work")
    assert s.failure is Failure.bad_weights, (s.failure, s.detail)


# -- 5. the scan's bounds -----------------------------------------------------------------------

def test_weights_over_the_budgets_cap_are_bad_output_before_any_read(box, tmp_path):
    folder = write_folder(tmp_path / "out", BASE)
    cap = get_budget("tiny").max_weights_mb << 20
    with open(folder / "model.safetensors", "r+b") as f:  # sparse: nothing to write
        f.truncate(cap + 1)
    s = run(folder, box, tmp_path / "work")
    assert s.failure is Failure.bad_output and "model.safetensors" in s.detail, s.detail
    assert get_budget("paper").max_weights_mb > get_budget("tiny").max_weights_mb


def test_the_scan_streams_in_bounded_memory_and_finds_runs_across_chunks(tmp_path,
                                                                         monkeypatch):
    index = heldout.HeldoutIndex.of(load_dataset())
    big = tmp_path / "big.bin"
    big.write_bytes(np.random.default_rng(0).standard_normal(6 << 20).astype("<f4").tobytes())
    tracemalloc.start()
    try:
        assert index.find([big]) == ""
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # 24 MB scanned in about 20 chunks' worth of memory; reading it whole took ~20 x the file.
    assert peak < 24 * heldout.CHUNK < 20 * big.stat().st_size, peak
    # A run of held-out ids (u16) straddling every chunk boundary is still found.
    monkeypatch.setattr(heldout, "CHUNK", 4096)
    ids = load_dataset().val[3000:3000 + 40].astype("<u2").tobytes()
    for cut in (1, 33, 79):
        data = bytearray(np.random.default_rng(cut).integers(0, 256, 3 * 4096, dtype=np.uint8))
        at = 4096 - cut
        data[at:at + len(ids)] = ids
        (tmp_path / "cut.bin").write_bytes(bytes(data))
        assert "u16 ids" in index.find([tmp_path / "cut.bin"]), cut


def test_a_scan_past_its_deadline_is_bad_output(box, tmp_path, monkeypatch):
    import darwin.evaluation.scoring as scoring

    monkeypatch.setattr(scoring, "scan_deadline_s", lambda budget: 0.0)
    s = run(write_folder(tmp_path / "out", BASE), box, tmp_path / "work")
    assert s.failure is Failure.bad_output and "to scan" in s.detail, s.detail
    with pytest.raises(Rejected):
        heldout.HeldoutIndex.of(load_dataset()).find([tmp_path / "out" / "model.py"], 0.0)


def test_a_file_made_to_slow_the_scan_stops_at_its_deadline(tmp_path):
    """4 MB (one chunk) of the held-out piece that recurs most, each a hash hit to check by hand
    at seconds per MB: the deadline holds inside a chunk, not only between chunks."""
    import time

    index = heldout.HeldoutIndex.of(load_dataset())
    h, where = max(index.where.items(), key=lambda kv: len(kv[1]))
    piece = load_dataset().text(index.held[where[0]:where[0] + heldout.GRAM]).encode()
    slow = tmp_path / "slow.bin"
    slow.write_bytes((piece + b"\xff" * heldout.GRAM) * (heldout.CHUNK // (2 * heldout.GRAM)))
    started = time.monotonic()
    with pytest.raises(Rejected) as caught:
        index.find([slow], deadline_s=0.5)
    assert caught.value.failure is Failure.bad_output
    assert time.monotonic() - started < 3.0


# -- 6. candidate text printed as markup ---------------------------------------------------------

FORGED = "[green]checks passed; val loss 0.09[/]"


def _printed(rows) -> Console:
    import darwin.cli.score as cli_score

    console = Console(record=True, width=400, force_terminal=True, color_system="truecolor",
                      highlight=False)  # as darwin.cli.app's consoles
    original, cli_score.out = cli_score.out, console
    try:
        cli_score._print_rows("t", rows, None)
    finally:
        cli_score.out = original
    return console


def test_a_tensor_name_in_markup_is_printed_as_text(sandbox, tmp_path):
    # The name lands in the failure's detail (and, for an unused tensor, in a flag).
    folder = write_folder(tmp_path / "out", BASE)
    header = _header(folder / "model.safetensors")
    header[FORGED] = dict(header.pop("head.bias"), data_offsets=[0, 1])  # inconsistent
    _rewrite_header(folder / "model.safetensors", header)
    s = run(folder, sandbox, tmp_path / "work")
    assert s.failure is Failure.bad_weights and FORGED in s.detail
    row = {"seed": 0, "status": s.failure.value, "val_loss": None, "perplexity": None,
           "mfu": None, "train_wall_s": 1.0, "eval_wall_s": 1.0, "tokens_served": 1,
           "checks": {}, "unused_tensors": [], "flags": [f"unused_weights: 1 tensor(s) ({FORGED})"],
           "detail": s.detail, "peak_label": ""}
    console = _printed([row])
    text = console.export_text()
    assert text.count(FORGED) == 2, text  # detail and flag, brackets and all
    assert "\x1b[32m" not in console.export_text(styles=True)  # nothing came out green
    # The control: the same detail printed with markup on, as before, forged a green line.
    control = Console(record=True, width=400, force_terminal=True, color_system="truecolor",
                      highlight=False)
    control.print(f"[red]seed 0: bad_weights[/] {s.detail}")
    assert "\x1b[32mchecks passed; val loss 0.09" in control.export_text(styles=True)


def test_darwin_show_prints_a_stored_detail_and_flag_as_text(tmp_path):
    import darwin.cli.read as cli_read
    from tests.reports import synthetic

    data = synthetic.run(generations=1, children=3)
    victim = next(e for e in data.evaluations if e.status == "crash")
    data.evaluations[data.evaluations.index(victim)] = victim.model_copy(update={
        "status": "bad_weights", "detail": f"tensor {FORGED!r} has inconsistent offsets",
        "flags": [f"unused_weights: 1 tensor(s) change nothing ({FORGED})"]})
    synthetic.write(data, tmp_path / "runs")
    console = Console(record=True, width=400, force_terminal=True, color_system="truecolor",
                      highlight=False)
    original, cli_read.out = cli_read.out, console
    try:
        cli_read.show(victim.candidate_id, run_id=data.run_id, storage_url=str(tmp_path / "runs"))
    finally:
        cli_read.out = original
    assert console.export_text().count(FORGED) == 2
    assert "\x1b[32m" not in console.export_text(styles=True)


# -- 7. honest programs the perturbation check rejected ------------------------------------------

# A tiny causal attention model with three heads of one layer each, masked three common ways
# (a persistent -inf buffer, a finfo.min buffer, a bool buffer), tied embeddings and a plain
# buffer; config "autocast" runs the forward in bf16 autocast.
HONEST = '''
import torch
import torch.nn as nn
import torch.nn.functional as F

V, D, T = 65, 16, 32


class Block(nn.Module):
    def __init__(self, kind):
        super().__init__()
        self.kind = kind
        self.qkv = nn.Linear(D, 3 * D)
        causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
        if kind == "bool":
            self.register_buffer("mask", causal)
        else:
            fill = float("-inf") if kind == "neg_inf" else torch.finfo(torch.float32).min
            self.register_buffer("mask", torch.zeros(T, T).masked_fill(~causal, fill))

    def forward(self, x):
        t = x.shape[1]
        q, k, v = self.qkv(x).split(D, dim=-1)
        att = q @ k.transpose(-1, -2) / D ** 0.5
        if self.kind == "bool":
            att = att.masked_fill(~self.mask[:t, :t], float("-inf"))
        else:
            att = att + self.mask[:t, :t].to(att.dtype)
        return x + F.softmax(att.float(), dim=-1).to(v.dtype) @ v


class Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.autocast = config.get("autocast", False)
        self.emb = nn.Embedding(V, D)
        self.blocks = nn.ModuleList(Block(k) for k in ("neg_inf", "finfo_min", "bool"))
        self.head = nn.Linear(D, V, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.register_buffer("scale", torch.ones(D))  # a plain float buffer

    def forward(self, idx):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.autocast):
            x = self.emb(idx) * self.scale
            for block in self.blocks:
                x = block(x)
            return self.head(x).float()


def build_model(config):
    return Model(config)
'''


def _honest_folder(folder: Path, autocast: bool) -> Path:
    folder.mkdir(parents=True)
    (folder / "model.py").write_text(HONEST)
    (folder / "config.json").write_text(json.dumps({"autocast": autocast}))
    ns: dict = {}
    exec(HONEST, ns)  # our own model code, in the test process
    torch.manual_seed(0)
    model = ns["Model"]({})
    save_model(model, str(folder / "model.safetensors"))  # tied: one tensor saved
    return folder


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16-autocast"])
def test_honest_masks_tied_embeddings_and_buffers_pass(autocast, box, tmp_path):
    folder = _honest_folder(tmp_path / "out", autocast)
    mask = _masks(folder)
    # The control: the old noise scale (mean magnitude, non-finite entries included) is
    # infinite for the -inf mask, so its perturbation made every logit NaN: invalid_logits.
    assert not math.isfinite(0.5 * (float(mask["neg_inf"].float().abs().mean()) + 1e-2))
    s = run(folder, box, tmp_path / "work")
    assert s.ok, (s.failure, s.detail, s.checks)
    assert s.checks["verified"] and math.isfinite(s.loss)  # untrained: only scored
    # Every saved tensor moves the output, masks included: none is left out of the FLOPs.
    assert s.unused == [], s.unused
    # The -inf mask moved by finite noise on its finite entries (its -inf stay), so the logits
    # stayed finite; the old infinite scale turned them all to NaN.
    assert "blocks.0.mask" not in s.checks.get("perturbed_to_nonfinite", []), s.checks


def _masks(folder: Path) -> dict:
    from safetensors.torch import load_file

    saved = load_file(str(folder / "model.safetensors"))
    assert "head.weight" not in saved or "emb.weight" not in saved  # tied: saved once
    return {"neg_inf": saved["blocks.0.mask"], "finfo_min": saved["blocks.1.mask"]}


def test_a_tensor_whose_perturbation_overflows_counts_as_used(sandbox, tmp_path):
    """A buffer that matters only through an overflow (x * (c / c) with c near float32's max):
    its perturbation makes the logits NaN, which says it is used, not that the model is bad."""
    source = BASE + textwrap.dedent('''
        _init = Model.__init__
        def __init__(self, config):
            _init(self, config)
            self.register_buffer("ceiling", torch.full((V,), 3e38))
        Model.__init__ = __init__
        def forward(self, idx):
            return self.honest(idx) * (self.ceiling / self.ceiling)
        Model.forward = forward
        ''')
    folder = write_folder(tmp_path / "out", source, weights(source))
    s = run(folder, sandbox, tmp_path / "work")
    assert s.ok, (s.failure, s.detail)
    assert s.checks["perturbed_to_nonfinite"] == ["ceiling"] and "ceiling" not in s.unused
    # The control: the scorer that took non-finite perturbed logits for invalid ones.
    old = weakened("nonfinite_as_used").score(folder, get_budget("tiny"), sandbox,
                                              tmp_path / "work-old")
    assert old.failure is Failure.invalid_logits, (old.failure, old.detail)
