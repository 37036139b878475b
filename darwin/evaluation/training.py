"""Train one program in the sandbox under a budget (the trusted side of a training run).

The program gets a fresh folder of its own: a read-only copy of itself, a unix socket to the token
server, one writable output folder. Tokens are charged by the server, the deadline is enforced by
the sandbox, and the wall time is measured here, outside anything the program controls. A sandbox
may be started ahead (``prestart``: it imports torch while earlier children train); its clock,
like a cold one's, starts when the program does.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from darwin.evaluation.budgets import Budget
from darwin.evaluation.curves import LogCurve
from darwin.evaluation.data import load_dataset
from darwin.evaluation.token_server import DEFAULT_SOURCE, TokenServer
from darwin.sandbox import (
    IO_DIR,
    LIB_DIR,
    OUT_DIR,
    PKG_DIR,
    PROGRAM_DIR,
    Mount,
    Outcome,
    Sandbox,
    SandboxError,
    SandboxProcess,
    SandboxSpec,
    Warm,
    log_tail,
)

PROGRAM_NAME = "train.py"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extras:
    """What people approved for a child (seed/README.md, "Approved extras"): extra named
    text sources the token server serves within the same token budget, a read-only layer of
    packages on the import path (training and scoring), and extra files of the program next to
    train.py."""

    sources: dict = field(default_factory=dict)  # name -> uint16 tokens
    packages: Path | None = None
    files: dict = field(default_factory=dict)  # file name -> its text

    def mounts(self) -> list[Mount]:
        return [Mount(self.packages, PKG_DIR)] if self.packages is not None else []

    def env(self) -> dict[str, str]:
        env = {"DARWIN_DATA_SOURCES": ",".join([DEFAULT_SOURCE, *sorted(self.sources)])}
        if self.packages is not None:
            env["PYTHONPATH"] = f"{LIB_DIR}:{PKG_DIR}"
        return env


NO_EXTRAS = Extras()


def runtime_dir() -> Path:
    """Trusted helper modules mounted read-only at /sandbox/lib (darwin_io, the eval server)."""
    return Path(str(resources.files("darwin.evaluation.runtime")))


def seed_program() -> Path:
    """Generation 0: the stock training program shipped in seed/."""
    return Path(str(resources.files("darwin.seed") / PROGRAM_NAME))


@dataclass
class TrainResult:
    outcome: Outcome
    wall_s: float
    tokens_served: int
    token_requests: int
    token_refusals: int
    out_dir: Path
    log_path: Path
    backend: str
    isolated: bool
    returncode: int | None
    cleanup_s: float = 0.0  # from our kill until no process of the run was left
    # [step, seconds since start, loss] from the lines the program printed, stamped by us as
    # we read them (the losses are the program's claims; the clock is ours).
    curve: list = field(default_factory=list)
    started_at: float = 0.0  # wall clock (time.time()) when the program started
    warm_s: float = 0.0  # how long its sandbox was pre-started before that (hidden start-up)

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ok

    def log_tail(self, max_bytes: int = 4000) -> str:
        return log_tail(self.log_path, max_bytes)

    def to_json(self) -> str:
        """What a resumed run needs to score this training without training again."""
        return json.dumps({**{k: getattr(self, k) for k in (
            "wall_s", "tokens_served", "token_requests", "token_refusals", "backend", "isolated",
            "returncode", "cleanup_s", "curve", "started_at", "warm_s")}, "outcome": self.outcome.value,
            "out_dir": str(self.out_dir), "log_path": str(self.log_path)})

    @classmethod
    def from_json(cls, text: str) -> TrainResult:
        d = json.loads(text)
        return cls(**{**d, "outcome": Outcome(d["outcome"]), "out_dir": Path(d["out_dir"]),
                      "log_path": Path(d["log_path"])})


def prepare_workdir(program: Path, workdir: Path, files: dict | None = None
                    ) -> tuple[Path, Path, Path]:
    workdir.mkdir(parents=True, exist_ok=True)
    workdir.chmod(0o755)
    prog_dir = workdir / "program"
    out_dir = workdir / "out"
    for d in (prog_dir, out_dir):
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(mode=0o755)
    # A unix socket path must fit in 108 bytes, so the socket lives in a short temporary folder
    # rather than next to the run's other files.
    io_dir = Path(tempfile.mkdtemp(prefix="darwin-io-", dir="/tmp" if Path("/tmp").is_dir() else None))
    io_dir.chmod(0o755)
    target = prog_dir / PROGRAM_NAME
    shutil.copyfile(program, target)
    target.chmod(0o644)
    for name, text in (files or {}).items():  # approved extra files (names checked upstream)
        extra = prog_dir / Path(name).name
        extra.write_text(text)
        extra.chmod(0o644)
    return prog_dir, out_dir, io_dir


def gone(proc: SandboxProcess) -> None:
    """Clean up a pre-started sandbox that died before its release; a cold start follows, and
    says so itself if the sandbox is really broken."""
    try:
        proc.finish()
    except SandboxError as e:
        log.warning("a pre-started sandbox died before its release (%s); starting afresh", e)


def released(sandbox: Sandbox, spec: SandboxSpec, held: SandboxProcess | None,
             cpus: list[int] | None, *, pipe: bool = False) -> SandboxProcess:
    """``held`` released onto ``cpus`` and running its program; or, when there is none or it
    died while it waited (ours, never the program's), ``spec`` started afresh on ``cpus``."""
    if held is not None:
        if held.release(cpus):
            return held
        gone(held)
    return sandbox.start(dataclasses.replace(spec, cpus=cpus), pipe=pipe)


# What a pre-started training sandbox imports before its program exists: torch, and the
# optimizer machinery whose first use costs about a second on CPU (it imports torch._dynamo).
TRAIN_IMPORTS = ("numpy", "torch", "torch._dynamo")


@dataclass
class Prestarted:
    """A training sandbox started ahead of its slot (``prestart``), waiting for ``train``."""

    spec: SandboxSpec  # the cold spec: what a fallback starts if the warm one died
    proc: SandboxProcess
    dataset: object
    io_dir: Path

    def close(self) -> None:
        """Never used: stop it and remove what it had."""
        gone(self.proc)
        shutil.rmtree(self.io_dir, ignore_errors=True)


def _training_spec(program: Path, budget: Budget, seed: int, workdir: Path, device: str,
                   cpus: list[int] | None, extras: Extras):
    dataset = load_dataset()
    prog_dir, out_dir, io_dir = prepare_workdir(Path(program), Path(workdir), extras.files)
    spec = SandboxSpec(
        argv=["python", f"{PROGRAM_DIR}/{PROGRAM_NAME}"],
        mounts=[
            Mount(prog_dir, PROGRAM_DIR),
            Mount(out_dir, OUT_DIR, writable=True),
            Mount(io_dir, IO_DIR),
            Mount(runtime_dir(), LIB_DIR),
            *extras.mounts(),
        ],
        env={
            "DARWIN_BUDGET": budget.name,
            "DARWIN_BUDGET_TOKENS": str(budget.tokens),
            "DARWIN_DEADLINE_S": str(budget.deadline_s),
            "DARWIN_EVAL_CONTEXT": str(budget.eval_context),
            "DARWIN_VOCAB_SIZE": str(dataset.vocab_size),
            "DARWIN_SEED": str(seed),
            "DARWIN_DEVICE": device,
            "DARWIN_OUT_DIR": OUT_DIR,
            "DARWIN_DATA_SOCKET": f"{IO_DIR}/data.sock",
            **extras.env(),
        },
        cwd=OUT_DIR,
        deadline_s=budget.deadline_s,
        memory_mb=budget.memory_mb,
        max_pids=budget.max_pids,
        max_file_mb=budget.max_file_mb,
        max_out_mb=budget.max_out_mb,
        threads=budget.threads,
        cpus=cpus,
        gpu=device == "cuda",
        log_path=Path(workdir) / "train.log",
        label=f"train:{Path(workdir).name}",
    )
    return spec, dataset, io_dir


def prestart(program: Path, budget: Budget, seed: int, workdir: Path, sandbox: Sandbox, *,
             device: str = "cpu", extras: Extras = NO_EXTRAS) -> Prestarted:
    """Start ``program``'s training sandbox now, unpinned; it imports torch (and initialises
    CUDA) and waits. ``train(..., prestarted=)`` pins it, hands it the program and starts its
    clock: the deadline, the wall time behind MFU and the token server all begin there."""
    spec, dataset, io_dir = _training_spec(program, budget, seed, workdir, device, None, extras)
    proc = sandbox.start(dataclasses.replace(spec, warm=Warm(imports=TRAIN_IMPORTS)))
    return Prestarted(spec, proc, dataset, io_dir)


def train(
    program: Path,
    budget: Budget,
    seed: int,
    workdir: Path,
    sandbox: Sandbox,
    *,
    device: str = "cpu",
    cpus: list[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    extras: Extras = NO_EXTRAS,
    prestarted: Prestarted | None = None,
) -> TrainResult:
    """Run ``program`` once under ``budget`` (in ``prestarted``'s sandbox when given); returns
    how it ended and where its output is."""
    if prestarted is None:
        spec, dataset, io_dir = _training_spec(program, budget, seed, workdir, device, cpus,
                                               extras)
    else:
        spec, dataset, io_dir = prestarted.spec, prestarted.dataset, prestarted.io_dir
    log_path, out_dir = spec.log_path, Path(workdir) / "out"
    server = TokenServer(io_dir / "data.sock", dataset.train, budget.tokens, seed,
                         sources=extras.sources)
    with server:
        proc = released(sandbox, spec, prestarted.proc if prestarted else None, cpus)
        started_at = time.time()
        curve = LogCurve(log_path).__enter__()
        stop = threading.Event()
        if on_progress is not None:
            # Progress from the trusted side: tokens served so far, whatever the program prints.
            def report() -> None:
                while not stop.wait(0.5):
                    on_progress(server.tokens_served, budget.tokens)

            threading.Thread(target=report, daemon=True).start()
        try:
            result = proc.wait()
        finally:
            stop.set()
            proc.finish()
            curve.__exit__(None, None, None)
        if on_progress is not None:
            on_progress(server.tokens_served, budget.tokens)
    shutil.rmtree(io_dir, ignore_errors=True)
    return TrainResult(
        outcome=result.outcome,
        wall_s=result.wall_s,
        tokens_served=server.tokens_served,
        token_requests=server.requests,
        token_refusals=server.refused,
        out_dir=out_dir,
        log_path=log_path,
        backend=result.backend,
        isolated=result.isolated,
        returncode=result.returncode,
        cleanup_s=result.cleanup_s,
        curve=curve.points,
        started_at=started_at,
        warm_s=round(proc.warm_s, 3),
    )
