"""What every sandbox backend takes and gives back.

A backend runs one untrusted command with only the mounts it is given, a clean environment, no
network, memory / process / file-size caps and a wall-clock deadline enforced from outside, and
reports how it ended as data (a crash of the candidate is a result, not an exception). Only
infrastructure problems raise.
"""

from __future__ import annotations

import enum
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from collections.abc import Callable
from typing import IO, Protocol

from darwin.errors import UserError

# Inside every sandbox the layout is the same, whatever the backend.
PROGRAM_DIR = "/sandbox/program"
OUT_DIR = "/sandbox/out"
IO_DIR = "/sandbox/io"
LIB_DIR = "/sandbox/lib"
SANDBOX_UID = 65534  # nobody


class SandboxUnavailable(UserError):
    """No backend here can isolate untrusted code (and unsafe mode was not chosen)."""


class SandboxInfraError(RuntimeError):
    """The sandbox itself failed to start: our problem, never the candidate's."""


class Outcome(str, enum.Enum):
    """How a sandboxed process ended, as far as the sandbox can tell."""

    ok = "ok"
    crash = "crash"  # non-zero exit or killed by a signal we did not send
    timeout = "timeout"  # past the deadline: we killed it
    oom = "oom"  # the memory cap killed it
    disk = "disk"  # hit the file-size cap


@dataclass(frozen=True)
class Mount:
    src: Path
    dst: str
    writable: bool = False


@dataclass
class SandboxSpec:
    argv: list[str]  # argv[0] == "python" means the sandbox's Python runtime
    mounts: list[Mount] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/tmp"
    deadline_s: float = 60.0
    memory_mb: int = 2048
    max_pids: int = 256
    max_file_mb: int = 256  # per file the sandbox writes, its log included
    threads: int = 1
    cpus: list[int] | None = None  # pin to these cores
    gpu: bool = False
    log_path: Path | None = None  # stdout+stderr go here (a file, never a pipe we could block on)
    label: str = "darwin"


@dataclass
class SandboxResult:
    outcome: Outcome
    returncode: int | None
    wall_s: float
    backend: str
    isolated: bool
    log_path: Path | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome is Outcome.ok


class Sandbox(Protocol):
    name: str
    isolated: bool

    def start(self, spec: SandboxSpec, *, pipe: bool = False) -> SandboxProcess: ...

    def run(self, spec: SandboxSpec) -> SandboxResult: ...


def base_env(spec: SandboxSpec) -> dict[str, str]:
    """The only environment a sandboxed program sees: nothing inherited but CPU quirk flags."""
    threads = str(spec.threads)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": "/tmp",
        "TMPDIR": "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": LIB_DIR,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "OPENBLAS_NUM_THREADS": threads,
    }
    # Set on some CPUs because older OpenBLAS builds crash there; not a secret.
    passed = ["OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"]
    if spec.gpu:  # where the driver's libraries are, and which GPU: not secrets either
        passed += ["LD_LIBRARY_PATH", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES",
                   "NVIDIA_DRIVER_CAPABILITIES"]
    for key in passed:
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(spec.env)
    return env


def classify(returncode: int | None, timed_out: bool, oom: bool) -> Outcome:
    if timed_out:
        return Outcome.timeout
    if oom:
        return Outcome.oom
    if returncode == 0:
        return Outcome.ok
    sig = -returncode if returncode is not None and returncode < 0 else None
    if returncode is not None and returncode > 128:
        sig = returncode - 128  # bubblewrap reports a signalled child as 128 + signal
    if sig == signal.SIGXFSZ:
        return Outcome.disk
    return Outcome.crash


class SandboxProcess:
    """A started sandbox: wait for it, talk to it (pipe mode) and always clean it up."""

    def __init__(
        self,
        popen: subprocess.Popen,
        spec: SandboxSpec,
        backend: str,
        isolated: bool,
        limits: object | None = None,
        on_exit: list | None = None,
        start_error: Callable[[], str | None] | None = None,
    ):
        self.popen = popen
        self.spec = spec
        self.backend = backend
        self.isolated = isolated
        self.limits = limits  # a CgroupLimits or None
        self.started = time.monotonic()
        self.timed_out = False
        self._on_exit = on_exit or []
        self._start_error = start_error
        self._finished = False

    @property
    def stdin(self) -> IO[bytes] | None:
        return self.popen.stdin

    @property
    def stdout(self) -> IO[bytes] | None:
        return self.popen.stdout

    def remaining(self) -> float:
        return self.spec.deadline_s - (time.monotonic() - self.started)

    def wait(self) -> SandboxResult:
        try:
            self.popen.wait(timeout=max(self.remaining(), 0))
        except subprocess.TimeoutExpired:
            self.timed_out = True
        return self.finish()

    def kill(self) -> None:
        """Kill everything the sandbox started (its PID namespace / cgroup / process group)."""
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.limits is not None:
            self.limits.kill_all()

    def finish(self, grace_s: float = 0.0) -> SandboxResult:
        """Reap the sandbox (after ``grace_s`` for it to exit by itself) and clean up."""
        if self._finished:
            return self._result
        if grace_s > 0 and not self.timed_out:
            try:
                self.popen.wait(timeout=min(grace_s, max(self.remaining(), 0)))
            except subprocess.TimeoutExpired:
                pass
        if self.timed_out or self.popen.poll() is None:
            self.kill()
        self.popen.wait()
        wall = time.monotonic() - self.started
        oom = False
        if self.limits is not None:
            self.limits.kill_all()
            oom = self.limits.oom_killed()
            self.limits.remove()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for callback in self._on_exit:
            callback()
        rc = self.popen.returncode
        error = self._start_error() if self._start_error is not None else None
        if error is not None:
            raise SandboxInfraError(f"{self.backend} sandbox failed to start: {error}")
        self._result = SandboxResult(
            outcome=classify(rc, self.timed_out, oom),
            returncode=rc,
            wall_s=wall,
            backend=self.backend,
            isolated=self.isolated,
            log_path=self.spec.log_path,
        )
        self._finished = True
        return self._result


def log_tail(path: Path | None, max_bytes: int = 4000) -> str:
    """The end of a sandbox log (untrusted text: quote it wherever it goes)."""
    if path is None or not path.exists():
        return ""
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        size = f.tell()
        f.seek(max(0, size - max_bytes))
        return f.read().decode("utf-8", errors="replace")
