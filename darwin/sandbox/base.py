"""What every sandbox backend takes and gives back.

A backend runs one untrusted command with only the mounts it is given, a clean environment, no
network, memory / process / file-size caps and a wall-clock deadline enforced from outside, and
reports how it ended as data (a crash of the candidate is a result, not an exception). Only
infrastructure problems raise.
"""

from __future__ import annotations

import dataclasses
import enum
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

from darwin.errors import SandboxError, UserError

# Inside every sandbox the layout is the same, whatever the backend.
PROGRAM_DIR = "/sandbox/program"
OUT_DIR = "/sandbox/out"
IO_DIR = "/sandbox/io"
LIB_DIR = "/sandbox/lib"
PKG_DIR = "/sandbox/packages"  # the approved packages' read-only layer, when there is one
CTL_DIR = "/sandbox/ctl"  # a pre-started sandbox's go file appears here (read-only inside)
SANDBOX_UID = 65534  # nobody


class SandboxUnavailable(SandboxError, UserError):
    """No backend here can isolate untrusted code (and unsafe mode was not chosen): the user's
    machine lacks what it needs, so a user error (exit 2)."""

    exit_code = UserError.exit_code


class SandboxInfraError(SandboxError):
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


@dataclass(frozen=True)
class Warm:
    """Start the sandbox ahead of its program: ``imports`` are imported (and CUDA initialised
    on a GPU) by trusted code, then the sandbox waits for ``SandboxProcess.release`` to run the
    program. Needs the runtime mounted at LIB_DIR and argv starting with "python"."""

    imports: tuple[str, ...] = ("torch",)
    ready: bool = True  # mark readiness in the first writable mount (release waits for it)
    max_wait_s: float = 3600.0  # unreleased this long: the scheduler is gone, the sandbox exits
    # While held it runs at idle priority (SCHED_IDLE): it takes only CPU no training wants, so
    # it never slows a pinned child; released, it is put back to normal. Only where we may put
    # it back (CAP_SYS_NICE, as root); elsewhere it runs at normal priority.
    idle: bool = True


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
    max_out_mb: int = 1024  # all of the writable mounts together (a disk filler's many files)
    threads: int = 1
    cpus: list[int] | None = None  # pin to these cores
    gpu: bool = False
    log_path: Path | None = None  # stdout+stderr go here (a file, never a pipe we could block on)
    label: str = "darwin"
    warm: Warm | None = None  # pre-start: run the program only when released


@dataclass
class SandboxResult:
    outcome: Outcome
    returncode: int | None
    wall_s: float
    backend: str
    isolated: bool
    log_path: Path | None = None
    detail: str = ""
    cleanup_s: float = 0.0  # from our kill (deadline, cap) until no process of it was left

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


def classify(returncode: int | None, timed_out: bool, oom: bool, disk: bool = False) -> Outcome:
    if timed_out:
        return Outcome.timeout
    if oom:
        return Outcome.oom
    if disk:
        return Outcome.disk
    if returncode == 0:
        return Outcome.ok
    sig = -returncode if returncode is not None and returncode < 0 else None
    if returncode is not None and returncode > 128:
        sig = returncode - 128  # bubblewrap reports a signalled child as 128 + signal
    if sig == signal.SIGXFSZ:
        return Outcome.disk
    return Outcome.crash


def folder_bytes(path: Path, max_entries: int = 100_000) -> int:
    """Bytes under ``path`` (symlinks not followed); past ``max_entries`` files counts as full."""
    total = entries = 0
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for e in it:
                    entries += 1
                    if entries > max_entries:  # an inode flood is a disk attack too
                        return 1 << 62
                    try:
                        if e.is_dir(follow_symlinks=False):
                            stack.append(e.path)
                        else:
                            total += e.stat(follow_symlinks=False).st_blocks * 512
                    except OSError:
                        pass
        except OSError:
            pass
    return total


def hit_file_cap(spec: SandboxSpec) -> bool:
    """Did the program write a file (its log included) up to the per-file cap? Python ignores
    SIGXFSZ, so a capped write shows up as an ordinary OSError crash unless we look."""
    cap = spec.max_file_mb << 20
    if spec.log_path is not None and spec.log_path.exists() and spec.log_path.stat().st_size >= cap:
        return True
    for m in spec.mounts:
        if m.writable:
            for root, _dirs, files in os.walk(m.src):
                for name in files:
                    try:
                        if os.lstat(os.path.join(root, name)).st_size >= cap:
                            return True
                    except OSError:
                        pass
    return False


