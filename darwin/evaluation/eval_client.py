"""The scorer's side of an evaluation process: starting it (cold or pre-started), and speaking
eval_server.py's protocol with it. Every frame is the candidate's to forge: each is bounded, read
under the sandbox's deadline, and what cannot be read is a typed failure."""

from __future__ import annotations

import builtins
import dataclasses
import json
import os
import select
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darwin.evaluation.budgets import Budget
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.training import gone, released, runtime_dir
from darwin.sandbox import (
    LIB_DIR,
    PKG_DIR,
    Mount,
    Outcome,
    Sandbox,
    SandboxProcess,
    SandboxSpec,
    Warm,
)

MODEL_DIR = "/sandbox/model"
MAX_FRAME = 1 << 16  # bytes of an RDY or ERR frame
EVAL_STAGES = {"import": Failure.import_error, "weights": Failure.weights_mismatch,
               "forward": Failure.eval_crash, "perturb": Failure.eval_crash}


class EvalClient:
    """Speaks eval_server.py's protocol; every frame is untrusted and bounded, every read has the
    sandbox's deadline, and anything unexpected is a typed failure."""

    def __init__(self, proc: SandboxProcess, vocab_size: int, model_lines: int):
        self.proc = proc
        self.vocab_size = vocab_size
        self.model_lines = model_lines

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

    def _logits(self, b: int, t: int, finite: bool = True) -> np.ndarray | None:
        """Logits of shape (b, t, vocab); non-finite ones are invalid_logits, or None where
        ``finite`` is False (a perturbed model may overflow)."""
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
            if not finite:
                return None
            raise Rejected(Failure.invalid_logits, "logits contain NaN or infinity")
        return logits.reshape(b, t, self.vocab_size)

    @staticmethod
    def _tokens(tokens: np.ndarray) -> bytes:
        b, t = tokens.shape
        return struct.pack("<II", b, t) + tokens.astype("<u2").tobytes()

    def forward(self, tokens: np.ndarray) -> np.ndarray:
        self._write(b"FWD " + self._tokens(tokens))
        logits = self._logits(*tokens.shape)
        assert logits is not None
        return logits

    def perturbed(self, name: str, seed: int, tokens: np.ndarray, gain: float = 1.0,
                  rows: Sequence[int] = (), cols: Sequence[int] = ()) -> np.ndarray | None:
        """Logits with tensor ``name`` moved by noise ``gain`` times its scale, only in ``rows`` x
        ``cols`` (first and last dimension) when given: a secret subset the model cannot watch
        for in one place. None where the logits turned non-finite. ``name`` is a validated
        header name (outputs.py: printable UTF-8)."""
        encoded = name.encode()
        subset = b"".join(struct.pack(f"<I{len(ix)}I", len(ix), *ix) for ix in (rows, cols))
        self._write(b"PRT " + struct.pack("<I", len(encoded)) + encoded
                    + struct.pack("<Qf", seed, gain) + subset + self._tokens(tokens))
        return self._logits(*tokens.shape, finite=False)

    def bye(self) -> None:
        try:
            self._write(b"BYE ")
        except Rejected:
            pass



# What a pre-started evaluation sandbox imports before it is given its model.
SCORE_IMPORTS = ("numpy", "torch", "safetensors.torch")


def eval_spec(name: str, model_dir: Path, workdir: Path, split: str, budget: Budget,
              device: str, cpus: list[int] | None, packages: Path | None) -> SandboxSpec:
    """Evaluation process ``name`` (a or b): eval_server.py over the model folder, read-only."""
    return SandboxSpec(
        argv=["python", f"{LIB_DIR}/eval_server.py"],
        mounts=[Mount(model_dir, MODEL_DIR), Mount(runtime_dir(), LIB_DIR),
                *([Mount(packages, PKG_DIR)] if packages is not None else [])],
        env={"DARWIN_DEVICE": device, "DARWIN_MODEL_DIR": MODEL_DIR,
             **({"PYTHONPATH": f"{LIB_DIR}:{PKG_DIR}"} if packages is not None else {})},
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
    specs = {name: eval_spec(name, model_dir, workdir, split, budget, device, None, packages)
             for name in ("a", "b")}
    procs = {}
    try:
        for name, spec in specs.items():
            procs[name] = sandbox.start(
                dataclasses.replace(spec, warm=Warm(imports=SCORE_IMPORTS)), pipe=True)
    except BaseException:
        PrestartedScorer(model_dir, specs, procs).close()
        raise
    return PrestartedScorer(model_dir, specs, procs)



class EvalSession:
    """One fresh evaluation sandbox, closed (and its log deleted) on exit whatever happens."""

    def __init__(self, sandbox: Sandbox, spec: SandboxSpec, vocab: int, model_lines: int,
                 held: SandboxProcess | None = None, cpus: list[int] | None = None,
                 client: type[EvalClient] = EvalClient):
        self.sandbox, self.spec, self.client = sandbox, spec, client
        self.args = (vocab, model_lines)
        self.proc: SandboxProcess | None = None
        self.held, self.cpus = held, cpus
        self.failed = False

    def __enter__(self) -> EvalClient:
        self.proc = released(self.sandbox, self.spec, self.held, self.cpus, pipe=True)
        client = self.client(self.proc, *self.args)
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
                self.client(self.proc, *self.args).bye()
            ended = self.proc.finish(grace_s=5.0 if ok else 0.0)
            if ok and ended.outcome is Outcome.oom:
                self.spec.log_path.unlink(missing_ok=True)
                raise Rejected(Failure.eval_crash, "evaluation ran out of memory")
        self.spec.log_path.unlink(missing_ok=True)  # its output never leaves the scorer

