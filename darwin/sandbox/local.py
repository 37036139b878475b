"""The local sandbox: bubblewrap, entered as an unprivileged uid, plus a cgroup and rlimits.

Measured traps this design answers:
- bwrap run by root stays root on the host (it could remount binds read-write, write sysctls), so
  as root we drop to uid 65534 with setpriv *before* bwrap, which then builds its own user, mount,
  PID, network, IPC and UTS namespaces like it does for any normal user.
- A uid-65534 bwrap cannot read paths under /root (mode 700), where pyenv keeps Python. So, as
  root, we first enter a private mount namespace and bind every source we need onto a staging
  tmpfs; bwrap then binds from the staged copies. Nothing leaks to the host's mount table.
- A setsid grandchild survives killpg: the PID namespace (bwrap --die-with-parent) and the cgroup
  take every descendant with them.
- Only what the program needs is visible: /usr (the OS), the Python runtime and the environment
  that holds torch/numpy, the program, its token socket, one writable output folder. Never / as a
  whole, never the home folder, never the project's data folder or the Prefect database.
"""

from __future__ import annotations

import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from darwin.sandbox.base import (
    SANDBOX_UID,
    SandboxProcess,
    SandboxResult,
    SandboxSpec,
    SandboxUnavailable,
    base_env,
    held,
    idle_now,
    log_tail,
    prepare_outputs,
)
from darwin.sandbox.limits import SYSTEM_PATH, CgroupLimits, set_rlimits

SYSTEM_DIRS = ("/bin", "/sbin", "/lib", "/lib64", "/lib32", "/libx32")
ETC_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group")
LAUNCH_PATH = SYSTEM_PATH
PACKAGES_NEEDED = ("torch", "numpy", "safetensors")


def _is_under(path: Path, parent: Path) -> bool:
    try:
        path.relative_to(parent)
        return True
    except ValueError:
        return False


@dataclass
class PythonRuntime:
    """The interpreter and environment the sandbox exposes (read-only, at their host paths)."""

    executable: str
    binds: list[Path]
    masks: list[Path] = field(default_factory=list)

    @classmethod
    def detect(cls) -> PythonRuntime:
        binds: list[Path] = []

        def add(p: Path) -> None:
            if p == Path("/usr") or _is_under(p, Path("/usr")):
                return  # the OS tree is bound anyway
            if any(_is_under(p, b) for b in binds):
                return
            binds[:] = [b for b in binds if not _is_under(b, p)] + [p]

        add(Path(sys.base_prefix))
        add(Path(sys.prefix))
        for name in PACKAGES_NEEDED:
            spec = importlib.util.find_spec(name)
            if spec is None or spec.origin is None:
                raise SandboxUnavailable(
                    f"the sandbox needs the {name} package; install it (pip install {name})"
                )
            add(Path(spec.origin).resolve().parent.parent)
        # Our own package (and the dataset inside it, when installed non-editable) must never be
        # visible to a candidate: a tmpfs is mounted over it.
        import darwin

        masks = []
        for hidden in (Path(darwin.__file__).resolve().parent, _seed_package().resolve()):
            if any(_is_under(hidden, b) for b in binds) and not any(
                _is_under(hidden, m) for m in masks
            ):
                masks.append(hidden)
        return cls(executable=sys.executable, binds=binds, masks=masks)


def _seed_package() -> Path:
    """Where the seed package (program, contract, dataset) is installed: never visible inside."""
    from importlib import resources

    return Path(str(resources.files("darwin.seed")))


