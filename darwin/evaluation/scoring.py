"""The trusted scorer: the score comes from code the candidate cannot reach, and no check relies
on what the checked process said about itself.

The candidate's model code has to run to be scored, so it runs in fresh sandboxed processes
(darwin/evaluation/runtime/eval_server.py) that answer forward requests with raw float32 logits;
this side computes every number, in float64, and treats every frame as untrusted input.

- **Process A** answers the fixed held-out windows (the loss) plus a fixed sample of train windows
  (for the held-out suspicion flag), in batches whose order and composition come from a secret
  per-scoring seed (``os.urandom``, kept in the result for audit afterwards). No two windows that
  touch in the text share a batch, since a window's last target is its neighbour's first token.
- **Process B** starts after A is gone and answers probes it cannot tell from real rows: a
  window's tokens up to a secret position l, then train text whose token at l+1 differs from the
  true one, at full length. A causal model gives B the log-probabilities it gave A at l (same
  prefix). A model that read the future, remembered earlier requests or read other rows gave A
  something B cannot reproduce. Every probe must agree within a fixed absolute tolerance (never
  scaled by the logits, so shifting them buys nothing), and A must have no systematic edge over B
  on the true token (mean of A's minus B's log-probability at most ``EDGE``). A model that peeks
  at a fraction f of positions is caught by the probes with probability 1 - (1 - f)^P: 99.4 %
  for f = 2 % and P = 256; peeks too small for the tolerance add up in the edge test.
- In B, after the probes, every saved floating-point tensor is perturbed in turn; a tensor that
  moves no log-probability is unused: it is left out of the parameter count behind FLOPs (flag
  ``unused_weights``).
- Before anything runs, the program and its output folder are scanned for any 32-character run of
  val or test text, as text or as token ids in common integer and float widths
  (``heldout_in_program``).

What leaves the scorer of the evaluation processes: typed failures, numbers we computed, and for
an error the stage, a built-in exception class name and model.py line numbers. Never their
output or an exception's message (which could carry the tokens the model was shown).
"""

from __future__ import annotations

import builtins
import dataclasses
import json
import logging
import math
import os
import select
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darwin.evaluation.budgets import Budget
from darwin.evaluation.data import Dataset, eval_windows, load_dataset, window_starts
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.heldout import HeldoutIndex
from darwin.evaluation.outputs import collect_outputs, read_safetensors_header
from darwin.evaluation.training import gone, released, runtime_dir
from darwin.sandbox import LIB_DIR, PKG_DIR, Mount, Outcome, Sandbox, SandboxSpec, Warm
from darwin.sandbox.base import SandboxProcess

log = logging.getLogger(__name__)

MODEL_DIR = "/sandbox/model"
EVAL_BATCH = 32
PROBES = 256  # at most one per window: min(PROBES, windows) probes per scoring
TRAIN_SAMPLE = 64  # train windows scored beside the held-out ones (heldout_suspect)
PERTURB_ROWS = 4
UNUSED_GAINS = (1.0, 10.0, 100.0, 1000.0)  # noise gains a tensor must move nothing at (unused)
# Absolute tolerances on log-probabilities (max over the vocabulary at a probe position). CPU:
# float32 kernels, A and B differ only by batch composition (measured honest: below 1e-5). CUDA:
# bf16/TF32 kernels and autocast programs; not yet calibrated on a GPU here.
TOLERANCE = {"cpu": 1e-3, "cuda": 5e-2}
# The most A may gain over B on the true token, mean over probes (nats): a tenth of the seed's
# 2-sigma band or less (measured bands: tiny 0.009, cpu 0.007 (8 seeds, 400 iterations), paper
# 0.014).
EDGE = {"cpu": 5e-4, "cuda": 1e-3}
MAX_FRAME = 1 << 16  # bytes of an RDY or ERR frame
EVAL_STAGES = {"import": Failure.import_error, "weights": Failure.weights_mismatch,
               "forward": Failure.eval_crash, "perturb": Failure.eval_crash}


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
    flops_per_token: float | None = None  # 6 x parameters of matrices shown to matter
    unused: list[str] = field(default_factory=list)  # tensors that changed nothing
    train_sample_loss: float | None = None
    audit_seed: str = ""  # the secret batching and probe seed, revealed after scoring
    eval_wall_s: float = 0.0
    log_tail: str = ""  # our own summary of an evaluation error (no text of the candidate's)

    @property
    def ok(self) -> bool:
        return self.failure is None


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


