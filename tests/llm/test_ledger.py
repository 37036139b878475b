"""The run's LLM ledger in the store (local folder and S3): parallel callers reserve before
they call, so together they overshoot the cap by at most one reservation, and nothing counted
is lost (pure store logic, no LLM)."""

from __future__ import annotations

import threading

import pytest

from darwin.llm.ledger import CostCapReached, StoredLedger
from darwin.memory.store import RunStore

RESERVE, SPEND, CAP = 0.010, 0.004, 0.1


@pytest.fixture()
def store(storage_url):
    return RunStore(storage_url, "r")


def test_parallel_callers_stop_at_the_cap(storage_url, store):
    made, refused = [], []

    def caller() -> None:
        ledger = StoredLedger(RunStore(storage_url, "r"), CAP)  # each its own objects, like processes
        while True:
            try:
                token = ledger.reserve(RESERVE)
            except CostCapReached:
                refused.append(1)
                return
            ledger.settle(token, 100, 10, SPEND)
            made.append(1)

    threads = [threading.Thread(target=caller) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    s = StoredLedger(store, CAP).summary()
    assert s["calls"] == len(made) and s["input_tokens"] == 100 * len(made)  # none lost
    assert s["cost_usd"] == pytest.approx(SPEND * len(made))
    assert CAP - RESERVE <= s["cost_usd"] <= CAP + RESERVE
    assert s["failures"]["cost_cap"] == len(refused) == 6
    assert StoredLedger(store, CAP).capped() or s["cost_usd"] + RESERVE >= CAP


def test_a_released_call_costs_nothing_and_counts_its_failure(store):
    ledger = StoredLedger(store, 1.0)
    token = ledger.reserve(0.5)
    ledger.release(token, "timeout")
    s = ledger.summary()
    assert (s["calls"], s["cost_usd"], s["failures"]) == (0, 0.0, {"timeout": 1})
    assert store.pointer("LEDGER")["reserved"] == {}  # nothing held after the release