def prepare_outputs(spec: SandboxSpec):
    """Before a run: its writable folders belong to the sandbox user and, as root, each becomes a
    capped tmpfs (``limits.OutputCap``; None where that cannot be mounted)."""
    from darwin.sandbox.limits import OutputCap

    folders = [m.src for m in spec.mounts if m.writable]
    if os.geteuid() == 0:
        for folder in folders:  # the program runs as nobody and must be able to write here
            os.chown(folder, SANDBOX_UID, SANDBOX_UID)
    return OutputCap.mount(folders, spec.max_out_mb << 20, SANDBOX_UID)


class OutputGuard:
    """The output caps of one running sandbox. With a tmpfs cap the kernel enforces the size;
    without one (not root) the writable folders are polled from the trusted side and the sandbox
    killed past ``max_out_mb``, late by one poll's writing. ``settle()`` says whether the run hit a
    cap (so it failed for `disk`) and puts the outputs back on disk."""

    def __init__(self, spec: SandboxSpec, kill: Callable[[], None], cap=None,
                 every_s: float = 0.2):
        self.spec = spec
        self.cap = cap
        self.folders = [m.src for m in spec.mounts if m.writable]
        self.limit = spec.max_out_mb << 20
        self.kill = kill
        self.every_s = every_s
        self.exceeded = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="darwin-output-watch", daemon=True)
        if self.folders and cap is None:
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            if sum(folder_bytes(Path(f)) for f in self.folders) > self.limit:
                self.exceeded = True
                self.kill()
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def settle(self) -> bool:
        """Once nothing of the run is left: did it hit a cap? Releases the tmpfs."""
        self.stop()
        disk = self.exceeded or hit_file_cap(self.spec)
        if self.cap is not None:
            disk = disk or self.cap.full()
            self.cap.release()
            self.cap = None
        return disk


READY_NAME = ".darwin-warm"


class Handover:
    """The trusted side of a pre-started sandbox: its control folder (the go file appears there)
    and where it marks itself warm. ``self.spec`` is what a backend actually starts."""

    def __init__(self, spec: SandboxSpec):
        warm = spec.warm
        assert warm is not None and spec.argv[:1] == ["python"], spec.argv
        assert any(m.dst == LIB_DIR for m in spec.mounts), "warm start needs the runtime mounted"
        self.ctl = Path(tempfile.mkdtemp(prefix="darwin-ctl-"))
        self.ctl.chmod(0o755)
        writable = [m for m in spec.mounts if m.writable]
        self.ready_path = (Path(writable[0].src) / READY_NAME
                           if warm.ready and writable else None)
        env = {"DARWIN_WARM_IMPORTS": ",".join(warm.imports),
               "DARWIN_WARM_GO": f"{CTL_DIR}/go", "DARWIN_WARM_MAX_S": str(warm.max_wait_s)}
        if self.ready_path is not None:
            env["DARWIN_WARM_READY"] = f"{writable[0].dst}/{READY_NAME}"
        if spec.gpu:
            env["DARWIN_WARM_CUDA"] = "1"
        self.spec = dataclasses.replace(
            spec, argv=["python", f"{LIB_DIR}/warm.py", *spec.argv[1:]],
            mounts=[*spec.mounts, Mount(self.ctl, CTL_DIR)], env={**spec.env, **env},
            # The deadline runs from the release; until then only our own wait bounds it.
            deadline_s=spec.deadline_s + warm.max_wait_s)
        self.deadline_s = spec.deadline_s
        self.idle = warm.idle and may_renice()
        self.started = time.monotonic()

    def is_ready(self) -> bool:
        return self.ready_path is None or self.ready_path.exists()

    def go(self) -> None:
        if self.ready_path is not None:  # the program must find its output folder as we made it
            self.ready_path.unlink(missing_ok=True)
        tmp = self.ctl / "go.tmp"
        tmp.write_bytes(b"")
        tmp.chmod(0o644)
        tmp.replace(self.ctl / "go")

    def close(self) -> None:
        shutil.rmtree(self.ctl, ignore_errors=True)
        if self.ready_path is not None:  # a sandbox that ended before its release left it
            self.ready_path.unlink(missing_ok=True)