class EvalClient:
    """Speaks eval_server.py's protocol; every frame is untrusted and bounded, every read has the
    sandbox's deadline, and anything unexpected is a typed failure."""

    def __init__(self, proc: SandboxProcess, vocab_size: int, model_lines: int,
                 keep_messages: bool = False):
        self.proc = proc
        self.vocab_size = vocab_size
        self.model_lines = model_lines
        self.keep_messages = keep_messages  # test hook only: the weakened scorer's leak

    def _read(self, n: int) -> bytes:
        out = self.proc.stdout
        assert out is not None
        buf = bytearray()
        while len(buf) < n:
            left = self.proc.remaining()
            if left <= 0:
                raise Rejected(Failure.eval_timeout, "evaluation passed its deadline")
            ready, _, _ = select.select([out], [], [], left)
            if not ready:
                raise Rejected(Failure.eval_timeout, "evaluation passed its deadline")
            chunk = out.read1(n - len(buf))  # type: ignore[attr-defined]
            if not chunk:
                raise Rejected(Failure.eval_crash, "the evaluation process died")
            buf += chunk
        return bytes(buf)

    def _frame(self) -> bytes:
        (n,) = struct.unpack("<I", self._read(4))
        if n > MAX_FRAME:
            raise Rejected(Failure.eval_crash, "protocol violation (an oversized frame)")
        return self._read(n)

    def _write(self, data: bytes) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise Rejected(Failure.eval_crash, "the evaluation process died") from None

    def _error(self) -> Rejected:
        """An error frame, as a typed failure with only what cannot carry text: the stage, a
        built-in exception class name and line numbers of model.py."""
        raw = self._frame()
        if self.keep_messages:
            return Rejected(Failure.eval_crash, raw.decode("utf-8", "replace"))
        try:
            report = json.loads(raw)
            stage = report["stage"] if report["stage"] in EVAL_STAGES else "forward"
            name = report["error"]
            cls = getattr(builtins, name, None) if isinstance(name, str) else None
            if not (isinstance(cls, type) and issubclass(cls, BaseException)):
                name = "Exception"
            lines = [int(line) for file, line in report["frames"]
                     if file == "model.py" and isinstance(line, int)
                     and 0 < line <= self.model_lines][-3:]
        except Exception:  # noqa: BLE001 - a frame we cannot read is the candidate's fault
            return Rejected(Failure.eval_crash, "protocol violation (an unreadable error frame)")
        where = f" at model.py line {', '.join(map(str, lines))}" if lines else ""
        return Rejected(EVAL_STAGES[stage], f"{stage} raised {name}{where}")

    def ready(self) -> None:
        tag = self._read(4)
        if tag == b"ERR ":
            raise self._error()
        if tag != b"RDY ":
            raise Rejected(Failure.eval_crash, "protocol violation at start")
        self._frame()  # its content is the candidate's to forge: nothing in it is used

    def _logits(self, b: int, t: int) -> np.ndarray:
        tag = self._read(4)
        if tag == b"ERR ":
            raise self._error()
        if tag != b"LOG ":
            raise Rejected(Failure.eval_crash, "protocol violation (expected logits)")
        shape = struct.unpack("<III", self._read(12))
        if shape != (b, t, self.vocab_size):
            raise Rejected(Failure.invalid_logits,
                           f"logits of the wrong shape (expected {[b, t, self.vocab_size]}: "
                           "all positions, the full vocabulary)")
        logits = np.frombuffer(self._read(b * t * self.vocab_size * 4), dtype="<f4")
        if not np.isfinite(logits).all():
            raise Rejected(Failure.invalid_logits, "logits contain NaN or infinity")
        return logits.reshape(b, t, self.vocab_size)

    @staticmethod
    def _tokens(tokens: np.ndarray) -> bytes:
        b, t = tokens.shape
        return struct.pack("<II", b, t) + tokens.astype("<u2").tobytes()

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        self._write(b"FWD " + self._tokens(tokens))
        return self._logits(*tokens.shape)

    def perturbed(self, name: str, seed: int, tokens: np.ndarray, gain: float = 1.0
                  ) -> np.ndarray:
        encoded = name.encode()
        self._write(b"PRT " + struct.pack("<I", len(encoded)) + encoded
                    + struct.pack("<Qf", seed, gain) + self._tokens(tokens))
        return self._logits(*tokens.shape)

    def bye(self) -> None:
        try:
            self._write(b"BYE ")
        except Rejected:
            pass


