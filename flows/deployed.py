"""The run as a deployment starts it (deployments/prefect.yaml, `darwin serve`): a new run from
an experiment file, or a named run continued for N more generations ("evolve a bit more every
night"). Whatever starts it (a schedule, the UI's Run button, `prefect deployment run`), it
goes through the same lifecycle as `darwin run` (flows/launch.py), without a terminal: reviews
are answered in the UI or with `darwin review`, and nobody answering applies the defaults after
the review timeout.
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger
from prefect.states import Failed

from darwin.engine import make_experiment, read_experiment
from darwin.errors import UserError


def _run_name() -> str:
    from prefect.runtime import flow_run

    target = flow_run.parameters.get("continue_run")
    return f"continue-{target}" if target else "new-run"


@flow(name="darwin", flow_run_name=_run_name, log_prints=True)
def darwin_run(experiment_file: str | None = None, continue_run: str | None = None,
               more_generations: int = 1, review_every: int = 0,
               review_timeout: float = 900.0, shared_store: bool = False):
    """Start a run from ``experiment_file`` (defaults when None), or continue ``continue_run``
    for ``more_generations`` more generations; returns the run's summary. A bad setting fails
    the flow run with one line naming the parameter (its state message in the UI).
    ``shared_store``: with a pool (the experiment's ``pool``) and a store that is a folder,
    every worker mounts that same folder."""
    from darwin.engine import make_policy
    from darwin.flows.launch import Start, launch_run

    try:
        policy = make_policy(True, review_every, review_timeout)
        if continue_run:
            start = Start(resume=continue_run, more_generations=more_generations,
                          review=policy, shared_store=shared_store)
        else:
            experiment = read_experiment(experiment_file) if experiment_file else \
                make_experiment()
            start = Start(experiment=experiment, review=policy, shared_store=shared_store)
        summary = launch_run(start, print)
    except UserError as e:
        words = _as_parameter(str(e))
        get_run_logger().error(f"darwin: error: {words}")
        return Failed(message=words)
    print(f"run {summary['run_id']}: best {summary['best']} val loss "
          f"{summary['best_val_loss']:.4f}; report {summary['report']}")
    return summary


def _as_parameter(message: str) -> str:
    """`darwin run`'s words for a setting (``invalid --review-timeout``) in this flow's
    (``invalid review_timeout``)."""
    return re.sub(r"^invalid --([a-z-]+)", lambda m: "invalid " + m.group(1).replace("-", "_"),
                  message)
