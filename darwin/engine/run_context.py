"""What every part of the engine needs: the run's store, its experiment, the settings, the
sandbox, the budget and the seeds every program is measured on. The parts (knowledge,
human_loop, mutators, candidates, evaluations) are each built over one of these; the Engine is
one of these with its parts."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

from darwin.engine.experiment import Experiment
from darwin.engine.slots import slot_count, warm_pays
from darwin.evaluation import Budget, get_budget
from darwin.memory import RunStore
from darwin.sandbox import Sandbox, may_renice
from darwin.settings import Settings


@dataclass
class RunContext:
    store: RunStore
    experiment: Experiment
    settings: Settings
    sandbox: Sandbox | None
    # The children trained at once that the run asked for (--slots); None: settings.slots.
    asked_slots: int | None = None

    @cached_property
    def budget(self) -> Budget:
        return get_budget(self.experiment.budget)

    def seeds(self) -> list[int]:
        """The seeds every program is measured on, first run first."""
        return [self.experiment.seed + k for k in range(max(self.experiment.seeds,
                                                             self.experiment.min_runs))]

    def code(self, cid: str) -> str:
        """Candidate ``cid``'s program."""
        record = self.store.candidate(cid)
        assert record is not None, cid
        return self.store.code(record.code_sha)

    @cached_property
    def slots(self) -> int:
        """Children trained at once in this process (--slots, checked against the machine)."""
        asked = self.asked_slots if self.asked_slots is not None else self.settings.slots
        return slot_count(self.experiment.device, self.budget.threads, self.budget.memory_mb,
                          asked)

    @property
    def warming(self) -> bool:
        """Pre-start sandboxes while waiting for a slot (DARWIN_WARM; see bench/README.md)."""
        free = len(os.sched_getaffinity(0)) - self.slots * self.budget.threads
        return warm_pays(self.settings.warm, self.experiment.device, free, may_renice())