@dataclass(frozen=True)
class Window:
    tokens: np.ndarray  # context + 1 tokens: inputs [:-1], targets [1:]
    region: str  # "held" (the split being scored) or "train" (the sample)
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
    window: int  # index into the held-out windows
    pos: int  # the secret position l: B's row keeps the window's tokens up to l
    row: np.ndarray  # B's input row
    a_logp: np.ndarray | None = None  # A's log-probabilities at positions 0..l


def make_probes(held: list[Window], dataset: Dataset, n: int, context: int,
                rng: np.random.Generator) -> list[Probe]:
    """One probe for each of ``n`` secret windows: its tokens up to a secret position, then train
    text whose next token differs from the true one, at full length."""
    probes = []
    train = dataset.train
    for w in sorted(rng.choice(len(held), size=n, replace=False).tolist()):
        x = held[w].tokens[:-1]
        pos = int(rng.integers(0, context - 1))  # the true next token x[pos+1] is in the row
        while True:
            s = int(rng.integers(0, len(train) - context))
            donor = train[s : s + context]
            if donor[pos + 1] != x[pos + 1]:
                break
        row = np.concatenate([x[: pos + 1], donor[pos + 1 :]]).astype(np.int64)
        probes.append(Probe(w, pos, row))
    return probes


# What a pre-started evaluation sandbox imports before it is given its model.
SCORE_IMPORTS = ("numpy", "torch", "safetensors.torch")


def _eval_spec(name: str, model_dir: Path, workdir: Path, split: str, budget: Budget,
               device: str, cpus: list[int] | None, packages: Path | None,
               messages: bool) -> SandboxSpec:
    return SandboxSpec(
        argv=["python", f"{LIB_DIR}/eval_server.py"],
        mounts=[Mount(model_dir, MODEL_DIR), Mount(runtime_dir(), LIB_DIR),
                *([Mount(packages, PKG_DIR)] if packages is not None else [])],
        env={"DARWIN_DEVICE": device, "DARWIN_MODEL_DIR": MODEL_DIR,
             **({"PYTHONPATH": f"{LIB_DIR}:{PKG_DIR}"} if packages is not None else {}),
             **({"DARWIN_EVAL_MESSAGES": "1"} if messages else {})},
        cwd="/tmp", deadline_s=max(60.0, budget.deadline_s / 2), memory_mb=budget.memory_mb,
        threads=budget.threads, cpus=cpus, gpu=device == "cuda",
        log_path=workdir / f"eval-{split}-{name}-{os.urandom(4).hex()}.log",
        label=f"eval-{name}:{workdir.name}")


@dataclass
class PrestartedScorer:
    """Processes A and B started ahead (``prestart_scorer``): trusted code only, torch imported,
    an empty model folder mounted. ``score`` fills the folder once the training sandbox is gone,
    then releases A, and B only after A is gone."""

    model_dir: Path
    specs: dict[str, SandboxSpec]
    procs: dict[str, SandboxProcess]

    def take(self, name: str) -> tuple[SandboxSpec, SandboxProcess | None]:
        return self.specs[name], self.procs.pop(name, None)

    def close(self) -> None:
        """Stop what was not used (a candidate rejected before A, or no B needed)."""
        for name, proc in list(self.procs.items()):
            gone(proc)
            self.specs[name].log_path.unlink(missing_ok=True)
        self.procs.clear()


