"""The trusted scorer: the score comes from code the candidate cannot reach, and no check relies
on what the checked process said about itself.

The candidate's model code has to run to be scored, so it runs in fresh sandboxed processes
(darwin/evaluation/runtime/eval_server.py) that answer forward requests with raw float32 logits;
this side computes every number, in float64, and treats every frame as untrusted input.

- **Process A** answers the fixed held-out windows (the loss) plus a fixed sample of train windows
  (for the held-out suspicion flag) and, when the user names one, windows of a private text (the
  memorisation gap, private_eval.py), in batches whose order and composition come from a secret
  per-scoring seed (``os.urandom``, kept in the result for audit afterwards). No two windows that
  touch in the text share a batch, since a window's last target is its neighbour's first token.
- **Process B** starts after A is gone and answers probes (of secret held-out windows and of every
  train-sample and private window) it cannot tell from real rows: a
  window's tokens up to a secret position l, then train text whose token at l+1 differs from the
  true one, at full length. A causal model gives B the log-probabilities it gave A at l (same
  prefix). A model that read the future, remembered earlier requests or read other rows gave A
  something B cannot reproduce. Every probe must agree within a fixed absolute tolerance (never
  scaled by the logits, so shifting them buys nothing), and A must have no systematic edge over B
  on the true token (mean of A's minus B's log-probability at most ``EDGE``). A model that peeks
  at a fraction f of positions is caught by the probes with probability 1 - (1 - f)^P: 99.4 %
  for f = 2 % and P = 256; peeks too small for the tolerance add up in the edge test.
- In B, after the probes, every saved floating-point tensor is perturbed in turn
  (darwin/evaluation/flops.py): only a matrix whose secret random blocks move every early position
  counts toward FLOPs (a matmul); one that moves only the positions that read it is read by index
  (``checks["index_read"]``); one that moves nothing is unused (flag ``unused_weights``). Integer
  and bool tensors never count.
- Before anything runs, each Python file is bounded in size and in literal data (program_bounds.py:
  ``program_too_large``), and the program and its output folder are scanned for any 32-character
  run of val or test text, as text or as token ids in common integer and float widths
  (``heldout_in_program``).
- Everything read from the output folder is validated before use (outputs.py: printable tensor
  names, whole bounded shapes and offsets, claims of bounded numbers and printable text), the
  weights are capped by the budget (``max_weights_mb``) and the scan streams under a deadline:
  a candidate's data ends in its typed failure, never in an exception of ours.

What leaves the scorer of the evaluation processes: typed failures, numbers we computed, and for
an error the stage, a built-in exception class name and model.py line numbers. Never their
output or an exception's message (which could carry the tokens the model was shown).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darwin.evaluation.budgets import Budget
from darwin.evaluation.data import Dataset, eval_windows, load_dataset, window_starts
from darwin.evaluation.eval_client import (
    EvalClient,
    EvalSession,
    PrestartedScorer,
    eval_spec,
)
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.flops import classify, is_float, may_count
from darwin.evaluation.heldout import HeldoutIndex
from darwin.evaluation.outputs import collect_outputs, read_claims, read_safetensors_header
from darwin.evaluation.private_eval import WINDOWS as PRIVATE_WINDOWS
from darwin.evaluation.private_eval import gap_flag, private_tokens
from darwin.evaluation.program_bounds import check_program
from darwin.sandbox import Sandbox

log = logging.getLogger(__name__)

EVAL_BATCH = 32
PROBES = 256  # at most one per window: min(PROBES, windows) probes per scoring
TRAIN_SAMPLE = 64  # train windows scored beside the held-out ones (heldout_suspect)
PERTURB_ROWS = 4
# Absolute tolerances on log-probabilities (max over the vocabulary at a probe position). CPU:
# float32 kernels, A and B differ only by batch composition (measured honest: below 1e-5). CUDA:
# bf16/TF32 kernels and autocast programs; not yet calibrated on a GPU here.
TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}
# The most A may gain over B on the true token, mean over probes (nats): a tenth of the seed's
# 2-sigma band or less (measured bands: tiny 0.009, cpu 0.007 (8 seeds, 400 iterations), paper
# 0.014).
EDGE = {"cpu": 5e-4, "cuda": 1e-3}


@dataclass
class Score:
    split: str
    loss: float | None = None
    perplexity: float | None = None
    tokens: int = 0
    failure: Failure | None = None
    detail: str = ""
    checks: dict = field(default_factory=dict)  # probes, tolerance, max_diff, edge, verified
    flags: list[str] = field(default_factory=list)
    parameters: int | None = None  # from the safetensors header (trusted)
    flops_per_token: float | None = None  # 6 x elements of the tensors shown to be matmuls
    unused: list[str] = field(default_factory=list)  # tensors that changed nothing
    index_read: list[str] = field(default_factory=list)  # used, but not as a matmul
    train_sample_loss: float | None = None
    private_loss: float | None = None  # on the user's private text (private_eval.py), if any
    audit_seed: str = ""  # the secret batching and probe seed, revealed after scoring
    eval_wall_s: float = 0.0
    log_tail: str = ""  # our own summary of an evaluation error (no text of the candidate's)
    claims: dict = field(default_factory=dict)  # claims.json, validated (never trusted)

    @property
    def ok(self) -> bool:
        return self.failure is None


def perplexity(loss: float) -> float:
    """exp(loss); ``inf`` where that overflows (finite logits can give a loss of 1e38)."""
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def scan_deadline_s(budget: Budget) -> float:
    """How long the held-out scan may take: as long as an evaluation process may live."""
    return max(60.0, budget.deadline_s / 2)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


@dataclass(frozen=True)
class Window:
    tokens: np.ndarray  # context + 1 tokens: inputs [:-1], targets [1:]
    region: str  # "held" (the split being scored), "train" (the sample) or "private"
    start: int  # where it starts in its region's text


def secret_batches(items: list[Window], size: int, rng: np.random.Generator,
                   context: int) -> list[list[int]]:
    """Indices of ``items`` in batches of at most ``size``, in a secret random order, never two
    windows that touch in the text (within ``context`` tokens) in one batch."""
    order = rng.permutation(len(items))
    batches: list[list[int]] = []
    for i in order:
        w = items[i]
        home = next((b for b in batches if len(b) < size and not any(
            items[j].region == w.region and abs(items[j].start - w.start) <= context
            for j in b)), None)
        if home is None:
            batches.append([int(i)])
        else:
            home.append(int(i))
    return [batches[k] for k in rng.permutation(len(batches))]


def train_sample(dataset: Dataset, context: int, n: int) -> list[Window]:
    """A fixed sample of train windows, spread evenly over the split."""
    starts = window_starts(len(dataset.train), context, n)
    return [Window(dataset.train[s : s + context + 1].astype(np.int64), "train", int(s))
            for s in starts]


@dataclass
class Probe:
    window: int  # index into process A's windows (held-out, then train sample, then private)
    pos: int  # the secret position l: B's row keeps the window's tokens up to l
    row: np.ndarray  # B's input row
    a_logp: np.ndarray | None = None  # A's log-probabilities at positions 0..l


def make_probes(items: list[Window], dataset: Dataset, n: int, context: int,
                rng: np.random.Generator) -> list[Probe]:
    """One probe for each of ``n`` secret held-out windows and for every train-sample window:
    its tokens up to a secret position, then train text whose next token differs from the true
    one, at full length.

    The train sample is probed too: the held-out suspicion flag compares the held-out loss with
    the train sample's, so a model that memorised the held-out text could otherwise read ahead
    on the (unprobed) train rows alone and pull their loss down to hide the gap."""
    held = [i for i, w in enumerate(items) if w.region == "held"]
    train_rows = [i for i, w in enumerate(items) if w.region != "held"]
    chosen = rng.choice(held, size=min(n, len(held)), replace=False).tolist() if held else []
    probes = []
    train = dataset.train
    for w in sorted(chosen + train_rows):
        x = items[w].tokens[:-1]
        pos = int(rng.integers(0, context - 1))  # the true next token x[pos+1] is in the row
        while True:
            s = int(rng.integers(0, len(train) - context))
            donor = train[s : s + context]
            if donor[pos + 1] != x[pos + 1]:
                break
        row = np.concatenate([x[: pos + 1], donor[pos + 1 :]]).astype(np.int64)
        probes.append(Probe(w, pos, row))
    return probes


@dataclass
class _Job:
    """One scoring's inputs, as the steps below share them."""

    out_dir: Path
    budget: Budget
    sandbox: Sandbox
    workdir: Path
    split: str
    device: str
    cpus: list[int] | None
    program: Path | None
    packages: Path | None
    prestarted: PrestartedScorer | None
    model_dir: Path
    vocab: int = 0
    model_lines: int = 0


