"""The trusted scorer: the score comes from code the candidate cannot reach.

After the training sandbox is gone, a fresh sandboxed process (darwin/evaluation/runtime/eval_server.py)
loads the candidate's model code and safetensors weights and answers forward requests over a pipe.
This process sends it fixed held-out windows, gets raw float32 logits back and computes the
cross-entropy itself, in float64. It never imports, unpickles or torch.loads anything the candidate
wrote. Before a number counts, the logits must be finite and of the declared shape, and the model
must be causal, treat batch rows independently and be stateless.
"""

from __future__ import annotations

import json
import math
import select
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from darwin.evaluation.budgets import Budget
from darwin.evaluation.data import eval_windows, load_dataset
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.outputs import collect_outputs, read_safetensors_header
from darwin.evaluation.training import runtime_dir
from darwin.sandbox import LIB_DIR, Mount, Outcome, Sandbox, SandboxSpec
from darwin.sandbox.base import SandboxProcess, log_tail

MODEL_DIR = "/sandbox/model"
EVAL_BATCH = 32
CHECK_ROWS = 4
EVAL_SEED = 20260226  # the private order of evaluation batches (not visible to candidates)


@dataclass
class Score:
    split: str
    loss: float | None = None
    perplexity: float | None = None
    tokens: int = 0
    failure: Failure | None = None
    detail: str = ""
    checks: dict[str, bool] = field(default_factory=dict)
    parameters: int | None = None  # from the safetensors header (trusted)
    flops_per_token: float | None = None  # trusted: 6 x matrix parameters (from shapes)
    flops_per_token_counted: float | None = None  # torch's FLOP counter in the eval sandbox
    flops_note: str = ""  # why the counter gave nothing, if it did
    eval_wall_s: float = 0.0
    log_tail: str = ""  # untrusted text from the evaluation process

    @property
    def ok(self) -> bool:
        return self.failure is None


def tolerance(logits: np.ndarray, device: str) -> float:
    """How far two evaluations of the same input may differ: float32 kernels differ with batch
    shape; bf16/TF32 on a GPU differ more."""
    scale = max(1.0, float(np.max(np.abs(logits))))
    return (3e-2 if device == "cuda" else 1e-3) * scale


class EvalClient:
    """Speaks eval_server.py's protocol, with the sandbox's deadline on every read."""

    def __init__(self, proc: SandboxProcess, vocab_size: int):
        self.proc = proc
        self.vocab_size = vocab_size

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

    def _write(self, data: bytes) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            raise Rejected(Failure.eval_crash, "the evaluation process died") from None

    def _error(self, default: Failure) -> Rejected:
        (n,) = struct.unpack("<I", self._read(4))
        message = self._read(min(n, 1 << 16)).decode("utf-8", "replace")
        stage = message.split(":", 1)[0]
        failure = {"import": Failure.import_error, "weights": Failure.weights_mismatch}.get(
            stage, default
        )
        return Rejected(failure, message)

    def ready(self) -> dict:
        tag = self._read(4)
        if tag == b"ERR ":
            raise self._error(Failure.import_error)
        if tag != b"RDY ":
            raise Rejected(Failure.eval_crash, f"protocol violation at start ({tag!r})")
        (n,) = struct.unpack("<I", self._read(4))
        return json.loads(self._read(min(n, 1 << 16)))

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        b, t = tokens.shape
        self._write(b"FWD " + struct.pack("<II", b, t) + tokens.astype("<u2").tobytes())
        tag = self._read(4)
        if tag == b"ERR ":
            raise self._error(Failure.eval_crash)
        if tag != b"LOG ":
            raise Rejected(Failure.eval_crash, f"protocol violation ({tag!r})")
        shape = struct.unpack("<III", self._read(12))
        if shape != (b, t, self.vocab_size):
            raise Rejected(
                Failure.invalid_logits,
                f"logits of shape {list(shape)}, expected {[b, t, self.vocab_size]} "
                "(all positions, full vocabulary)",
            )
        raw = self._read(b * t * self.vocab_size * 4)
        logits = np.frombuffer(raw, dtype="<f4").reshape(b, t, self.vocab_size)
        if not np.isfinite(logits).all():
            raise Rejected(Failure.invalid_logits, "logits contain NaN or infinity")
        return logits

    def flops(self, t: int) -> tuple[int, int]:
        self._write(b"FLP " + struct.pack("<I", t))
        tag = self._read(4)
        if tag == b"ERR ":
            raise self._error(Failure.eval_crash)
        if tag != b"FLP ":
            raise Rejected(Failure.eval_crash, f"protocol violation ({tag!r})")
        fwd, total = struct.unpack("<QQ", self._read(16))
        return fwd, total

    def bye(self) -> None:
        try:
            self._write(b"BYE ")
        except Rejected:
            pass