class LocalSandbox:
    """bubblewrap backend (see the module docstring)."""

    name = "local"
    isolated = True

    def __init__(self, runtime: PythonRuntime | None = None):
        self.bwrap = shutil.which("bwrap")
        if self.bwrap is None:
            raise SandboxUnavailable(
                "bubblewrap (bwrap) not found: install it (apt-get install bubblewrap), "
                "or use --sandbox docker, or accept the risk with --sandbox unsafe"
            )
        self.as_root = os.geteuid() == 0
        if self.as_root:
            for tool in ("setpriv", "unshare", "mount"):
                if shutil.which(tool, path=LAUNCH_PATH) is None:
                    raise SandboxUnavailable(
                        f"{tool} not found: install util-linux (apt-get install util-linux)"
                    )
        self.runtime = runtime or PythonRuntime.detect()

    # -- command construction -----------------------------------------------------------------
    def _bwrap_args(self, spec: SandboxSpec, source, status_fd: int) -> list[str]:
        """bwrap arguments; ``source(host_path)`` maps a host dir to where bwrap can read it."""
        a = [
            "--json-status-fd",
            str(status_fd),
            "--unshare-all",
            "--die-with-parent",
            "--new-session",
            "--clearenv",
            "--hostname",
            "sandbox",
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for d in SYSTEM_DIRS:
            p = Path(d)
            if p.is_symlink():
                a += ["--symlink", os.readlink(p), d]
            elif p.is_dir():
                a += ["--ro-bind", d, d]
        for f in ETC_FILES:
            if Path(f).exists():
                a += ["--ro-bind", f, f]
        a += ["--proc", "/proc", "--dev", "/dev", "--size", str(256 << 20), "--tmpfs", "/tmp"]
        if spec.gpu:
            # The GPU's device nodes, and /sys read-only: the CUDA runtime and NVML read it.
            for dev in sorted(Path("/dev").glob("nvidia*")):
                a += ["--dev-bind", str(dev), str(dev)]
            a += ["--ro-bind", "/sys", "/sys"]
        for b in self.runtime.binds:
            a += ["--ro-bind", source(b), str(b)]
        for m in self.runtime.masks:
            a += ["--tmpfs", str(m)]
        for m in spec.mounts:
            a += ["--bind" if m.writable else "--ro-bind", source(m.src), m.dst]
        # bwrap's root is a tmpfs; nothing but the output folder and /tmp should be writable.
        a += ["--remount-ro", "/", "--chdir", spec.cwd]
        for k, v in base_env(spec).items():
            a += ["--setenv", k, v]
        argv = list(spec.argv)
        if argv and argv[0] == "python":
            argv[0] = self.runtime.executable
        return [*a, "--", *argv]

    def command(self, spec: SandboxSpec, stage: Path, status_fd: int) -> list[str]:
        if not self.as_root:
            return [self.bwrap, *self._bwrap_args(spec, str, status_fd)]
        # As root: private mount namespace → stage the sources → drop to nobody → bwrap.
        staged: dict[Path, str] = {}

        def source(p: Path) -> str:
            p = Path(p)
            if p not in staged:
                staged[p] = f"{stage}/{len(staged)}"
            return staged[p]

        args = self._bwrap_args(spec, source, status_fd)
        q = shlex.quote
        lines = ["set -e", f"mount -t tmpfs -o mode=0755,size=64k darwin-stage {q(str(stage))}"]
        for host, target in staged.items():
            lines.append(f"mkdir {q(target)} && mount --bind {q(str(host))} {q(target)}")
        lines.append(
            f"exec setpriv --reuid={SANDBOX_UID} --regid={SANDBOX_UID} --clear-groups "
            f"--no-new-privs -- {q(self.bwrap)} " + " ".join(q(x) for x in args)
        )
        script = "\n".join(lines)
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c", script]

    # -- running ------------------------------------------------------------------------------
    def start(self, spec: SandboxSpec, *, pipe: bool = False) -> SandboxProcess:
        spec, handover = held(spec)
        stage = Path(tempfile.mkdtemp(prefix="darwin-stage-"))
        output_cap = prepare_outputs(spec)
        memory = spec.memory_mb << 20
        limits = CgroupLimits.create(memory, spec.max_pids)
        max_file = spec.max_file_mb << 20
        cpus = spec.cpus

        def preexec() -> None:
            if limits is not None:
                limits.attach_self()
            set_rlimits(
                max_file,
                memory_bytes=None if (limits is not None or spec.gpu) else memory,
                nproc=None if limits is not None else spec.max_pids,
            )
            if cpus:
                os.sched_setaffinity(0, cpus)
            if handover is not None and handover.idle:
                idle_now()

        # bwrap reports {"child-pid": N} on this pipe once the sandbox is up: without it, a
        # failure is ours (a launch problem), not the candidate's crash.
        status_r, status_w = os.pipe()
        log = open(spec.log_path, "wb") if spec.log_path else subprocess.DEVNULL
        try:
            popen = subprocess.Popen(
                self.command(spec, stage, status_w),
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else log,
                stderr=log,
                env={"PATH": LAUNCH_PATH},  # nothing of ours (keys, credentials) is inherited
                preexec_fn=preexec,
                start_new_session=True,
                close_fds=True,
                pass_fds=(status_w,),
            )
        except BaseException:
            if limits is not None:
                limits.remove()
            if output_cap is not None:
                output_cap.release()
            if handover is not None:
                handover.close()
            shutil.rmtree(stage, ignore_errors=True)
            os.close(status_r)
            raise
        finally:
            os.close(status_w)
            if log is not subprocess.DEVNULL:
                log.close()

        def start_error() -> str | None:
            os.set_blocking(status_r, False)
            try:
                status = os.read(status_r, 65536).decode(errors="replace")
            except BlockingIOError:
                status = ""
            finally:
                os.close(status_r)
            if "child-pid" in status:
                return None
            tail = log_tail(spec.log_path, 600).strip() if spec.log_path else ""
            return tail.splitlines()[-1] if tail else "no status from bwrap"

        return SandboxProcess(
            popen,
            spec,
            backend=self.name,
            isolated=True,
            limits=limits,
            on_exit=[lambda: shutil.rmtree(stage, ignore_errors=True)],
            start_error=start_error,
            output_cap=output_cap,
            handover=handover,
        )

    def run(self, spec: SandboxSpec) -> SandboxResult:
        return self.start(spec).wait()
