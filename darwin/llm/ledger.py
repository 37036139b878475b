"""The LLM ledger: tokens and cost of every call, and the spending cap.

A run has one ledger, kept in its store (``StoredLedger``: the ``LEDGER`` pointer, moved by the
store's compare-and-swap), so the cap holds across children, repairs, generations, processes
and ``--resume``. Before each call the caller reserves what the call can cost at most (its
prompt, estimated, plus ``max_tokens`` of output, at the model's price); a call may start only
while spent + reserved is under the cap, so children calling at once overshoot the cap by at
most one call's reservation. The reservation is settled with the real usage afterwards, or
released when the call fails; one left by a process that died expires by itself.

``Ledger`` is the same thing in memory, for a client without a run (``darwin mutate``).
"""

from __future__ import annotations

import copy
import json
import threading
import time
import uuid
from typing import Callable

RESERVATION_TTL_S = 900.0  # a reservation older than this belonged to a process that died


def _empty() -> dict:
    return {"calls": 0, "input_tokens": 0, "output_tokens": 0, "cost_usd": 0.0,
            "failures": {}, "reserved": {}, "structured": None}


class CostCapReached(Exception):
    def __init__(self, spent: float, cap: float):
        super().__init__(f"spending cap reached: ${spent:.4f} of ${cap:.4f} "
                         "(raise DARWIN_LLM__MAX_COST_USD to allow more)")
        self.spent, self.cap = spent, cap


class Ledger:
    def __init__(self, max_cost_usd: float | None = None):
        self.max_cost_usd = max_cost_usd
        self._state = _empty()
        self._lock = threading.Lock()

    # -- how a change is applied: here under a lock; in the store by compare-and-swap ----------
    def _apply(self, change: Callable[[dict], object]) -> object:
        with self._lock:
            state = copy.deepcopy(self._state)
            out = change(state)
            self._state = state
            return out

    def _read(self) -> dict:
        with self._lock:
            return copy.deepcopy(self._state)

    # -- the operations ------------------------------------------------------------------------
    def reserve(self, usd: float) -> str:
        """Hold ``usd`` for one call; CostCapReached when the cap is already reached."""
        token = uuid.uuid4().hex[:12]
        cap = self.max_cost_usd

        def take(state: dict) -> None:
            now = time.time()
            state["reserved"] = {k: v for k, v in state["reserved"].items()
                                 if now - v[1] < RESERVATION_TTL_S}
            held = sum(v[0] for v in state["reserved"].values())
            if cap is not None and state["cost_usd"] + held >= cap:
                raise CostCapReached(state["cost_usd"], cap)  # nothing of this try is kept
            state["reserved"][token] = [usd, now]

        try:
            self._apply(take)
        except CostCapReached:
            self._apply(lambda s: s["failures"].__setitem__(
                "cost_cap", s["failures"].get("cost_cap", 0) + 1))
            raise
        return token

    def settle(self, token: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        def add(state: dict) -> None:
            state["reserved"].pop(token, None)
            state["calls"] += 1
            state["input_tokens"] += input_tokens
            state["output_tokens"] += output_tokens
            state["cost_usd"] += cost_usd

        self._apply(add)

    def release(self, token: str, failure: str | None = None) -> None:
        def drop(state: dict) -> None:
            state["reserved"].pop(token, None)
            if failure:
                state["failures"][failure] = state["failures"].get(failure, 0) + 1

        self._apply(drop)

    def learn_structured(self, ok: bool) -> None:
        """Remember for the whole run whether the server takes JSON-schema answers."""
        self._apply(lambda s: s.__setitem__("structured", ok))

    def structured(self) -> bool | None:
        return self._read()["structured"]

    def capped(self) -> bool:
        if self.max_cost_usd is None:
            return False
        state = self._read()
        return state["cost_usd"] >= self.max_cost_usd

    def summary(self) -> dict:
        s = self._read()
        return {"calls": s["calls"], "input_tokens": s["input_tokens"],
                "output_tokens": s["output_tokens"], "cost_usd": round(s["cost_usd"], 6),
                "max_cost_usd": self.max_cost_usd, "failures": dict(s["failures"])}


class StoredLedger(Ledger):
    """The run's ledger in its store: every process of the run (and every resume) shares it."""

    NAME = "LEDGER"

    def __init__(self, store, max_cost_usd: float | None = None):
        super().__init__(max_cost_usd)
        self.store = store

    def _apply(self, change: Callable[[dict], object]) -> object:
        result: list = []

        def move(old: bytes | None) -> bytes:
            state = json.loads(old) if old else _empty()
            result[:] = [change(state)]
            return json.dumps(state, sort_keys=True).encode()

        self.store.update_pointer(self.NAME, move)
        return result[0] if result else None

    def _read(self) -> dict:
        return self.store.pointer(self.NAME) or _empty()
