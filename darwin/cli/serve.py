"""`darwin serve`: the simplest scheduled DARWIN, a process that holds a deployment of the run
flow and starts its runs (no work pool, no worker; deployments/prefect.yaml is the way with them).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from darwin.cli.app import app, err


def check_cron(cron: str) -> str:
    """The cron string as Prefect's scheduler reads it, or a one-line error."""
    from pydantic import ValidationError

    from darwin.errors import UserError

    try:
        from prefect.client.schemas.schedules import CronSchedule

        CronSchedule(cron=cron)
    except ValidationError:
        raise UserError(f"invalid --cron {cron!r}: give five fields (minute hour day month "
                        "weekday), for example '0 2 * * *' for every night at 02:00") from None
    return cron


@app.command
def serve(*, cron: str | None = None,
          experiment: Path | None = None,
          continue_run: Annotated[str | None, Parameter(name="--continue")] = None,
          more_generations: int = 1,
          name: str = "serve",
          review_every: int = 0,
          review_timeout: float = 900.0) -> None:
    """Serve a deployment of the run flow from this process: each scheduled (or triggered) run
    starts a new DARWIN run from --experiment, or continues --continue RUN for
    --more-generations more generations. Needs a Prefect server (PREFECT_API_URL); Ctrl-C stops
    serving (the schedule stays, runs wait for the next serve).

    Parameters
    ----------
    cron
        When to start a run, for example '0 2 * * *' (UTC); without it, runs start only when
        triggered (UI, `prefect deployment run darwin/NAME`).
    experiment
        A JSON file of `darwin run` settings (deployments/experiments/*.json).
    continue_run
        Continue this run instead of starting new ones.
    more_generations
        Generations each continuation adds.
    name
        The deployment's name (darwin/NAME).
    review_every
        A review gate every N generations; 0: none.
    review_timeout
        Seconds a review waits before its defaults apply.
    """
    from darwin.engine import read_experiment
    from darwin.errors import UserError
    from darwin.flows import darwin_run
    from darwin.sandbox import get_sandbox
    from darwin.settings import get_settings

    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("darwin serve needs a Prefect server: start one with `prefect server "
                        "start` and set PREFECT_API_URL=http://127.0.0.1:4200/api")
    if cron is not None:
        check_cron(cron)
    if experiment is not None and continue_run:
        raise UserError("give --experiment (new runs) or --continue RUN, not both")
    if more_generations < 1:
        raise UserError(f"invalid --more-generations: {more_generations}; give 1 or more")
    parameters: dict = {"review_every": review_every, "review_timeout": review_timeout}
    if continue_run:
        parameters |= {"continue_run": continue_run, "more_generations": more_generations}
    elif experiment is not None:
        read_experiment(experiment)  # a bad file fails now, not at 2 a.m.
        parameters["experiment_file"] = str(experiment.resolve())
    box = get_sandbox(get_settings().sandbox)  # a server without a sandbox: say so now
    err.print(f"serving darwin/{name}" + (f" on cron '{cron}' (UTC)" if cron else "")
              + f", sandbox {box.name}; start a run now with: prefect deployment run "
              f"darwin/{name}; Ctrl-C stops serving")
    url = get_settings().storage_url
    before = _states(url)
    try:
        darwin_run.serve(name=name, cron=cron, parameters=parameters, pause_on_shutdown=False,
                         limit=1, print_starting_message=False)
    except KeyboardInterrupt:
        pass
    # Ctrl-C reaches the run in flight too (the terminal signals the whole process group): it
    # stops as a crashed `darwin run` does, resumably. Say which, and how.
    cut = _cut_short(url, before, wait_s=15)
    err.print("stopped serving (the schedule stays; runs wait for the next darwin serve)"
              + "".join(f"; run {r} was cut short: continue it with darwin run --resume {r}"
                        for r in sorted(cut)), soft_wrap=True)
    # Prefect's runner may leave threads behind once interrupted (its event loop, a poll):
    # the interpreter would wait for them at exit. Everything is said and stored: end now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _states(storage_url: str, only: set[str] | None = None) -> dict[str, str]:
    """Each run's status (of ``only``, when given); none when the store cannot be read."""
    from darwin.engine import run_status
    from darwin.memory import RunStore, list_runs

    try:
        return {r: run_status(RunStore(storage_url, r)).state for r in list_runs(storage_url)
                if only is None or r in only}
    except Exception:  # noqa: BLE001 - a store that cannot be read: nothing to say
        return {}


def _cut_short(storage_url: str, before: dict[str, str], wait_s: float) -> set[str]:
    """The runs this serving started or moved (new, or not in the state they were in when it
    began; runs other processes were already working on are not waited for) that no process
    works on and that are not done, once they have had ``wait_s`` seconds to stop."""
    import time

    deadline = time.monotonic() + wait_s
    ours = {r for r, s in _states(storage_url).items() if before.get(r) != s}
    while True:
        states = _states(storage_url, ours)
        if time.monotonic() >= deadline or not any(
                s in ("running", "paused") for s in states.values()):
            return {r for r, s in states.items() if s == "crashed"}
        time.sleep(0.5)


@app.command
def notify(block: str) -> None:
    """Tell a person whenever a run pauses for a review: one Prefect automation (named "darwin:
    a review waits") that sends the notification block BLOCK a message naming the run, its
    page in the UI and the command that answers. Run it again to point it at another block.

    Parameters
    ----------
    block
        A notification block of the Prefect server, as TYPE/NAME (slack-webhook/reviews,
        custom-webhook/pager; `prefect block ls` lists them).
    """
    from darwin.errors import UserError
    from darwin.flows import notify_on_reviews, quiet_prefect

    if not os.environ.get("PREFECT_API_URL"):
        raise UserError("darwin notify needs a Prefect server (automations run there): set "
                        "PREFECT_API_URL=http://127.0.0.1:4200/api")
    quiet_prefect()
    made = notify_on_reviews(block)
    err.print(f"automation {made} ('darwin: a review waits') sends {block} a message whenever "
              "a run pauses for a review; see it in the UI under Automations")
