"""Live progress of a run for people: read from the run store, so it is the same whether the run
is new or resumed, and it never depends on what a candidate prints.

The display shows the generation, children trained / running / failed, the best so far with the
seed's noise band, elapsed time and an ETA from the median training time of this run.
"""

from __future__ import annotations

import statistics
import threading
import time
from dataclasses import dataclass

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from darwin.engine import Experiment, in_generation
from darwin.memory import RunStore


@dataclass
class Snapshot:
    generation: int  # the generation being worked on
    committed: int | None
    trained: int
    failed: int
    best_id: str | None
    best_loss: float | None
    seed_loss: float | None
    noise: float | None
    median_train_s: float | None
    trainings_left: int


def snapshot(store: RunStore, exp: Experiment, slots: int) -> Snapshot:
    head = store.head()
    evals = store.evaluations()
    working = 0 if head is None else head + 1
    gen_evals = [e for e in evals if in_generation(e.candidate_id, working)]
    failed = sum(e.val_loss is None for e in gen_evals)
    best_id = best_loss = seed_loss = noise = None
    if head is not None:
        g0 = store.generation(0)
        seed_loss, noise = g0.population[0].fitness, g0.noise
        best = store.generation(head).population[0]
        best_id, best_loss = best.candidate_id, best.fitness
    walls = [e.train_wall_s + (e.eval_wall_s or 0) for e in evals if not e.cached and e.train_wall_s]
    per_gen = exp.children * (1 + 0.5) + exp.reruns * (exp.min_runs - 1)  # ~half need a repair
    done_gens = 0 if head is None else head
    left = max(0.0, (exp.generations - done_gens) * per_gen - (len(gen_evals) if working else 0))
    if head is None:
        left += max(0, exp.seeds - len(gen_evals))
    return Snapshot(
        generation=working, committed=head, trained=len(gen_evals), failed=failed,
        best_id=best_id, best_loss=best_loss, seed_loss=seed_loss, noise=noise,
        median_train_s=statistics.median(walls) if walls else None,
        trainings_left=int(left / max(1, slots) + 0.5),
    )


def render(s: Snapshot, exp: Experiment, started: float) -> Group:
    elapsed = time.monotonic() - started
    table = Table.grid(padding=(0, 2))
    if s.generation == 0:
        what = "seed program (its noise band)"
    elif s.committed is not None and s.committed >= exp.generations:  # never "3 of 2"
        what = f"all {exp.generations} generations committed: finishing"
    else:
        what = f"generation {s.generation} of {exp.generations}"
    total = exp.seeds if s.generation == 0 else exp.children
    table.add_row(Text(what, style="bold"),
                  f"trained {s.trained} (first runs planned: {total}), failed {s.failed}")
    if s.best_loss is not None and s.seed_loss is not None:
        table.add_row("best so far", f"{s.best_id}: val loss {s.best_loss:.4f} vs seed "
                      f"{s.seed_loss:.4f} ± {s.noise or 0:.4f} (2σ)")
    eta = (f"~{s.trainings_left * s.median_train_s / 60:.0f} min left"
           if s.median_train_s else "ETA after the first training")
    table.add_row("time", f"{elapsed / 60:.1f} min elapsed, {eta}")
    return Group(table)


def commit_line(store: RunStore, gen: int) -> str:
    """One plain line for a committed generation (a log without a terminal: nohup, a pipe)."""
    record = store.generation(gen)
    best = record.population[0] if record.population else None
    when = time.strftime("%H:%M:%S UTC", time.gmtime(record.committed_at or time.time()))
    line = f"generation {gen} committed at {when}"
    if best is not None:
        line += f": best {best.candidate_id} val loss {best.fitness:.4f}"
    if gen:
        line += (f"; {len(record.children)} children, promoted "
                 f"{', '.join(record.promoted) or 'none'}")
    return line


class LiveProgress:
    """A rich Live display on stderr, refreshed from the store every second; without a terminal
    (``enabled`` False) and with ``plain``, one line per committed generation instead."""

    def __init__(self, store: RunStore, exp: Experiment, slots: int, console: Console,
                 enabled: bool = True, plain: bool = False, every_s: float = 1.0):
        self.store, self.exp, self.slots, self.console = store, exp, slots, console
        self.enabled, self.every_s = enabled, every_s
        self.plain = plain and not enabled
        self._stop = threading.Event()
        self._held = threading.Event()
        self._started = time.monotonic()

    def __enter__(self) -> LiveProgress:
        if self.enabled:
            self._live = self._new_live()
            self._live.__enter__()
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        elif self.plain:
            try:  # read here, not in the thread: a commit right after entering is news
                said = self.store.head()  # a resumed run: what was committed before is not
            except Exception:  # noqa: BLE001
                said = None
            self._thread = threading.Thread(target=self._lines, args=(said,), daemon=True)
            self._thread.start()
        return self

    def _new_live(self) -> Live:
        return Live(console=self.console, refresh_per_second=2, transient=True)

    def _lines(self, said: int | None) -> None:
        while not self._stop.wait(2 * self.every_s):
            try:
                head = self.store.head()
                while head is not None and (said is None or said < head):
                    said = 0 if said is None else said + 1
                    self.console.print(commit_line(self.store, said), markup=False,
                                       highlight=False, soft_wrap=True)
            except Exception:  # noqa: BLE001 - a missed line must never stop a run
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            if self._held.is_set():
                continue
            try:
                s = snapshot(self.store, self.exp, self.slots)
                self._live.update(render(s, self.exp, self._started))
            except Exception:  # noqa: BLE001 - a display glitch must never stop a run
                pass

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def hold(self) -> None:
        """Take the display off the terminal while a person answers a review."""
        if self.enabled and not self._stop.is_set() and not self._held.is_set():
            self._held.set()
            self._live.stop()

    def release(self) -> None:
        """Put the display back below what was printed meanwhile. A new Live: a restarted one
        moves the cursor up by its last height before drawing, over the lines printed while it
        was held (the review's confirmation)."""
        if self.enabled and not self._stop.is_set() and self._held.is_set():
            self._live = self._new_live()
            self._live.start()
            self._held.clear()

    def stop(self) -> None:
        """End the display (the terminal gets its cursor back); safe to call twice."""
        if (self.enabled or self.plain) and not self._stop.is_set():
            self._stop.set()
            self._thread.join(timeout=3)
            if self.enabled and not self._held.is_set():
                self._live.__exit__(None, None, None)
