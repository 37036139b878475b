"""Resource caps for a sandbox: a cgroup where we may create one, rlimits always.

Measured on our machines: RLIMIT_NPROC is ignored for root and counts per uid
across the machine, and RLIMIT_AS does not suit CUDA, so memory and process caps come from a
cgroup (v1 or v2) when one can be created; rlimits are the fallback and an extra layer.
"""

from __future__ import annotations

import os
import resource
import shutil
import stat
import subprocess
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"  # where the OS keeps util-linux, whatever our PATH


def _own_cgroup(controller: str | None) -> str | None:
    """Our cgroup path for a v1 controller (or the v2 path when controller is None)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controller is None and controllers == "":
            return path
        if controller is not None and controller in controllers.split(","):
            return path
    return None


class CgroupLimits:
    """One cgroup (v1: a memory and a pids group; v2: one group) per sandbox run."""

    def __init__(self, dirs: list[Path], version: int):
        self.dirs = dirs
        self.version = version

    @classmethod
    def create(cls, memory_bytes: int, max_pids: int) -> CgroupLimits | None:
        # The orchestrator's pid is in the name, so a later run can tell a dead run's leftovers.
        name = f"darwin-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        try:
            if (CGROUP_ROOT / "memory").is_dir() and (CGROUP_ROOT / "pids").is_dir():
                return cls._create_v1(name, memory_bytes, max_pids)
            if (CGROUP_ROOT / "cgroup.controllers").exists():
                return cls._create_v2(name, memory_bytes, max_pids)
        except OSError:
            return None
        return None

    @classmethod
    def _create_v1(cls, name: str, memory_bytes: int, max_pids: int) -> CgroupLimits:
        mem = CGROUP_ROOT / "memory" / (_own_cgroup("memory") or "/").lstrip("/") / name
        pids = CGROUP_ROOT / "pids" / (_own_cgroup("pids") or "/").lstrip("/") / name
        mem.mkdir()
        try:
            pids.mkdir()
        except OSError:
            mem.rmdir()
            raise
        (mem / "memory.limit_in_bytes").write_text(str(memory_bytes))
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # no swapping past the cap either
            memsw.write_text(str(memory_bytes))
        (pids / "pids.max").write_text(str(max_pids))
        return cls([mem, pids], version=1)

    @classmethod
    def _create_v2(cls, name: str, memory_bytes: int, max_pids: int) -> CgroupLimits:
        parent = CGROUP_ROOT / (_own_cgroup(None) or "/").lstrip("/")
        enabled = (parent / "cgroup.subtree_control").read_text().split()
        if "memory" not in enabled or "pids" not in enabled:
            raise OSError("memory/pids controllers not delegated here")
        group = parent / name
        group.mkdir()
        (group / "memory.max").write_text(str(memory_bytes))
        if (group / "memory.swap.max").exists():  # no swapping past the cap either
            (group / "memory.swap.max").write_text("0")
        (group / "pids.max").write_text(str(max_pids))
        return cls([group], version=2)

    # Called in the child between fork and exec: keep it to plain writes.
    def attach_self(self) -> None:
        pid = str(os.getpid())
        for d in self.dirs:
            with open(d / "cgroup.procs", "w") as f:
                f.write(pid)

    def pids(self) -> list[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return sorted(found)

    def kill_all(self, timeout: float = 5.0) -> None:
        """SIGKILL every process in the group until it is empty (catches setsid escapees)."""
        kill_file = self.dirs[0] / "cgroup.kill"
        deadline = time.monotonic() + timeout
        while True:
            left = self.pids()
            if not left or time.monotonic() > deadline:
                return
            if self.version == 2 and kill_file.exists():
                kill_file.write_text("1")
            else:
                for pid in left:
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
            time.sleep(0.02)

    def oom_killed(self) -> bool:
        mem = self.dirs[0]
        try:
            if self.version == 1:
                text = (mem / "memory.oom_control").read_text()
            else:
                text = (mem / "memory.events").read_text()
        except OSError:
            return False
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill" and int(value or 0) > 0:
                return True
        return False

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)


def set_rlimits(max_file_bytes: int, memory_bytes: int | None, nproc: int | None) -> None:
    """rlimits for the child (inherited through exec). Called between fork and exec."""
    resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, max_file_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    cap = min(4096, hard) if hard != resource.RLIM_INFINITY else 4096
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, cap), cap))
    if memory_bytes is not None:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    if nproc is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def reap_stale_cgroups() -> int:
    """Kill and remove the cgroups of orchestrators that died (kill -9) while training."""
    removed = 0
    for controller in ("memory", "pids", None):
        own = _own_cgroup(controller)
        if own is None:
            continue
        base = CGROUP_ROOT / (controller or "") / own.lstrip("/")
        try:
            stale = [d for d in base.iterdir() if d.is_dir() and d.name.startswith("darwin-")
                     and d.name.split("-")[1].isdigit() and not pid_alive(int(d.name.split("-")[1]))]
        except OSError:
            continue
        for d in stale:
            group = CgroupLimits([d], version=1 if controller else 2)
            group.kill_all(timeout=2)
            group.remove()
            removed += not d.exists()
    return removed


class OutputCap:
    """A hard cap on what a sandbox may write: as root, each writable folder becomes a tmpfs of
    ``max_bytes`` (and a few thousand inodes) for the run, then its files are copied back to disk.

    A cap polled from outside is always late (writes to the page cache run at GB/s: measured, a
    256 MB filler finished between two polls of 0.2 s), and per-file limits do not stop many files.
    The tmpfs also makes a hard link to a host file impossible (another file system). Without root
    there is no mount, and the poll in ``base.OutputGuard`` is the only cap.
    """

    FS_NAME = "darwin-out"

    def __init__(self, folders: list[Path]):
        self.folders = folders

    @classmethod
    def mount(cls, folders: list[Path], max_bytes: int, uid: int) -> OutputCap | None:
        mount = _system_tool("mount")
        if os.geteuid() != 0 or not folders or mount is None or _system_tool("umount") is None:
            return None
        done: list[Path] = []
        for folder in folders:
            opts = f"size={max_bytes},nr_inodes=4096,mode=0755,uid={uid},gid={uid},nosuid,nodev"
            r = subprocess.run([mount, "-t", "tmpfs", "-o", opts,
                                f"{cls.FS_NAME}-{os.getpid()}", str(folder)],
                               capture_output=True, text=True)
            if r.returncode != 0:
                cls(done).release()
                return None
            done.append(Path(folder))
        return cls(done)

    def full(self) -> bool:
        """Did the program fill its space (bytes or inodes)? Then it failed for `disk`."""
        for folder in self.folders:
            try:
                st = os.statvfs(folder)
            except OSError:
                continue
            if st.f_bavail * st.f_frsize < (1 << 20) or st.f_favail < 8:
                return True
        return False

    def release(self) -> None:
        """Copy each folder's files to disk (links stay links, for the collector to refuse), then
        unmount. Only call once nothing in the sandbox runs any more."""
        for folder in self.folders:
            keep = folder.with_name(folder.name + ".darwin-copy")
            shutil.rmtree(keep, ignore_errors=True)
            try:
                _copy_tree(folder, keep)
            finally:
                subprocess.run([_system_tool("umount") or "umount", "-l", str(folder)],
                               capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)
            keep.rename(folder)
        self.folders = []


def _system_tool(name: str) -> str | None:
    """util-linux's tools where the OS keeps them, whatever the caller's PATH."""
    return shutil.which(name, path=SYSTEM_PATH)


def _copy_tree(src: Path, dst: Path) -> None:
    """Regular files, folders and symlinks (as links); FIFOs and the like become empty FIFOs, so the
    collector still sees something that is not a regular file. Never opens anything but files."""
    dst.mkdir(mode=0o755)
    with os.scandir(src) as it:
        for e in it:
            target = dst / e.name
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(e.path), target)
            elif stat.S_ISDIR(st.st_mode):
                _copy_tree(Path(e.path), target)
            elif stat.S_ISREG(st.st_mode):
                fd = os.open(e.path, os.O_RDONLY | os.O_NOFOLLOW)
                with os.fdopen(fd, "rb") as f, open(target, "wb") as out:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                os.mkfifo(target)


def reap_stale_output_mounts() -> int:
    """Unmount the output tmpfs of orchestrators that died (kill -9) while training."""
    removed = 0
    try:
        lines = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return 0
    for line in lines:
        source, mountpoint = line.split()[:2]
        prefix = OutputCap.FS_NAME + "-"
        if not source.startswith(prefix) or not source[len(prefix):].isdigit():
            continue
        if pid_alive(int(source[len(prefix):])):
            continue
        mountpoint = mountpoint.replace("\\040", " ")
        umount = _system_tool("umount")
        if umount and subprocess.run([umount, "-l", mountpoint], capture_output=True).returncode == 0:
            removed += 1
    return removed
