"""The run as a deployment starts it (deployments/prefect.yaml, `darwin serve`): a new run from
an experiment file, or a named run continued for N more generations ("evolve a bit more every
night"). Whatever starts it (a schedule, the UI's Run button, `prefect deployment run`), it
does what `darwin run` does, without a terminal: reviews are answered in the UI or with
`darwin review`, and nobody answering applies the defaults after the review timeout.
"""

from __future__ import annotations

import json
from pathlib import Path

from prefect import flow

from darwin.engine.experiment import Experiment, make_experiment
from darwin.engine.reviews import ReviewPolicy
from darwin.errors import UserError


def read_experiment(path: str | Path) -> Experiment:
    """An experiment file: JSON with the `darwin run` settings (budget, generations, population,
    keep, children, mutator, seeds, seed, ...); what is left out takes its default."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"experiment file {path} not found (it is read from the checkout the "
                        "deployment's pull step moved to)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"experiment file {path} is not JSON: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"experiment file {path}: give a JSON object of settings, "
                        'for example {"budget": "tiny", "generations": 1}')
    try:
        return make_experiment(**values)
    except UserError as e:  # it names the `darwin run` flag; here it is the file's field
        raise UserError(f"experiment file {path}: {str(e).replace('--', '', 1)}") from None


def continued(experiment: Experiment, head: int | None, reviews: list, more: int,
              run_id: str) -> Experiment:
    """``experiment`` with exactly ``more`` generations after the last committed one (a run
    with nothing committed resumes as planned); earlier gates no longer set its length. A gate
    that stopped the run is a person's word: a schedule does not overrule it."""
    if more < 1:
        raise UserError(f"invalid more_generations: {more}; give 1 or more")
    if head is None:
        return experiment
    answered = [r for r in reviews if r.answer is not None and r.gate and not r.defaults_applied
                and r.generation > (experiment.continued_after or -1)]
    last = max(answered, key=lambda r: r.generation, default=None)
    if last is not None and (last.answer.stop or last.answer.remaining == 0):
        raise UserError(f"run {run_id} was stopped by its review gate after generation "
                        f"{last.generation} ({last.answer.via}): a schedule does not overrule "
                        "it; start a new run from its best instead")
    return experiment.model_copy(update={"generations": head + more, "continued_after": head})


def _run_name() -> str:
    from prefect.runtime import flow_run

    target = flow_run.parameters.get("continue_run")
    return f"continue-{target}" if target else "new-run"


@flow(name="darwin", flow_run_name=_run_name, log_prints=True)
def darwin_run(experiment_file: str | None = None, continue_run: str | None = None,
               more_generations: int = 1, review_every: int = 0,
               review_timeout: float = 900.0) -> dict:
    """Start a run from ``experiment_file`` (defaults when None), or continue ``continue_run``
    for ``more_generations`` more generations; returns the run's summary."""
    from darwin.engine import watchdog
    from darwin.engine.runs import (
        claim_run,
        create_run,
        environment,
        open_for_resume,
        reap_leftovers,
        run_summary,
    )
    from darwin.evaluation.hardware import check_device
    from darwin.evaluation.training import seed_program
    from darwin.flows.admin import mark_stale_runs_crashed, run_context
    from darwin.flows.evolve import evolve
    from darwin.reports.page import write_run_report
    from darwin.sandbox import get_sandbox
    from darwin.settings import get_settings

    settings = get_settings()
    url = settings.store_url
    policy = ReviewPolicy(mode="ask", every=review_every, timeout_s=review_timeout)
    box = get_sandbox(settings.sandbox)  # refuses, in one line, where nothing isolates
    if continue_run:
        opened = open_for_resume(url, continue_run)
        claim = claim_run(opened.store)
        experiment = continued(opened.experiment, opened.store.head(), opened.store.reviews(),
                               more_generations, opened.run_id)
        mark_stale_runs_crashed(opened.run_id)
    else:
        experiment = read_experiment(experiment_file) if experiment_file else make_experiment()
        check_device(experiment.device)
        source = Path(experiment.seed_program) if experiment.seed_program else seed_program()
        opened = create_run(url, experiment, source, environment(box.name, experiment.device))
        claim = claim_run(opened.store)
    run_id, store = opened.run_id, opened.store
    print(f"run {run_id}: " + (f"continued for {more_generations} more generation(s), up to "
                               f"{experiment.generations}" if continue_run else "new")
          + f"; store {url}; sandbox {box.name}")
    reap_leftovers()
    watchdog.start()  # if this process dies, what it started dies with it
    try:
        with run_context(run_id, experiment.budget, url):
            last = evolve(experiment, run_id, url, review=policy)
    finally:
        claim.release()
    summary = run_summary(store, last)
    made = write_run_report(store, print)
    summary["report"] = str(made.path) if made else None
    print(f"run {run_id}: best {summary['best']} val loss {summary['best_val_loss']:.4f}; "
          f"report {summary['report']}")
    return summary
