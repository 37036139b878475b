"""`darwin worker`: this machine trains the children of runs started with `darwin run --pool`.

It checks what a child needs here (the Prefect server, a sandbox that isolates, the device, the
store when one is named), says in one line what is wrong, creates the pool when it is missing,
then becomes a plain Prefect process worker for it, limited to this machine's slots. `prefect
worker start --pool NAME` works as well (deployments/README.md, "Many machines").
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
from pathlib import Path

from darwin.cli.app import app, say
from darwin.errors import UserError

# Workers poll the server for children; Prefect's default (10 s) would add 5 s to each child.
DEFAULT_POLL_S = "2"


@app.command
def worker(*, pool: str, slots: int | None = None, device: str = "cpu",
           sandbox: str | None = None, storage_url: str | None = None,
           check: bool = False) -> None:
    """Train the children of `darwin run --pool POOL` on this machine, until Ctrl-C.

    Parameters
    ----------
    pool
        The Prefect work pool (created when missing).
    slots
        Children trained at once here (default: one per core on CPU, 4 on a GPU, fewer when
        memory is short for the `cpu` budget).
    device
        cpu | cuda: what this machine trains on (a run on the other device fails here, in one
        line, and is tried on another worker).
    sandbox
        auto | docker | local (default: $DARWIN_SANDBOX or auto).
    storage_url
        A store to check from here (default: $DARWIN_STORAGE_URL when it is a bucket); each
        child brings its own run's store.
    check
        Check and say what this worker would be, then exit without starting it.
    """
    from darwin.flows import quiet_prefect

    quiet_prefect()
    from darwin.engine import make_experiment, slot_count
    from darwin.evaluation import check_device, get_budget
    from darwin.sandbox import describe, get_sandbox
    from darwin.settings import get_settings

    make_experiment(pool=pool, device=device)  # the same one-line refusals as darwin run
    settings = get_settings()
    api = _check_api()
    check_device(device)
    chosen = sandbox or settings.sandbox
    box = get_sandbox(chosen)  # refuses, in one line, where nothing isolates
    for line in describe(box, chosen):
        say(line)
    budget = get_budget("cpu")
    n = slot_count(device, budget.threads, budget.memory_mb,
                   slots if slots is not None else settings.slots)
    _check_store(storage_url or settings.storage_url, named=storage_url is not None)
    from darwin.flows import ensure_work_pool

    created = ensure_work_pool(pool)
    say(f"worker for pool {pool}{' (created)' if created else ''} on {socket.gethostname()}: "
        f"{n} slot(s) on {device}, sandbox {box.name}, DARWIN_HOME {settings.home}, "
        f"server {api}")
    if check:
        return
    env = {**os.environ, "DARWIN_SLOTS": str(n), "DARWIN_SANDBOX": box.name}
    env.setdefault("PREFECT_WORKER_QUERY_SECONDS", DEFAULT_POLL_S)
    prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
    argv = [prefect, "worker", "start", "--pool", pool, "--type", "process", "--limit", str(n),
            "--name", f"{socket.gethostname()}-{os.getpid()}"]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(argv[0], argv, env)  # the worker is Prefect's own, as if started by hand


def _check_api() -> str:
    """The Prefect server's URL, once it answers; else one line."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        raise UserError("PREFECT_API_URL is not set: a worker needs the Prefect server the runs "
                        "use; set PREFECT_API_URL=http://HOST:4200/api (the server's machine "
                        "starts one with: prefect server start --host 0.0.0.0)")
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise UserError(f"the Prefect server at {url} does not answer ({problem}); start it, or "
                        "fix PREFECT_API_URL")
    return url


def _check_store(url: str, named: bool) -> None:
    """A bucket is listed from here (credentials, endpoint); a folder is only mentioned: each
    child brings its run's store, which must be reachable from this machine."""
    if "://" not in url or url.startswith("file://"):
        if named:
            from darwin.memory import list_runs

            list_runs(url)
        else:
            say("store: each child brings its run's store; a run with --pool uses a bucket "
                "(or a folder every worker mounts) that this machine must reach")
        return
    from darwin.memory import list_runs

    try:
        runs = list_runs(url)
    except Exception as e:  # noqa: BLE001 - any failure here is the same one line
        raise UserError(f"the store {url} cannot be read from this worker ({e}); check "
                        "AWS_ENDPOINT_URL and the AWS_* credentials here") from None
    say(f"store {url}: reachable ({len(runs)} run(s))")
