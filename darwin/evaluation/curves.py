"""Training-loss curves read from a child's log by the trusted side, while it trains.

The child writes its stdout to a file; a thread here reads what was added every
``POLL_S`` seconds and stamps each new line with the seconds since training started (the
program cannot fake that clock: it only chooses what it prints). Lines that look like a loss
report ("iter 40/200: loss 2.4321", "step 100: train loss 2.31, val loss 2.40") become
points of a curve. The losses are the program's own claims: reports label them "reported by
the program" and never score with them.
"""

from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path

POLL_S = 0.05  # a line is stamped within this of being written (reading a file is cheap)
MAX_POINTS = 200  # a curve longer than this keeps every other point (the whole run, coarser)
MAX_LINE = 400  # longer lines are not loss reports (and are not worth a regex)
# What one training's log may cost us: the bytes parsed while it runs, then at most its last
# TAIL bytes when it ends (a program printing without end must not keep the orchestrator busy).
FOLLOW_BYTES = 32 << 20
TAIL = 1 << 20

_STEP = re.compile(r"\b(?:iter(?:ation)?|step|it)\b\s*[:=#]?\s*(\d{1,9})", re.IGNORECASE)
# "train loss 2.3", "loss: 2.3", "loss=2.3"; not "val loss" (a different quantity).
_LOSS = re.compile(r"(?<![\w.])(?:(train(?:ing)?)[ _]?)?loss\b\s*[:=]?\s*"
                   r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)", re.IGNORECASE)
_VAL_BEFORE = re.compile(r"(?:val(?:id(?:ation)?)?|eval|test)[ _]?$", re.IGNORECASE)


def parse_loss_line(line: str) -> tuple[int, float] | None:
    """(step, training loss) from one line a program printed, or None. Prefers an explicit
    "train loss" over a bare "loss"; ignores "val loss" / "eval loss"."""
    if len(line) > MAX_LINE:
        return None
    step = _STEP.search(line)
    if step is None:
        return None
    best = None
    for n, m in enumerate(_LOSS.finditer(line)):
        if n == 4:  # a progress line names a loss or two; more is not one
            return None
        if _VAL_BEFORE.search(line[max(0, m.start() - 12): m.start()]):
            continue
        value = float(m.group(2))
        if m.group(1):  # "train loss": the one we want
            best = value
            break
        if best is None:
            best = value
    if best is None or not math.isfinite(best) or not 0 < best < 100:
        return None
    return int(step.group(1)), best


def decimate(points: list, limit: int = MAX_POINTS) -> list:
    """At most ``limit`` points spread over the whole curve (the last point always kept)."""
    if len(points) <= limit:
        return points
    stride = math.ceil(len(points) / limit)
    kept = points[::stride]
    if kept[-1] is not points[-1]:
        kept[-1] = points[-1]
    return kept


class LogCurve:
    """Follows a log file from another thread: ``with LogCurve(path) as c: ...; c.points``
    is a list of [step, seconds since start, loss]."""

    def __init__(self, path: Path, poll_s: float = POLL_S):
        self.path, self.poll_s = Path(path), poll_s
        self.points: list[list[float]] = []
        self.lines = 0
        self._offset, self._partial, self._skip_line = 0, b"", False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._start = 0.0

    def __enter__(self) -> LogCurve:
        self._start = time.monotonic()
        self._thread = threading.Thread(target=self._follow, daemon=True, name="log-curve")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:  # a curve is a picture: nothing here may fail the training it follows
            size = self.path.stat().st_size
            if size - self._offset > TAIL:  # skip to the end: the curve keeps its last points
                self._offset, self._partial, self._skip_line = size - TAIL, b"", True
            while self._read():  # what the last poll missed (stamped now: the run has ended)
                pass
            if self._partial:
                self._line(self._partial)
                self._partial = b""
        except Exception:  # noqa: BLE001
            pass
        self.points = decimate(self.points)

    def _follow(self) -> None:
        while not self._stop.wait(self.poll_s) and self._offset < FOLLOW_BYTES:
            self._read()

    def _read(self) -> int:
        """Read what was added since the last call (at most 1 MiB): how many bytes."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self._offset)
                chunk = f.read(1 << 20)
        except OSError:
            return 0
        self._offset += len(chunk)
        *lines, self._partial = (self._partial + chunk).split(b"\n")
        if self._skip_line and lines:  # we jumped into the middle of a line
            lines, self._skip_line = lines[1:], False
        if len(self._partial) > 4 * MAX_LINE:  # an endless line: not a loss report
            self._partial = b""
        for line in lines:
            self._line(line)
        return len(chunk)

    def _line(self, raw: bytes) -> None:
        self.lines += 1
        found = parse_loss_line(raw[: MAX_LINE + 1].decode("utf-8", "replace"))
        if found is not None:
            self.points.append([found[0], round(time.monotonic() - self._start, 3), found[1]])
            if len(self.points) > 4 * MAX_POINTS:  # bounded memory whatever the child prints
                self.points = self.points[::2]