def held(spec: SandboxSpec) -> tuple[SandboxSpec, Handover | None]:
    """The spec a backend starts, and the handover when ``spec.warm`` asks for a pre-start."""
    if spec.warm is None:
        return spec, None
    handover = Handover(spec)
    return handover.spec, handover


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc (a sandbox's processes, seen from the host)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(b")") + 2:].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def may_renice() -> bool:
    """Can we raise another process's priority (CAP_SYS_NICE: root here, whatever the uid)?"""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return bool(int(line.split()[1], 16) >> 23 & 1)
    except OSError:
        pass
    return False


def _each_thread(root: int, apply: Callable[[int], None]) -> None:
    """``apply(tid)`` to every thread of ``root``'s process tree (threads created later inherit
    their creator's settings, and a held sandbox creates none while it waits); a thread that
    ended meanwhile is skipped."""
    for pid in process_tree(root):
        try:
            tids = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                apply(int(tid))
            except OSError:
                pass


def schedule_tree(root: int, idle: bool) -> None:
    """``root``'s process tree to idle (SCHED_IDLE) or normal (SCHED_OTHER) priority."""
    policy = os.SCHED_IDLE if idle else os.SCHED_OTHER
    _each_thread(root, lambda tid: os.sched_setscheduler(tid, policy, os.sched_param(0)))


def idle_now() -> None:
    """In a pre-started sandbox's launcher (preexec): idle priority, inherited by everything it
    starts."""
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))


def pin_tree(root: int, cpus: list[int]) -> None:
    """Move ``root``'s process tree onto ``cpus``."""
    _each_thread(root, lambda tid: os.sched_setaffinity(tid, cpus))


class Releasable:
    """What a pre-started sandbox process adds (mixed into both backends' process classes):
    ``release`` hands it its program, from which moment its deadline and wall time run."""

    handover: Handover | None = None
    warm_s: float = 0.0  # from its start to its release (hidden behind other work)

    def alive(self) -> bool:  # pragma: no cover - each backend says
        raise NotImplementedError

    def pin(self, cpus: list[int]) -> None:  # pragma: no cover - each backend says
        raise NotImplementedError

    def root_pid(self) -> int | None:  # pragma: no cover - each backend says
        raise NotImplementedError

    def release(self, cpus: list[int] | None = None, ready_timeout_s: float = 600.0) -> bool:
        """Run the program now: wait until the sandbox is warm, pin it, create the go file,
        restart the clock. False when it died before (the caller starts a cold one instead)."""
        h = self.handover
        assert h is not None, "release() is for sandboxes started with spec.warm"
        if h.idle and (root := self.root_pid()) is not None:
            schedule_tree(root, idle=False)  # its slot is free: full speed for the rest
        until = time.monotonic() + ready_timeout_s
        while not h.is_ready() and self.alive() and time.monotonic() < until:
            time.sleep(0.02)
        if not self.alive() or not h.is_ready():
            return False
        if cpus:
            self.pin(cpus)
        h.go()
        self.started = time.monotonic()
        self.warm_s = self.started - h.started
        self.spec = dataclasses.replace(self.spec, deadline_s=h.deadline_s)
        return True


class SandboxProcess(Releasable):
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
        output_cap=None,
        handover: Handover | None = None,
    ):
        self.popen = popen
        self.handover = handover
        self.spec = spec
        self.backend = backend
        self.isolated = isolated
        self.limits = limits  # a CgroupLimits or None
        self.started = time.monotonic()
        self.timed_out = False
        self._on_exit = on_exit or []
        self._start_error = start_error
        self._finished = False
        self._outputs = OutputGuard(spec, self.kill, output_cap)

    def alive(self) -> bool:
        return self.popen.poll() is None

    def pin(self, cpus: list[int]) -> None:
        pin_tree(self.popen.pid, cpus)

    def root_pid(self) -> int | None:
        return self.popen.pid

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
        killed_at = None
        if self.timed_out or self.popen.poll() is None:
            killed_at = time.monotonic()
            self.kill()
        self.popen.wait()
        wall = time.monotonic() - self.started
        oom = False
        if self.limits is not None:
            self.limits.kill_all()
            oom = self.limits.oom_killed()
            self.limits.remove()
        cleanup = time.monotonic() - killed_at if killed_at is not None else 0.0
        disk = self._outputs.settle()
        for stream in (self.popen.stdin, self.popen.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        for callback in self._on_exit:
            callback()
        if self.handover is not None:
            self.handover.close()
        rc = self.popen.returncode
        error = self._start_error() if self._start_error is not None else None
        if error is not None:
            raise SandboxInfraError(f"{self.backend} sandbox failed to start: {error}")
        self._result = SandboxResult(
            outcome=classify(rc, self.timed_out, oom, disk),
            returncode=rc,
            wall_s=wall,
            backend=self.backend,
            isolated=self.isolated,
            log_path=self.spec.log_path,
            cleanup_s=cleanup,
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