class Scorer:
    """The trusted scorer, one overridable method per check, run in this order by ``score``:
    collect the outputs, scan for held-out text, A answers the held-out windows and the train
    sample in a secret batching, B answers the probes, B's perturbations find unused tensors.
    Nothing here is switched off for tests: a test that shows an attack getting through without
    one check derives a weaker scorer and overrides that method (tests/evaluation/weakened.py)."""

    client: type[EvalClient] = EvalClient  # speaks to the evaluation processes

    def score(self, out_dir: Path, budget: Budget, sandbox: Sandbox, workdir: Path, *,
              split: str = "val", device: str = "cpu", cpus: list[int] | None = None,
              program: Path | None = None, packages: Path | None = None,
              prestarted: PrestartedScorer | None = None) -> Score:
        """Score a finished training run's output folder on ``split`` (val, or test for
        reports). Never raises: a candidate's fault is a typed failure; a bug of ours is
        ``scorer_error``."""
        result = Score(split=split)
        started = time.monotonic()
        workdir = Path(workdir)
        model_dir = prestarted.model_dir if prestarted is not None else workdir / f"model-{split}"
        job = _Job(Path(out_dir), budget, sandbox, workdir, split, device, cpus, program,
                   packages, prestarted, model_dir)
        try:
            self._score(result, job)
        except Rejected as r:
            result.failure, result.detail = r.failure, r.detail
            result.log_tail = r.detail if r.failure.stage == "eval" else ""
        except Exception:  # noqa: BLE001 - ours, not the candidate's: logged as ours
            log.exception("the scorer failed on %s", out_dir)
            result.failure = Failure.scorer_error
            result.detail = ("the scorer itself failed (a DARWIN bug, logged); the candidate is "
                             "not at fault")
        finally:
            if prestarted is not None:
                prestarted.close()
            result.eval_wall_s = time.monotonic() - started
        if result.failure is not None:
            result.loss = result.perplexity = None
        return result

    # -- the checks, each a method a weaker scorer may override --------------------------------
    def scan_heldout(self, dataset: Dataset, files: list[Path], deadline_s: float) -> None:
        """Refuse a program or output that carries held-out text."""
        found = HeldoutIndex.of(dataset).find(files, deadline_s)
        if found:
            raise Rejected(Failure.heldout_in_program, found)

    def bound_program(self, sources: list[Path]) -> None:
        """Refuse a program file (or model.py) too large, or carrying too much literal data."""
        check_program(sources)

    def probes(self, items: list[Window], dataset: Dataset, context: int,
               rng: np.random.Generator) -> list[Probe]:
        """Probes of process A's windows (``items``: held-out, train sample, private)."""
        return make_probes(items, dataset, PROBES, context, rng)

    def private_windows(self, context: int) -> list[Window]:
        """Windows of the user's private text (none without one): the memorisation gap."""
        private = private_tokens()
        if private is None or len(private[0]) <= 2 * (context + 1):
            return []
        ids = private[0]
        starts = window_starts(len(ids), context, PRIVATE_WINDOWS)
        return [Window(ids[s : s + context + 1], "private", int(s)) for s in starts]

    def batches(self, items: list[Window], rng: np.random.Generator,
                context: int) -> list[list[int]]:
        return secret_batches(items, EVAL_BATCH, rng, context)

    def session(self, name: str, job: _Job) -> EvalSession:
        """Evaluation process ``name`` (a, then b once a is gone): the pre-started one if any."""
        if job.prestarted is not None:
            spec, held = job.prestarted.take(name)
        else:
            spec, held = eval_spec(name, job.model_dir, job.workdir, job.split, job.budget,
                                   job.device, job.cpus, job.packages), None
        return EvalSession(job.sandbox, spec, job.vocab, job.model_lines, held, job.cpus,
                           self.client)

    def countable(self, tensors: dict) -> dict:
        """The tensors that could count toward FLOPs: floating point, two or more dimensions (an
        integer or bool tensor can never be shown to matter, and a mask is not a matmul)."""
        return {k: v for k, v in tensors.items() if may_count(*v)}

    def find_unused(self, result: Score, b: EvalClient, tensors: dict, flops_tensors: dict,
                    rows: np.ndarray, rng: np.random.Generator, tol: float) -> None:
        """Perturb each floating-point tensor in secret blocks; only one shown to be a matmul
        stays in ``flops_tensors``."""
        _find_unused(result, b, tensors, flops_tensors, rows, rng, tol)

    # -- the order ------------------------------------------------------------------------------
    def _score(self, result: Score, job: _Job) -> None:
        dataset = load_dataset()
        files = collect_outputs(job.out_dir, job.model_dir, job.budget.max_weights_mb << 20)
        tensors = read_safetensors_header(job.model_dir / "model.safetensors")
        # Unusable claims are a failure only if nothing else is: a diverged model writes a NaN
        # final loss, and its invalid_logits says more (the repairs read it).
        try:
            result.claims = read_claims(job.model_dir / "claims.json")
            bad_claims = None
        except Rejected as r:
            bad_claims = r
        result.parameters = sum(math.prod(shape) for _, shape in tensors.values())
        # The program and every file next to it (an approved file layout's extra modules).
        beside = sorted(p for p in (job.workdir / "program").glob("*") if p.is_file()) \
            if (job.workdir / "program").is_dir() else []
        program = [job.program] if job.program is not None else []
        self.bound_program([p for p in [*program, *beside, *files.values()]
                            if p.suffix == ".py"])
        self.scan_heldout(dataset, list(files.values()) + program + beside,
                          scan_deadline_s(job.budget))
        try:
            job.model_lines = (job.model_dir / "model.py").read_bytes().count(b"\n") + 1
        except OSError:
            job.model_lines = 0
        job.vocab = dataset.vocab_size

        context, split = job.budget.eval_context, job.split
        held = [Window(w, "held", int(s)) for w, s in zip(
            eval_windows(dataset.split(split), context, job.budget.val_windows),
            window_starts(len(dataset.split(split)), context, job.budget.val_windows))]
        sample = train_sample(dataset, context, TRAIN_SAMPLE)
        private = self.private_windows(context)
        if private:
            result.checks["private_eval"] = private_tokens()[1][:16]  # which file, not its text
        seed = int.from_bytes(os.urandom(8), "little")
        result.audit_seed = f"{seed:016x}"
        rng = np.random.default_rng(seed)
        # Process A: the windows that count, and the train sample, in a secret batching.
        items = held + sample + private
        probes = self.probes(items, dataset, context, rng)
        by_window = {p.window: p for p in probes}
        batches = self.batches(items, rng, context)
        # Per-window sums, added in window order: the secret batch order must not move the
        # last bits.
        held_sums, other_losses = np.zeros(len(held)), np.zeros(len(sample) + len(private))
        with self.session("a", job) as a:
            for batch in batches:
                rows = np.stack([items[i].tokens for i in batch])
                logp = log_softmax(a.forward(rows[:, :-1]))
                picked = np.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]
                for r, i in enumerate(batch):
                    if i in by_window:
                        by_window[i].a_logp = logp[r, : by_window[i].pos + 1].copy()
                    if i < len(held):
                        held_sums[i] = -math.fsum(picked[r])
                    else:
                        other_losses[i - len(held)] = -math.fsum(picked[r]) / context
        result.tokens = len(held) * context
        result.loss = math.fsum(held_sums) / result.tokens
        result.perplexity = perplexity(result.loss)
        held_losses_mean = result.loss
        train_losses, private_losses = other_losses[: len(sample)], other_losses[len(sample):]
        result.train_sample_loss = float(np.mean(train_losses))

        # Process B, fresh, after A is gone: the probes, then which tensors matter.
        tol, edge_max = TOLERANCE[job.device], EDGE[job.device]
        flops_tensors = self.countable(tensors)
        self._check_with_b(result, job, probes, items, tensors, flops_tensors, rng, context,
                           tol, edge_max)
        result.flops_per_token = 6.0 * sum(math.prod(s) for _, s in flops_tensors.values())
        if not job.sandbox.isolated:  # A and B could share files: the probes prove nothing
            result.checks["verified"] = False
            result.flags.append("unverified: scored without a sandbox (--sandbox unsafe); "
                                "never promoted")
        else:
            result.checks["verified"] = bool(probes)

        # Held-out suspicion: far better on the held-out text than on text it was trained on.
        spread = np.std(train_losses) / math.sqrt(len(train_losses))
        if held_losses_mean < result.train_sample_loss - max(3 * spread, 0.05):
            result.flags.append(
                f"heldout_suspect: {split} loss {held_losses_mean:.4f} is below the loss on a "
                f"sample of its own training text ({result.train_sample_loss:.4f}) beyond the "
                "noise")
        if private:
            result.private_loss = float(np.mean(private_losses))
            result.checks["private_loss"] = result.private_loss  # kept in the record
            gap = gap_flag(held_losses_mean, private_losses)
            if gap is not None:
                result.flags.append(gap)
        if bad_claims is not None:
            raise bad_claims

    def _check_with_b(self, result: Score, job: _Job, probes: list[Probe], items: list[Window],
                      tensors: dict, flops_tensors: dict, rng: np.random.Generator,
                      context: int, tol: float, edge_max: float) -> None:
        rows = [Window(p.row, items[p.window].region, items[p.window].start) for p in probes]
        worst, edges = 0.0, []
        peeked = mixed = 0  # probes that differ only at l / already before l
        with self.session("b", job) as b:
            first_rows = None
            for batch in secret_batches(rows, EVAL_BATCH, rng, context):
                tokens = np.stack([rows[i].tokens for i in batch])
                first_rows = tokens if first_rows is None else first_rows
                logp = log_softmax(b.forward(tokens))
                for r, i in enumerate(batch):
                    p = probes[i]
                    assert p.a_logp is not None
                    mine = logp[r, : p.pos + 1]
                    at = float(np.max(np.abs(mine[-1] - p.a_logp[-1])))
                    before = float(np.max(np.abs(mine[:-1] - p.a_logp[:-1]))) if p.pos else 0.0
                    worst = max(worst, at, before)
                    mixed += before > tol
                    peeked += at > tol >= before
                    true_next = items[p.window].tokens[p.pos + 1]
                    edges.append(float(p.a_logp[-1, true_next] - mine[-1, true_next]))
            if first_rows is None:  # no probes (a weaker scorer's): any held-out rows will do
                first_rows = np.stack([w.tokens[:-1] for w in items[:PERTURB_ROWS]])
            self.find_unused(result, b, tensors, flops_tensors, first_rows[:PERTURB_ROWS], rng,
                             tol)
        if not probes:
            return
        edge = float(np.mean(edges))
        result.checks.update(probes=len(probes), tolerance=tol, max_diff=worst,
                             epsilon=edge_max, edge=edge)
        if worst > tol:
            # The prefix up to l is the same input in A and B: a model that reads the next
            # token differs at l only; one that mixes rows, remembers or is not deterministic
            # differs before l too, on most probes.
            if mixed > peeked:
                raise Rejected(Failure.inconsistent_logits,
                               f"a fresh process gave different log-probabilities for the same "
                               f"prefix (by {worst:.3g}, tolerance {tol:g})")
            raise Rejected(Failure.noncausal,
                           f"log-probabilities moved when only later tokens changed (by "
                           f"{worst:.3g}, tolerance {tol:g}): the model reads the future")
        if edge > edge_max:
            raise Rejected(Failure.noncausal,
                           f"the model does better on the true next token when it can see it "
                           f"(mean edge {edge:.3g} nats over {len(probes)} probes, at most "
                           f"{edge_max:g})")


