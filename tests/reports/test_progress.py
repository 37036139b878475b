"""What the terminal of `darwin run` shows around a review: the answer's confirmation stays on
screen when the live display comes back; without a terminal, one plain line per committed
generation."""

from __future__ import annotations

import io
import time

from rich.console import Console

from darwin.engine import make_experiment
from darwin.memory import GenerationRecord, Member, RunStore
from darwin.reports.progress import LiveProgress

CURSOR_UP = "\x1b[1A"


def _store(tmp_path) -> RunStore:
    store = RunStore(tmp_path / "runs", "r")
    store.create({"run_id": "r", "experiment": {}})
    store.commit(GenerationRecord(run_id="r", generation=0, population=[
        Member(candidate_id="seed", losses=[2.0, 2.02])], noise=0.02))
    return store


def _wait_for(buffer: io.StringIO, words: str, after: int = 0, timeout_s: float = 10) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        at = buffer.getvalue().find(words, after)
        if at >= 0:
            return at
        time.sleep(0.02)
    raise AssertionError(f"never saw {words!r}: {buffer.getvalue()!r}")


def test_the_confirmation_stays_when_the_live_display_comes_back(tmp_path):
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=True, width=100)
    with LiveProgress(_store(tmp_path), make_experiment(), 1, console, every_s=0.05) as live:
        _wait_for(buffer, "best so far")
        live.hold()  # a review: the display leaves the screen
        console.print("review after generation 1: answered via cli; the run continues")
        mark = len(buffer.getvalue())
        live.release()
        back = _wait_for(buffer, "best so far", after=mark)
    # Between the confirmation and the display's return, nothing moves the cursor up (a
    # restarted display used to climb over the last lines printed while it was held).
    assert CURSOR_UP not in buffer.getvalue()[mark:back]


def test_without_a_terminal_each_committed_generation_is_one_plain_line(tmp_path):
    store = _store(tmp_path)  # generation 0 is already committed: not news to a resumed run
    buffer = io.StringIO()
    console = Console(file=buffer, force_terminal=False, width=200)
    with LiveProgress(store, make_experiment(), 1, console, enabled=False, plain=True,
                      every_s=0.05):
        for g in (1, 2):
            store.commit(GenerationRecord(
                run_id="r", generation=g, population=[Member(candidate_id=f"g00{g}-c00",
                                                             losses=[2.0 - g / 10])],
                children=[f"g00{g}-c00", f"g00{g}-c01"], promoted=[f"g00{g}-c00"]))
        _wait_for(buffer, "generation 2 committed")
    lines = buffer.getvalue().splitlines()
    assert len(lines) == 2 and "\x1b" not in buffer.getvalue()
    assert lines[0].startswith("generation 1 committed at ")
    assert lines[0].endswith(": best g001-c00 val loss 1.9000; 2 children, promoted g001-c00")
