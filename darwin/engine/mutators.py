"""The LLM, for one run: one ledger for the whole run (every process and resume shares its cap),
and the offline catalogue in the LLM's place once that cap is reached."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cached_property

from darwin.engine.run_context import RunContext
from darwin.llm import LLMFailure, StoredLedger
from darwin.mutation import MutationResult, make_mutator

log = logging.getLogger(__name__)

CAP_NOTE = "the LLM's spending cap was reached: made by the offline mutator"
_CAP_SAID: set[str] = set()  # runs whose cap this process has announced
_CAP_SAID_LOCK = threading.Lock()


class Mutators:
    def __init__(self, run: RunContext):
        self.run = run

    @cached_property
    def ledger(self) -> StoredLedger:
        return StoredLedger(self.run.store, self.run.settings.llm.max_cost_usd)

    def _mutator(self, rng):
        mutator = make_mutator(self.run.experiment.mutator, self.run.settings.llm, rng=rng,
                               ledger=self.ledger)
        if mutator.uses_llm and self.ledger.capped():
            return self._offline(rng)
        return mutator, []

    def run_mutator(self, rng, use: Callable[..., MutationResult]):
        """(mutator, use(mutator)) with the run's mutator, or the offline one once the cap is
        reached, also when another child reached it during this call (the calls made before
        the refusal stay on the result, so on the candidate's record)."""
        mutator, notes = self._mutator(rng)
        result = use(mutator)
        if result.failure == LLMFailure.cost_cap.value:
            spent = result.usage
            mutator, notes = self._offline(rng)
            result = use(mutator)
            result.usage = spent + result.usage
        result.notes += notes
        return mutator, result

    def _offline(self, rng):
        spent = self.ledger.summary()
        with _CAP_SAID_LOCK:
            if self.run.store.run_id not in _CAP_SAID:
                _CAP_SAID.add(self.run.store.run_id)
                log.warning("the LLM's spending cap is reached ($%.4f of $%.4f, %d calls): the "
                            "rest of this run uses the offline mutator (raise "
                            "DARWIN_LLM__MAX_COST_USD and --resume to go on with the LLM)",
                            spent["cost_usd"], spent["max_cost_usd"], spent["calls"])
        return make_mutator("offline", rng=rng), [CAP_NOTE]
