"""The evolution engine, free of Prefect: the flows call its parts through thin tasks.

An Engine is a run's context (store, experiment, settings, sandbox, budget, seeds) with its
parts, each over that context and the parts below it (no part reaches up):

    knowledge    what the run knows: scores, the seed's fitness, lessons for the prompts
    humans       humans in the loop: reviews due, approvals carried out, vetoes and pins
    mutators     the LLM: the run's ledger, the offline catalogue once its cap is reached
    candidates   the seed program, each child's prompt and mutation, repairs
    evaluations  training and trusted scoring of (candidate, seed), the final test split

plus ``select``, which needs two of them. Tasks find a run's engine with ``engine_for(RunRef)``:
ids and settings, never live objects, so a task may run in another process.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from pydantic import BaseModel

from darwin.engine.candidates import Candidates
from darwin.engine.evaluations import Evaluations
from darwin.engine.experiment import Experiment
from darwin.engine.human_loop import HumanLoop
from darwin.engine.knowledge import Knowledge
from darwin.engine.mutators import Mutators
from darwin.engine.run_context import RunContext
from darwin.engine.selection import pareto, select
from darwin.memory import GenerationRecord, Member, RunStore


@dataclass
class Engine(RunContext):
    def __post_init__(self) -> None:
        # Built at once, not on first use: the tasks share one engine across threads, and two
        # racing first uses would each build a part (two tallies of slot waits, say).
        self.knowledge = Knowledge(self)
        self.humans = HumanLoop(self, self.knowledge)
        self.mutators = Mutators(self)
        self.candidates = Candidates(self, self.mutators, self.knowledge, self.humans)
        self.evaluations = Evaluations(self, self.humans)

    def select(self, gen: int, children: list[str], started_at: float) -> GenerationRecord:
        """Generation ``gen``'s survivors among the previous population and ``children`` (the
        final version of each child, after repairs): the record to commit."""
        previous = self.store.generation(gen - 1)
        scored = self.knowledge.scored
        population = [scored(c) for c in self.humans.population_ids(gen - 1)]
        children_scored = [s for s in (scored(c) for c in children) if s.losses]
        chosen = select(population, children_scored, self.experiment.population,
                        self.experiment.keep, previous.noise, self.experiment.min_runs,
                        pinned=frozenset(self.humans.pinned(gen - 1)))
        new_pop = chosen.population
        return GenerationRecord(
            run_id=self.store.run_id, generation=gen, min_runs=self.experiment.min_runs,
            population=[Member(candidate_id=m.id, losses=m.losses, mfu=m.mfu) for m in new_pop],
            children=children, promoted=chosen.promoted, filled=chosen.filled,
            noise=previous.noise,
            # A promoted child is in both lists: each candidate once. A flagged child left out
            # of the population is no trade-off to show either.
            pareto=pareto(list({s.id: s for s in new_pop + [
                c for c in children_scored if not c.flagged]}.values()),
                          self.knowledge.seed_fitness(), previous.noise),
            wall_s=time.time() - started_at,
        )


class RunRef(BaseModel):
    """What a task needs to find its run: ids and settings, never live objects (a task may run
    in another process; the Prefect UI shows these as its parameters). ``sandbox`` and
    ``slots``, when given, stand in for the DARWIN_SANDBOX / DARWIN_SLOTS settings."""

    run_id: str
    storage_url: str
    experiment: Experiment
    sandbox: str | None = None
    slots: int | None = None


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(ref: RunRef) -> Engine:
    """The engine of a run in this process, built once from the run's ids and the DARWIN_*
    settings (the store's caches and the ledger are then shared by the process's tasks)."""
    key = ref.model_dump_json()
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = build_engine(ref.run_id, ref.storage_url, ref.experiment,
                                         sandbox=ref.sandbox, slots=ref.slots)
        return _ENGINES[key]


def build_engine(run_id: str, storage_url: str, experiment: Experiment, *,
                 sandbox: str | None = None, slots: int | None = None) -> Engine:
    """The engine for a run, from what a flow parameter can carry (ids, a URL, the settings);
    ``sandbox`` and ``slots`` (None: from the settings) name the backend and the slot count."""
    from darwin.sandbox import get_sandbox
    from darwin.settings import get_settings

    settings = get_settings()
    backend = get_sandbox(sandbox if sandbox is not None else settings.sandbox)
    return Engine(RunStore(storage_url, run_id), experiment, settings, backend, asked_slots=slots)
