"""One child's evaluation as a flow of its own, deployed to a work pool (``darwin run --pool``):
a worker on some machine runs it as a fresh process, which trains (candidate, seed) in that
machine's sandbox, scores it there with the same trusted scorer, and writes the evaluation
record (with the model and log a later step reads) to the run's store.

Its Prefect result is a pointer to that record, never the record itself: the store is the one
place both machines read, and Prefect's result storage is not needed across machines.

While it works it beats in the store (darwin.engine.pool_watch): the orchestrator takes a
child whose beat stands still for a lost one and tries it once more, on any worker.
"""

from __future__ import annotations

import os
import socket

from prefect import flow

from darwin.engine import Experiment

CHILD_FLOW = "evaluate-child"


@flow(name=CHILD_FLOW, flow_run_name="{candidate}-s{seed}-a{attempt}", log_prints=True)
def evaluate_child(run_id: str, storage_url: str, experiment: Experiment, candidate: str,
                   seed: int, attempt: int = 1, beat_s: float = 15.0) -> dict:
    """Train and score ``candidate`` on seed ``seed`` here; returns where its record is."""
    from prefect.runtime import flow_run

    from darwin.engine import Heartbeat, MachineSlot, RunRef, engine_for, watchdog
    from darwin.evaluation import check_device

    watchdog.start()  # if this process is killed, its sandboxes die with it
    engine = engine_for(RunRef(run_id=run_id, storage_url=storage_url, experiment=experiment))
    store, evaluations = engine.store, engine.evaluations
    record = store.evaluation(candidate, seed)
    if record is None:
        check_device(experiment.device)  # a worker without the run's device fails, not the child
        info = {"host": socket.gethostname(), "pid": os.getpid(), "attempt": attempt,
                "flow_run": str(flow_run.id or "")}
        evaluations.attempts[(candidate, seed)] = attempt
        with Heartbeat(store, candidate, seed, info, beat_s), \
                MachineSlot(engine.settings.home / "slots", experiment.device,
                            engine.budget.threads, engine.slots) as cpus:
            print(f"{candidate} seed {seed} (attempt {attempt}) trains on "
                  f"{socket.gethostname()} with {engine.sandbox.name}, cores {cpus}")
            evaluations.train(candidate, seed, cpus=cpus)
            record = evaluations.score(candidate, seed, cpus=cpus)
    print(f"{candidate} seed {seed}: {record.status}"
          + (f", val loss {record.val_loss:.4f}" if record.val_loss is not None else ""))
    return {"run_id": run_id, "record": f"evaluations/{candidate}-s{seed}.json",
            "status": record.status, "machine": record.machine}


def check_pool(pool: str, storage_url: str, shared_store: bool) -> None:
    """Refuse, in one line, a pool the workers could not serve: no Prefect server they reach
    (the embedded one lives in this process), or a store that is a folder on this machine."""
    from prefect.settings import PREFECT_API_URL

    from darwin.errors import UserError

    if not PREFECT_API_URL.value():
        raise UserError(f"--pool {pool}: the workers need a Prefect server they can reach, and "
                        "this run would use an embedded one; start one (prefect server start "
                        "--host 0.0.0.0) and set PREFECT_API_URL=http://HOST:4200/api here and "
                        "on every worker")
    if "://" not in storage_url or storage_url.startswith("file://"):
        if not shared_store:
            raise UserError(
                f"--pool {pool}: the store {storage_url} is a folder on this machine, which "
                "the workers on other machines cannot reach; use a bucket (--storage-url "
                "s3://BUCKET/runs) or, if every worker mounts this same folder, say so with "
                "--shared-store")


def deploy_child(pool: str) -> str:
    """Create the process work pool when it is missing and register (or update) the child's
    deployment on it; returns the deployment's name. Its entrypoint is the installed module
    (darwin.flows.child), so a worker finds it wherever DARWIN is installed, with no path."""
    from prefect.types.entrypoint import EntrypointType

    from darwin.tasks import pool as on_pool

    ensure_work_pool(pool)
    evaluate_child.to_deployment(
        name=pool, work_pool_name=pool, entrypoint_type=EntrypointType.MODULE_PATH,
        tags=["darwin"],
        description="One DARWIN child: trained in the worker's sandbox, scored by the trusted "
                    "scorer there, its record written to the run's store.").apply()
    return on_pool.deployment_name(pool)


def ensure_work_pool(pool: str) -> bool:
    """The process work pool ``pool``: created when missing (True), else left as it is."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
            return False
        except ObjectNotFound:
            pass
        try:
            client.create_work_pool(WorkPoolCreate(
                name=pool, type="process",
                base_job_template=ProcessWorker.get_default_base_job_template()))
        except ObjectAlreadyExists:  # another machine made it at the same moment
            return False
    return True