def prestart_scorer(workdir: Path, budget: Budget, sandbox: Sandbox, *, split: str = "val",
                    device: str = "cpu", packages: Path | None = None) -> PrestartedScorer:
    workdir = Path(workdir)
    model_dir = workdir / f"model-{split}"
    model_dir.mkdir(parents=True, exist_ok=True)
    model_dir.chmod(0o755)
    specs = {name: _eval_spec(name, model_dir, workdir, split, budget, device, None, packages,
                              False) for name in ("a", "b")}
    procs = {}
    try:
        for name, spec in specs.items():
            procs[name] = sandbox.start(
                dataclasses.replace(spec, warm=Warm(imports=SCORE_IMPORTS)), pipe=True)
    except BaseException:
        PrestartedScorer(model_dir, specs, procs).close()
        raise
    return PrestartedScorer(model_dir, specs, procs)


class _Session:
    """One fresh evaluation sandbox, closed (and its log deleted) on exit whatever happens."""

    def __init__(self, sandbox: Sandbox, spec: SandboxSpec, vocab: int, model_lines: int,
                 keep_messages: bool, held: SandboxProcess | None = None,
                 cpus: list[int] | None = None):
        self.sandbox, self.spec = sandbox, spec
        self.args = (vocab, model_lines, keep_messages)
        self.proc: SandboxProcess | None = None
        self.held, self.cpus = held, cpus
        self.failed = False

    def __enter__(self) -> EvalClient:
        self.proc = released(self.sandbox, self.spec, self.held, self.cpus, pipe=True)
        client = EvalClient(self.proc, *self.args)
        try:
            client.ready()
        except BaseException:
            self.proc.finish(grace_s=0.0)
            self.spec.log_path.unlink(missing_ok=True)
            raise
        return client

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.proc is not None:
            ok = exc_type is None
            if ok:
                EvalClient(self.proc, *self.args).bye()
            ended = self.proc.finish(grace_s=5.0 if ok else 0.0)
            if ok and ended.outcome is Outcome.oom:
                self.spec.log_path.unlink(missing_ok=True)
                raise Rejected(Failure.eval_crash, "evaluation ran out of memory")
        self.spec.log_path.unlink(missing_ok=True)  # its output never leaves the scorer


def score(
    out_dir: Path,
    budget: Budget,
    sandbox: Sandbox,
    workdir: Path,
    *,
    split: str = "val",
    device: str = "cpu",
    cpus: list[int] | None = None,
    program: Path | None = None,
    packages: Path | None = None,
    prestarted: PrestartedScorer | None = None,
    _weaken: frozenset[str] = frozenset(),
) -> Score:
    """Score a finished training run's output folder on ``split`` (val, or test for reports).

    Never raises: a candidate's fault is a typed failure; a bug of ours is ``scorer_error``.
    ``_weaken`` switches checks off, for tests that show an attack working without them.
    """
    result = Score(split=split)
    started = time.monotonic()
    try:
        _score(result, Path(out_dir), budget, sandbox, Path(workdir), split, device, cpus,
               program, _weaken, packages, prestarted)
    except Rejected as r:
        result.failure, result.detail = r.failure, r.detail
        result.log_tail = r.detail if r.failure.stage == "eval" else ""
    except Exception:  # noqa: BLE001 - ours, not the candidate's: logged as ours
        log.exception("the scorer failed on %s", out_dir)
        result.failure = Failure.scorer_error
        result.detail = "the scorer itself failed (a DARWIN bug, logged); the candidate is not at fault"
    finally:
        if prestarted is not None:
            prestarted.close()
        result.eval_wall_s = time.monotonic() - started
    if result.failure is not None:
        result.loss = result.perplexity = None
    return result


