"""Where a run stands, the same words everywhere (`darwin runs`, the end of `darwin run`, the
report, the run's Prefect artifacts): read from its store alone, so any machine that reads the
store tells the same story.

    finished   the plan ran to its end and the test split scored it
    stopped    a review gate ended it after generation N (who, when)
    paused     a live process waits for a review until T (`darwin review RUN` answers it)
    running    a live process works on it
    crashed    no process works on it and it is not done: `darwin run --resume RUN` continues it

"Live" is the run's claim (its lock file, or its lease on a shared store), which the kernel drops
when the process dies, however it dies: a REVIEW pointer a dead process left behind is no pause.
"""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from darwin.engine import reviews as hitl
from darwin.engine.ids import SEED_ID
from darwin.memory import ReviewRecord, RunStore

State = Literal["finished", "stopped", "paused", "running", "crashed"]


class RunStatus(BaseModel):
    state: State
    line: str  # the one line a person reads
    run_id: str
    head: int | None = None  # the last committed generation
    planned: int | None = None  # the run's last generation as planned now
    after_generation: int | None = None  # stopped / paused: the review's generation
    by: str = ""  # stopped: who answered (their name, else how: ui, cli, terminal, api)
    at: float | None = None  # stopped: when the answer came (epoch s)
    until: float | None = None  # paused: when the defaults apply (epoch s)
    answer_command: str = ""  # paused: the command that answers the review
    resume_command: str = ""  # crashed: the command that continues the run


def run_alive(store: RunStore) -> bool:
    """Whether a live process works on the run: its lock is held (local store), or its lease
    runs and its holder is not a dead process of this host (shared store)."""
    if store.local:
        path = Path(store.root) / "run.lock"
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops the probe's own lock
        return False
    lease = store.pointer("LEASE") or {}
    return lease.get("until", 0) > time.time() and not dead_here(lease.get("owner", ""))


def dead_here(owner: str) -> bool:
    """Whether a lease's owner ("pid N on HOST") was a process of this host that is gone."""
    from darwin.sandbox import pid_alive

    parts = owner.split()
    return (len(parts) == 4 and parts[0] == "pid" and parts[3] == socket.gethostname()
            and parts[1].isdigit() and not pid_alive(int(parts[1])))


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(t))


def stopping_review(reviews: list[ReviewRecord], head: int | None) -> ReviewRecord | None:
    """The gate whose answer ended the run at ``head`` (stop, or 0 generations remaining);
    None when the run went on after it (a continuation) or no gate ended it."""
    if head is None:
        return None
    for review in reviews:
        answer = review.answer
        if (review.generation == head and answer is not None and not review.defaults_applied
                and (answer.stop or answer.remaining == 0)):
            return review
    return None


def _finals_done(store: RunStore, head: int, reviews: list[ReviewRecord], min_runs: int
                 ) -> bool:
    """Whether the test split scored the seed and the last generation's best (the run's last
    step). A gate at ``head`` that vetoed or pinned changed which best it scored."""
    if store.final(SEED_ID) is None:
        return False
    best = store.generation(head).best(min_runs)
    amended = any(r.generation == head and r.answer is not None and (r.answer.veto or r.answer.pin)
                  for r in reviews)
    return best is None or amended or store.final(best.candidate_id) is not None


def run_status(store: RunStore, alive: bool | None = None) -> RunStatus:
    """The run's status (``alive``: whether a live process holds the run; None: ask its
    claim)."""
    run_id = store.run_id
    head = store.head()
    reviews = store.reviews()
    experiment = store.meta().get("experiment", {})
    planned = hitl.planned_generations(int(experiment.get("generations", 0)), reviews)
    if head is not None and head > planned:  # continued past its first plan (a deployment)
        planned = head
    base = {"run_id": run_id, "head": head, "planned": planned}
    if alive is None:
        alive = run_alive(store)
    if alive:
        waiting = store.waiting()
        if waiting:
            review = waiting.get("review") or {}
            gen = waiting.get("generation", head)
            until = review.get("deadline") or None
            command = f"darwin review {run_id}"
            left = f" until {_utc(until)} (then its defaults apply)" if until else ""
            return RunStatus(
                state="paused", after_generation=gen, until=until, answer_command=command,
                line=f"paused after generation {gen}: waiting for a review{left}; "
                     f"answer with: {command}", **base)
        doing = ("measuring the seed (generation 0)" if head is None
                 else "finishing (the test split)" if head >= planned
                 else f"generation {head + 1} of {planned}")
        return RunStatus(state="running", line=f"running: {doing}", **base)
    resume = f"darwin run --resume {run_id}"
    min_runs = int(experiment.get("min_runs", 1))
    if head is not None and _finals_done(store, head, reviews, min_runs):
        stop = stopping_review(reviews, head)
        if stop is not None and stop.answer is not None:
            who = stop.answer.reviewer or stop.answer.via
            how = f" via {stop.answer.via}" if stop.answer.reviewer else ""
            when = stop.answered_at or None
            return RunStatus(
                state="stopped", after_generation=stop.generation, by=who, at=when,
                line=f"stopped by a review after generation {stop.generation} (by {who}{how}"
                     + (f", {_utc(when)}" if when else "") + ")", **base)
        if head >= planned:
            return RunStatus(state="finished", line=f"finished: {head} generation"
                             + ("" if head == 1 else "s") + ", test split scored", **base)
    where = ("before generation 0 was committed" if head is None
             else "after the last generation, before the test split" if head >= planned
             else f"after generation {head} of {planned}")
    return RunStatus(state="crashed", resume_command=resume,
                     line=f"crashed {where} (resumable: {resume})", **base)
