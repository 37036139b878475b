"""A watchdog that outlives `darwin run` by a moment: when the run's process dies (kill -9
included), it kills what the run had started and removes what its sandboxes left.

Nothing else can: a process killed with -9 runs no cleanup, and its children (the embedded
Prefect server, training sandboxes) are re-parented to init and live on. The watchdog runs in its
own session, remembers the run's descendants (pid and start time, so a reused pid is never
killed), and when the run is gone sends them SIGKILL and reaps the run's cgroups, output mounts
and Docker containers. When the run ends normally it ends too.

    python -m darwin.engine.watchdog PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

POLL_S = 0.5


def start(pid: int | None = None) -> subprocess.Popen:
    """Watch ``pid`` (default: this process) from a separate session."""
    return subprocess.Popen(
        [sys.executable, "-m", "darwin.engine.watchdog", str(pid or os.getpid())],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True, close_fds=True)


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks since boot), or None once it is dead. A zombie is
    dead: its parent may not reap it until our kills close the pipes it waits on."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]  # state; field 22: start time


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return kids
    for task in tasks:
        try:
            kids += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def descendants(pid: int) -> dict[int, str]:
    """Every living descendant of ``pid`` with its start time."""
    found: dict[int, str] = {}
    todo = _children(pid)
    while todo:
        child = todo.pop()
        if child in found:
            continue
        started = _start_time(child)
        if started is not None:
            found[child] = started
            todo += _children(child)
    return found


def kill_remembered(remembered: dict[int, str]) -> int:
    """SIGKILL each remembered process that is still the same process; how many were."""
    killed = 0
    for pid, started in remembered.items():
        if _start_time(pid) == started:
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except OSError:
                pass
    return killed


def watch(pid: int) -> int:
    own = _start_time(pid)
    remembered: dict[int, str] = {}
    while own is not None and _start_time(pid) == own:
        remembered.update(descendants(pid))
        remembered.pop(os.getpid(), None)  # the run started this watchdog too
        remembered = {p: s for p, s in remembered.items() if _start_time(p) == s}
        time.sleep(POLL_S)
    killed = kill_remembered(remembered)
    from darwin.engine.runs import reap_leftovers

    reap_leftovers()
    return killed


if __name__ == "__main__":
    watch(int(sys.argv[1]))