def _score(result: Score, out_dir: Path, budget: Budget, sandbox: Sandbox, workdir: Path,
           split: str, device: str, cpus: list[int] | None, program: Path | None,
           weaken: frozenset[str], packages: Path | None = None,
           prestarted: PrestartedScorer | None = None) -> None:
    dataset = load_dataset()
    model_dir = prestarted.model_dir if prestarted is not None else workdir / f"model-{split}"
    files = collect_outputs(out_dir, model_dir)
    tensors = read_safetensors_header(model_dir / "model.safetensors")
    result.parameters = sum(math.prod(shape) for _, shape in tensors.values())
    if "heldout_scan" not in weaken:
        # The program and every file next to it (an approved file layout's extra modules).
        beside = sorted(p for p in (workdir / "program").glob("*") if p.is_file()) \
            if (workdir / "program").is_dir() else []
        scanned = list(files.values()) + ([program] if program is not None else []) + beside
        found = HeldoutIndex.of(dataset).find(scanned)
        if found:
            raise Rejected(Failure.heldout_in_program, found)
    try:
        model_lines = (model_dir / "model.py").read_bytes().count(b"\n") + 1
    except OSError:
        model_lines = 0

    context = budget.eval_context
    held = [Window(w, "held", int(s)) for w, s in zip(
        eval_windows(dataset.split(split), context, budget.val_windows),
        window_starts(len(dataset.split(split)), context, budget.val_windows))]
    sample = train_sample(dataset, context, TRAIN_SAMPLE)
    seed = int.from_bytes(os.urandom(8), "little")
    result.audit_seed = f"{seed:016x}"
    rng = np.random.default_rng(seed)
    probes = [] if "probes" in weaken else make_probes(held, dataset, min(PROBES, len(held)),
                                                        context, rng)
    by_window = {p.window: p for p in probes}

    def spec(name: str) -> tuple[SandboxSpec, SandboxProcess | None]:
        if prestarted is not None and "messages" not in weaken:
            return prestarted.take(name)
        return _eval_spec(name, model_dir, workdir, split, budget, device, cpus, packages,
                          "messages" in weaken), None

    keep = "messages" in weaken
    vocab = dataset.vocab_size

    # Process A: the windows that count, and the train sample, in a secret batching.
    items = held + sample
    if "batching" in weaken:
        batches = [list(range(i, min(i + EVAL_BATCH, len(items))))
                   for i in range(0, len(items), EVAL_BATCH)]
    else:
        batches = secret_batches(items, EVAL_BATCH, rng, context)
    # Per-window sums, added in window order: the secret batch order must not move the last bits.
    held_sums, train_losses = np.zeros(len(held)), np.zeros(len(sample))
    spec_a, held_a = spec("a")
    with _Session(sandbox, spec_a, vocab, model_lines, keep, held_a, cpus) as a:
        for batch in batches:
            rows = np.stack([items[i].tokens for i in batch])
            logp = log_softmax(a.forward(rows[:, :-1]))
            picked = np.take_along_axis(logp, rows[:, 1:, None], axis=-1)[..., 0]
            for r, i in enumerate(batch):
                if i < len(held):
                    held_sums[i] = -math.fsum(picked[r])
                    if i in by_window:
                        by_window[i].a_logp = logp[r, : by_window[i].pos + 1].copy()
                else:
                    train_losses[i - len(held)] = -math.fsum(picked[r]) / context
    result.tokens = len(held) * context
    result.loss = math.fsum(held_sums) / result.tokens
    result.perplexity = math.exp(result.loss)
    held_losses_mean = result.loss
    result.train_sample_loss = float(np.mean(train_losses))

    # Process B, fresh, after A is gone: the probes, then which tensors matter.
    tol, edge_max = TOLERANCE[device], EDGE[device]
    flops_tensors = dict(tensors)
    if probes or "perturb" not in weaken:
        spec_b, held_b = spec("b")
        _check_with_b(result, probes, held, tensors, flops_tensors, sandbox, spec_b, held_b,
                      cpus, vocab, model_lines, keep, rng, context, tol, edge_max, weaken)
    result.flops_per_token = 6.0 * sum(math.prod(s) for _, s in flops_tensors.values()
                                       if len(s) >= 2)
    if not sandbox.isolated:  # A and B could share files: the probes prove nothing
        result.checks["verified"] = False
        result.flags.append("unverified: scored without a sandbox (--sandbox unsafe); "
                            "never promoted")
    else:
        result.checks["verified"] = bool(probes)

    # Held-out suspicion: far better on the held-out text than on text it was trained on.
    spread = np.std(train_losses) / math.sqrt(len(train_losses))
    if held_losses_mean < result.train_sample_loss - max(3 * spread, 0.05):
        result.flags.append(
            f"heldout_suspect: {split} loss {held_losses_mean:.4f} is below the loss on a sample "
            f"of its own training text ({result.train_sample_loss:.4f}) beyond the noise")


