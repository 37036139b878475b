"""Watching a child that trains on another machine (``darwin run --pool``): when is it done,
still going, lost, or waiting for a worker that does not exist? Pure decisions, no Prefect.

A child's flow run beats in the run's store while it trains (a counter it renews, see
``flows/child.py``). The orchestrator never compares clocks across machines: it notes, on its
own monotonic clock, when it last saw the counter move. A child whose beat stood still for
``lost_after_s`` is lost: its worker or machine died (kill -9, power, network), or its flow run
ended without a record. Prefect's state is read for what it is sure of (a final state) and for
display; its zombie detection is not relied on (false positives on healthy runs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

# Prefect's state types, as strings (this module imports no Prefect).
WAITING_FOR_A_WORKER = {"SCHEDULED", "LATE"}
ENDED_BADLY = {"FAILED", "CRASHED", "CANCELLED"}


@dataclass(frozen=True)
class Verdict:
    what: Literal["done", "wait", "lost", "no_worker", "stopped"]
    why: str = ""


@dataclass
class ChildWatch:
    """One submitted attempt of one (candidate, seed), watched from the orchestrator.

    ``submitted``: when it was submitted (monotonic seconds). ``lost_after_s``: how long its beat
    may stand still once it beats. ``start_s``: how much longer it may take to beat at all once a
    worker took it (a new process imports torch; on a busy machine that takes a while).
    ``no_worker_after_s``: how long it may wait for a worker before we ask whether any worker
    is online for the pool at all."""

    submitted: float
    lost_after_s: float
    no_worker_after_s: float
    start_s: float = 0.0
    _beat: object = None
    _first: object = None  # the beat seen when a worker took it: an earlier attempt's, or none
    _beating: bool = False
    _moved_at: float | None = field(default=None)

    def verdict(self, now: float, *, evaluated: bool, state: str, message: str = "",
                beat: object = None, workers_online: bool | None = None) -> Verdict:
        """``state``: the flow run's state type, read BEFORE ``evaluated`` (a run that finished
        between the two reads is then seen with its record). ``beat``: the child's heartbeat
        counter as last read (None before its first). ``workers_online``: whether a worker of
        the pool is online (None: not asked; asked only when the verdict depends on it)."""
        if evaluated:
            return Verdict("done")
        if state == "COMPLETED":
            return Verdict("lost", "its flow run completed without an evaluation record")
        if state in ENDED_BADLY:
            return Verdict("lost", f"its flow run ended {state.lower()}"
                           + (f": {message}" if message else ""))
        if state in WAITING_FOR_A_WORKER:  # a beat seen now is an earlier attempt's
            self._moved_at = None  # the lost clock starts when a worker takes it
            if now - self.submitted >= self.no_worker_after_s and workers_online is False:
                return Verdict("no_worker")
            return Verdict("wait")
        if self._moved_at is None:  # a worker took it just now
            self._beat, self._first, self._moved_at = beat, beat, now
            return Verdict("wait")
        if beat != self._beat:
            self._beat, self._moved_at = beat, now
            self._beating = self._beating or beat != self._first
            return Verdict("wait")
        allowed = self.lost_after_s + (0.0 if self._beating else self.start_s)
        if now - self._moved_at >= allowed:
            last = "its heartbeat stopped" if self._beating else "no heartbeat at all"
            return Verdict("lost", f"{last} for {allowed:.0f} s: its worker or machine died, "
                                   "or lost the network")
        return Verdict("wait")

    def excuse(self, now: float) -> None:
        """We could not look (the API or the store blinked): the lost clock restarts, so a
        child is never lost for what we could not see."""
        if self._moved_at is not None:
            self._moved_at = now

    def needs_workers(self, now: float) -> bool:
        """Whether the next verdict would want to know if any worker is online."""
        return now - self.submitted >= self.no_worker_after_s


def idempotency_key(run_id: str, cid: str, seed: int, attempt: int) -> str:
    """The one flow run of this attempt: submitting it again (a resumed orchestrator) finds the
    same flow run instead of training the child twice."""
    return f"{run_id}/{cid}/{seed}/{attempt}"


def beat_interval(lost_after_s: float) -> float:
    """How often a child beats: several beats per ``lost_after_s``, so one slow write to the
    store is never taken for a death."""
    return max(0.5, lost_after_s / 6)


class Heartbeat:
    """A worker's child beats in the run's store while it trains (``store.beat`` every
    ``every_s`` seconds, the first at once), from a thread of its own: a training that keeps
    the process busy still beats; a process (or machine) that dies stops beating. A failed
    beat (the store briefly down) is tried again at the next one."""

    def __init__(self, store, cid: str, seed: int, info: dict, every_s: float):
        import threading

        self.store, self.cid, self.seed, self.info, self.every_s = store, cid, seed, info, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"beat-{cid}-s{seed}",
                                        daemon=True)

    def _run(self) -> None:
        while True:
            try:
                self.store.beat(self.cid, self.seed, self.info)
            except Exception:  # noqa: BLE001 - the next beat tries again; a lost run shows
                pass
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