TRUSTED = Scorer()


def score(out_dir: Path, budget: Budget, sandbox: Sandbox, workdir: Path, **options) -> Score:
    """The trusted scorer's verdict on a finished training's output folder (``Scorer.score``)."""
    return TRUSTED.score(out_dir, budget, sandbox, workdir, **options)


def _log_softmax_or_none(logits: np.ndarray | None) -> np.ndarray | None:
    return None if logits is None else log_softmax(logits)


def _find_unused(result: Score, b: EvalClient, tensors: dict, flops_tensors: dict,
                 rows: np.ndarray, rng: np.random.Generator, tol: float) -> None:
    """Sort the tensors into matmuls, reads by index and unused (darwin/evaluation/flops.py);
    everything but the matmuls leaves ``flops_tensors``. Logits that turn non-finite under a
    perturbation moved: the tensor is used (a mask buffer of -inf or finfo.min can overflow),
    which is not a failure."""
    reference = log_softmax(b.forward(rows))
    uses = classify(tensors, rows, reference,
                    lambda name, seed, gain, r, c: _log_softmax_or_none(
                        b.perturbed(name, seed, rows, gain, r, c)),
                    rng, tol)
    for name, (dtype, _) in tensors.items():  # integer tensors are ``countable``'s to drop
        if is_float(dtype) and name not in uses.matmul:
            flops_tensors.pop(name, None)
    result.unused, result.index_read = uses.unused, uses.index_read
    result.checks["index_read"] = list(uses.index_read)
    if uses.nonfinite:
        result.checks["perturbed_to_nonfinite"] = list(uses.nonfinite)
    if result.unused:
        shown = ", ".join(result.unused[:4]) + (" ..." if len(result.unused) > 4 else "")
        result.flags.append(f"unused_weights: {len(result.unused)} tensor(s) change nothing "
                            f"({shown}); left out of the FLOP count")
