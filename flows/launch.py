"""One run's lifecycle, whatever starts it: `darwin run` (a terminal), a deployment (a schedule,
the UI's Run button), and any later entry point. Each entry turns its own input into a `Start`,
and this module does the rest in one order:

    check the review policy, open (new) or find (resume / continue) the run, check the device,
    size the slots, choose the sandbox, make the mutator, create the run, claim it, reap what
    crashed runs left, start the watchdog, mark the dead orchestrator's flow runs crashed,
    evolve, release the claim, sum up and draw the report.

What stays with the entry point: how it prints (``say``), and what it wraps around the evolve
flow (``attend``: the terminal's live display, signal handlers and reviewer).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from darwin.engine import Experiment, ReviewPolicy, continued, make_experiment
from darwin.errors import SandboxError, StorageError, UserError

Say = Callable[[str], None]


@dataclass
class Start:
    """What to run. A new run: ``experiment`` (None: the defaults).
    An existing one: ``resume`` (its id); with ``more_generations`` it continues for exactly
    that many generations after its last committed one (a deployment's "evolve a bit more")."""

    experiment: Experiment | None = None  # its seed_program: the program to evolve
    resume: str | None = None
    more_generations: int | None = None
    sandbox: str | None = None  # a backend name; None: $DARWIN_SANDBOX or auto
    slots: int | None = None  # None: $DARWIN_SLOTS or what the machine holds
    review: ReviewPolicy = field(default_factory=ReviewPolicy)
    # With experiment.pool: the workers mount the store's folder too (else a folder is refused).
    shared_store: bool = False


@dataclass
class Launched:
    """A run that is ready to evolve, as the entry point's ``attend`` sees it."""

    run_id: str
    store: Any  # darwin.memory.store.RunStore
    experiment: Experiment
    resumed: bool
    slots: int
    sandbox: str
    claim: Any  # darwin.engine.runs.RunClaim | RemoteClaim
    storage_url: str


def launch_run(start: Start, say: Say,
           attend: Callable[[Launched], contextlib.AbstractContextManager] | None = None
           ) -> dict:
    """Run ``start`` to its end and return the run's summary (``report``: the page's path)."""
    run = open_run(start, say)
    try:
        last = _evolve(run, start.review, attend)
    finally:
        run.claim.release()  # on S3, another machine may resume at once
    from darwin.engine import run_summary
    from darwin.reports import write_run_report

    summary = run_summary(run.store, last)
    made = write_run_report(run.store, say)  # with the test split, which the last gen lacked
    summary["report"] = str(made.path) if made else None
    return summary


def open_run(start: Start, say: Say) -> Launched:
    """Everything before evolving: each refusal is one line, made before anything is created
    where it can be (a bad device, too many slots, no sandbox, no mutator)."""
    from darwin.engine import (
        claim_run,
        create_run,
        environment,
        open_for_resume,
        slot_count,
        watchdog,
    )
    from darwin.evaluation import check_device, get_budget, load_dataset, seed_program
    from darwin.mutation import make_mutator
    from darwin.sandbox import describe, get_sandbox
    from darwin.settings import get_settings

    settings = get_settings()
    storage_url = settings.storage_url
    opened = claim = None
    if start.resume:
        opened = open_for_resume(storage_url, start.resume)
        claim = claim_run(opened.store)  # a second resume of a live run stops here, in one line
    try:
        if opened is None:
            experiment = start.experiment or make_experiment()
        elif start.more_generations is None and (
                stopped := _stopped(opened.store)) is not None:
            raise UserError(stopped)
        elif start.more_generations is not None:
            experiment = continued(opened.experiment, opened.store.head(),
                                   opened.store.reviews(), start.more_generations,
                                   opened.run_id)
        else:
            experiment = opened.experiment
        if experiment.pool:  # the workers check their device; this machine trains nothing
            from darwin.flows.child import check_pool

            check_pool(experiment.pool, storage_url, start.shared_store)
        else:
            check_device(experiment.device)
        budget = get_budget(experiment.budget)
        slots = slot_count(experiment.device, budget.threads, budget.memory_mb,
                           start.slots if start.slots is not None else settings.slots)
        load_dataset()
        chosen = start.sandbox or settings.sandbox
        box = get_sandbox(chosen)  # refuses, in one line, where nothing isolates
        for line in describe(box, chosen):
            say(line)
        mutator = make_mutator(experiment.mutator, settings.llm)
        if not mutator.uses_llm:
            what = ("Optuna's sampler on the seed's constants" if mutator.edits_seed
                    else "the offline catalogue")
            say(f"mutator: {mutator.name} ({what}, no LLM)"
                + (": no OPENAI_API_KEY is set" if experiment.mutator == "auto" else ""))
        if opened is None:
            source = (Path(experiment.seed_program) if experiment.seed_program
                      else seed_program())
            opened = create_run(storage_url, experiment, source, environment(box.name, experiment.device))
            claim = claim_run(opened.store)
    except BaseException:
        if claim is not None:
            claim.release()
        raise
    from darwin.engine import reap_leftovers

    reaped = {what: n for what, n in reap_leftovers().items() if n}
    if reaped:
        say("removed what a crashed run left: "
            + ", ".join(f"{n} {what}" for what, n in reaped.items()))
    watchdog.start()  # if this process dies, whatever it started dies with it
    head = opened.store.head()
    state = ("new" if not opened.resumed else "resumed: nothing committed yet" if head is None
             else f"resumed after generation {head}")
    if start.more_generations is not None and opened.resumed:
        state += f", continued for {start.more_generations} more, up to {experiment.generations}"
    say(f"run {opened.run_id} ({state}); store {storage_url}; resume with: "
        f"darwin run --resume {opened.run_id}")
    if experiment.pool:
        from darwin.flows.child import deploy_child

        say(f"children train on the workers of pool {experiment.pool} (deployment "
            f"{deploy_child(experiment.pool)}); start one on each machine with: darwin worker "
            f"--pool {experiment.pool}")
    if opened.resumed:
        from darwin.flows.admin import mark_stale_runs_crashed

        mark_stale_runs_crashed(opened.run_id)
    return Launched(opened.run_id, opened.store, experiment, opened.resumed, slots, box.name,
                    claim, storage_url)


def _stopped(store) -> str | None:
    """The one line refusing to resume a run a review gate stopped (a person's word: resuming
    would do nothing), or None."""
    from darwin.engine import run_status

    status = run_status(store, alive=False)  # this process holds the claim now
    if status.state != "stopped":
        return None
    from darwin.settings import get_settings

    best = store.generation(status.head).population[0].candidate_id
    record = store.candidate(best)
    if record is None:
        return f"run {store.run_id} is {status.line}: nothing to resume"
    path = get_settings().home / "seeds" / f"{store.run_id}-{best}.py"  # as a budget approval does
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(store.code(record.code_sha))
    return (f"run {store.run_id} is {status.line}: nothing to resume; to evolve its best "
            f"further, start a new run from it: darwin run --seed-program {path}")


def _evolve(run: Launched, review: ReviewPolicy, attend) -> Any:
    from darwin.flows.admin import run_context
    from darwin.flows.evolve import evolve

    try:
        with (attend(run) if attend else contextlib.nullcontext()), \
                run_context(run.run_id, run.experiment.budget, run.storage_url):
            return evolve(run.experiment, run.run_id, run.storage_url, review=review,
                          sandbox=run.sandbox, slots=run.slots)
    except BaseException as e:
        if run.experiment.pool:  # Prefect does not cascade a cancellation to subflows
            from darwin.tasks import pool as on_pool

            on_pool.cancel_children()
        if isinstance(e, (StorageError, SandboxError)):  # what was committed stays committed
            raise type(e)(f"{e}; continue with: darwin run --resume {run.run_id}") from None
        raise