def _check_with_b(result: Score, probes: list[Probe], held: list[Window], tensors: dict,
                  flops_tensors: dict, sandbox: Sandbox, spec: SandboxSpec,
                  held_b: SandboxProcess | None, cpus: list[int] | None, vocab: int,
                  model_lines: int, keep: bool, rng: np.random.Generator, context: int,
                  tol: float, edge_max: float, weaken: frozenset[str]) -> None:
    rows = [Window(p.row, "held", held[p.window].start) for p in probes]
    worst, edges = 0.0, []
    peeked = mixed = 0  # probes that differ only at l / already before l
    with _Session(sandbox, spec, vocab, model_lines, keep, held_b, cpus) as b:
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
                true_next = held[p.window].tokens[p.pos + 1]
                edges.append(float(p.a_logp[-1, true_next] - mine[-1, true_next]))
        if "perturb" not in weaken:
            if first_rows is None:  # no probes (a weakened scorer): any held-out rows will do
                first_rows = np.stack([w.tokens[:-1] for w in held[:PERTURB_ROWS]])
            _find_unused(result, b, tensors, flops_tensors, first_rows[:PERTURB_ROWS], rng, tol)
    if not probes:
        return
    edge = float(np.mean(edges))
    result.checks.update(probes=len(probes), tolerance=tol, max_diff=worst, epsilon=edge_max,
                         edge=edge)
    if worst > tol:
        # The prefix up to l is the same input in A and B: a model that reads the next token
        # differs at l only; one that mixes rows, remembers or is not deterministic differs
        # before l too, on most probes.
        if mixed > peeked:
            raise Rejected(Failure.inconsistent_logits,
                           f"a fresh process gave different log-probabilities for the same "
                           f"prefix (by {worst:.3g}, tolerance {tol:g})")
        raise Rejected(Failure.noncausal,
                       f"log-probabilities moved when only later tokens changed (by {worst:.3g}, "
                       f"tolerance {tol:g}): the model reads the future")
    if edge > edge_max:
        raise Rejected(Failure.noncausal,
                       f"the model does better on the true next token when it can see it "
                       f"(mean edge {edge:.3g} nats over {len(probes)} probes, at most "
                       f"{edge_max:g})")


def _find_unused(result: Score, b: EvalClient, tensors: dict, flops_tensors: dict,
                 rows: np.ndarray, rng: np.random.Generator, tol: float) -> None:
    """Perturb each floating-point tensor; one that moves no log-probability is left out of the
    FLOP count.

    Noise of the tensor's own scale moves a near-zero bias of an honest model by about the
    tolerance (a fork's LayerNorm bias: 1.4e-3 to 1.2e-2 against 1e-3 on CPU, and below the 5e-2
    of CUDA), so one draw flagged it on one backend and not the other. A tensor that stays within
    the tolerance is therefore drawn again at ``UNUSED_GAINS`` times that noise, and is unused
    only when no draw moves anything: an unused tensor moves nothing at any gain, a used one
    moves in proportion, far past the tolerance by the last gain."""
    reference = log_softmax(b.forward(rows))
    for name in sorted(tensors):
        dtype, _ = tensors[name]
        if not dtype.startswith(("F", "BF")):
            continue
        for gain in UNUSED_GAINS:
            moved = log_softmax(b.perturbed(name, int(rng.integers(1 << 62)), rows, gain))
            if float(np.max(np.abs(moved - reference))) > tol:
                break
        else:
            result.unused.append(name)
            flops_tensors.pop(name, None)
    if result.unused:
        shown = ", ".join(result.unused[:4]) + (" ..." if len(result.unused) > 4 else "")
        result.flags.append(f"unused_weights: {len(result.unused)} tensor(s) change nothing "
                            f"({shown}); left out of the FLOP count")