def cross_entropy_sum(logits: np.ndarray, targets: np.ndarray) -> float:
    """Sum of -log softmax(logits)[target], computed here in float64."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(z).sum(axis=-1))
    picked = np.take_along_axis(z, targets[..., None], axis=-1)[..., 0]
    return float((log_norm - picked).sum())


def _run_checks(client: EvalClient, first: np.ndarray, first_logits: np.ndarray, device: str,
                rng: np.random.Generator, vocab: int) -> dict[str, bool]:
    tol = tolerance(first_logits, device)
    checks: dict[str, bool] = {}

    # Statelessness: the very first batch again, at the end, must give the same logits.
    again = client.forward(first)
    if np.max(np.abs(again - first_logits)) > tol:
        raise Rejected(Failure.stateful, "the same batch sent twice gave different logits")
    checks["stateless"] = True

    # Batch independence: a row alone, and the batch in reverse order, must not change a row.
    alone = client.forward(first[:1])
    reverse = client.forward(first[::-1].copy())[::-1]
    if (np.max(np.abs(alone[0] - first_logits[0])) > tol
            or np.max(np.abs(reverse - first_logits)) > tol):
        raise Rejected(Failure.batch_leak, "a row's logits depend on the other rows of the batch")
    checks["batch_independent"] = True

    # Causality: change every token after position p; logits up to p must not move.
    rows = first[:CHECK_ROWS].copy()
    t = rows.shape[1]
    for p in sorted({0, t // 2, t - 2}):
        changed = rows.copy()
        changed[:, p + 1 :] = rng.integers(0, vocab, size=changed[:, p + 1 :].shape)
        out = client.forward(changed)
        if np.max(np.abs(out[:, : p + 1] - first_logits[:CHECK_ROWS, : p + 1])) > tol:
            raise Rejected(
                Failure.noncausal, f"changing tokens after position {p} moved earlier logits"
            )
    checks["causal"] = True
    return checks


def _architecture_key(model_dir: Path, tensors: dict, context: int) -> str:
    """An architecture is its weight shapes, its config and the context it is counted at."""
    import hashlib

    import torch

    blob = json.dumps(
        {
            "shapes": sorted((k, v[1]) for k, v in tensors.items()),
            "config": (model_dir / "config.json").read_text(),
            "context": context,
            "torch": torch.__version__,
        }
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _counted_flops(client: EvalClient, model_dir: Path, tensors: dict, context: int,
                   result: Score) -> float | None:
    """torch's FLOP count for one forward+backward, per token, cached per architecture (the
    counter costs a couple of seconds, most of the evaluation on small models)."""
    from darwin.settings import get_settings

    cache = get_settings().home / "cache" / "flops" / f"{_architecture_key(model_dir, tensors, context)}.json"
    try:
        return float(json.loads(cache.read_text())["flops_per_token"])
    except (OSError, ValueError, KeyError):
        pass
    try:  # a cross-check only: a model we cannot count still has its score
        _, fwd_bwd = client.flops(context)
    except Rejected as r:
        result.flops_note = r.detail
        return None
    per_token = fwd_bwd / context
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps({"flops_per_token": per_token}))
    tmp.replace(cache)
    return per_token


def score(
    out_dir: Path,
    budget: Budget,
    sandbox: Sandbox,
    workdir: Path,
    *,
    split: str = "val",
    device: str = "cpu",
    cpus: list[int] | None = None,
    count_flops: bool = True,
) -> Score:
    """Score a finished training run's output folder on ``split`` (val, or test for reports)."""
    dataset = load_dataset()
    result = Score(split=split)
    started = time.monotonic()
    model_dir = Path(workdir) / f"model-{split}"
    log_path = Path(workdir) / f"eval-{split}.log"
    proc = None
    try:
        collect_outputs(Path(out_dir), model_dir)
        tensors = read_safetensors_header(model_dir / "model.safetensors")
        result.parameters = sum(math.prod(shape) for _, shape in tensors.values())
        matrix_params = sum(math.prod(s) for _, s in tensors.values() if len(s) >= 2)
        result.flops_per_token = 6.0 * matrix_params

        windows = eval_windows(dataset.split(split), budget.eval_context, budget.val_windows)
        spec = SandboxSpec(
            argv=["python", f"{LIB_DIR}/eval_server.py"],
            mounts=[Mount(model_dir, MODEL_DIR), Mount(runtime_dir(), LIB_DIR)],
            env={"DARWIN_DEVICE": device, "DARWIN_MODEL_DIR": MODEL_DIR},
            cwd="/tmp",
            deadline_s=max(60.0, budget.deadline_s / 2),
            memory_mb=budget.memory_mb,
            threads=budget.threads,
            cpus=cpus,
            gpu=device == "cuda",
            log_path=log_path,
            label=f"eval:{Path(workdir).name}",
        )
        proc = sandbox.start(spec, pipe=True)
        client = EvalClient(proc, dataset.vocab_size)
        client.ready()

        rng = np.random.default_rng(EVAL_SEED)
        batches = [windows[i : i + EVAL_BATCH] for i in range(0, len(windows), EVAL_BATCH)]
        order = rng.permutation(len(batches))
        total = 0.0
        first = first_logits = None
        for i in order:
            batch = batches[i]
            x, y = batch[:, :-1], batch[:, 1:]
            logits = client.forward(x)
            if first is None:
                first, first_logits = x, logits
            total += cross_entropy_sum(logits, y)
        assert first is not None and first_logits is not None
        result.checks = _run_checks(client, first, first_logits, device, rng, dataset.vocab_size)
        if count_flops:
            result.flops_per_token_counted = _counted_flops(
                client, model_dir, tensors, budget.eval_context, result
            )
        client.bye()
        result.tokens = int(windows.shape[0] * (windows.shape[1] - 1))
        result.loss = total / result.tokens
        result.perplexity = math.exp(result.loss)
    except Rejected as r:
        result.failure, result.detail = r.failure, r.detail
    finally:
        if proc is not None:
            ended = proc.finish(grace_s=5.0 if result.failure is None else 0.0)
            if result.failure is None and ended.outcome is Outcome.oom:
                result.failure, result.detail = Failure.eval_crash, "evaluation ran out of memory"
        result.eval_wall_s = time.monotonic() - started
        result.log_tail = log_tail(log_path, 2000)
    return result
