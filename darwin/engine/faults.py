"""Fault injection for the crash tests: ``DARWIN_FAULT=point:n:SIGNAL`` makes this process send
itself SIGNAL (KILL, TERM or INT) the n-th time it reaches ``point``. Points: ``mutate`` (a child
proposed, not yet persisted), ``train`` (a sandbox is training), ``score`` (trained, not yet
scored), ``repair`` (a repair proposed, not yet persisted), ``commit`` (a generation about to be
committed), ``final_test`` (the test split about to be scored). Unset, it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal
import threading

_lock = threading.Lock()
_seen: dict[str, int] = {}


def note_training(*what: object) -> None:
    """Append one line to $DARWIN_TRAINING_LOG for each training that ran to its end: the
    crash and storage tests count them to prove nothing trains twice."""
    if log_path := os.environ.get("DARWIN_TRAINING_LOG"):
        with _lock, open(log_path, "a") as f:
            f.write(" ".join(map(str, what)) + "\n")


def checkpoint(point: str) -> None:
    spec = os.environ.get("DARWIN_FAULT")
    if not spec:
        return
    where, n, name = spec.split(":")
    if where != point:
        return
    with _lock:
        _seen[point] = _seen.get(point, 0) + 1
        fire = _seen[point] == int(n)
    if fire:
        os.kill(os.getpid(), getattr(signal, f"SIG{name}"))
