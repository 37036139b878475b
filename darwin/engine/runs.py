"""Starting, resuming and summing up a run, free of Prefect and of printing: the run's one
lifecycle (flows/launch.py, whatever entry point started it) calls these around the evolve flow."""

from __future__ import annotations

import fcntl
import math
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from darwin.engine.experiment import Experiment, make_experiment
from darwin.engine.ids import SEED_ID
from darwin.engine.status import dead_here, run_status
from darwin.errors import UserError
from darwin.memory import GenerationRecord, RunStore
from darwin.mutation import tunable, tunes_seed


@dataclass
class OpenedRun:
    run_id: str
    store: RunStore
    experiment: Experiment
    resumed: bool


def new_run_id(budget: str) -> str:
    """Sortable by start time, readable, and unique across machines starting at once."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{budget}-{uuid.uuid4().hex[:4]}"


def environment(sandbox: str, device: str) -> dict:
    """Where a run started (its report shows it): package versions, machine, device, sandbox
    backend, the corpus' hash."""
    import platform
    from importlib.metadata import PackageNotFoundError, version

    from darwin.evaluation import load_dataset

    packages = {}
    for name in ("darwin-evo", "torch", "numpy", "prefect", "openai", "pydantic", "s3fs"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = None
    if device == "cuda":
        import torch

        device = f"cuda ({torch.cuda.get_device_name()})"
    return {"device": device, "python": platform.python_version(), "platform": platform.platform(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "host": socket.gethostname(),
            "packages": packages, "sandbox": sandbox, "dataset_sha256": load_dataset().sha256,
            "llm": llm_endpoint()}


def llm_endpoint() -> dict:
    """The LLM a run is set to use, for its report: the model and the server (without any
    user:password or query an URL might carry); never the key."""
    from urllib.parse import urlsplit, urlunsplit

    from darwin.settings import get_settings

    llm = get_settings().llm
    url = llm.url()
    if url:
        parts = urlsplit(url)
        url = urlunsplit((parts.scheme, parts.hostname or "" if parts.port is None
                          else f"{parts.hostname}:{parts.port}", parts.path, "", ""))
    return {"model": llm.model, "endpoint": url}


def create_run(storage_url: str, experiment: Experiment, seed_program: Path,
               env: dict | None = None) -> OpenedRun:
    """A new run in the store: its id, the seed program's code and the run's metadata."""
    from darwin import __version__

    if not seed_program.is_file():
        raise UserError(f"--seed-program {seed_program} not found")
    source = seed_program.read_text()
    if tunes_seed(experiment.mutator) and not tunable(source, experiment.budget):
        raise UserError(
            f"--mutator {experiment.mutator}: {seed_program.name} exposes none of the constants a "
            "tuned search sets (learning_rate, min_lr, max_warmup_iters, dropout, weight_decay, "
            "grad_clip as `name = number` lines, `beta1, beta2 = …`, or a SHAPES row for the "
            "budget; see seed/train.py); give such a program or another --mutator")
    run_id = new_run_id(experiment.budget)
    store = RunStore(storage_url, run_id)
    sha = store.put_code(source)
    store.create({"run_id": run_id, "experiment": experiment.model_dump(mode="json"),
                  "seed_code_sha": sha, "created_at": time.time(), "darwin": __version__,
                  "environment": env or {}})
    return OpenedRun(run_id, store, experiment, resumed=False)


def open_for_resume(storage_url: str, run_id: str) -> OpenedRun:
    """An existing run, with the experiment it was started with."""
    store = RunStore(storage_url, run_id)
    if not store.exists():
        raise UserError(f"unknown run {run_id!r} in {storage_url}: `darwin runs` lists the runs")
    return OpenedRun(run_id, store, make_experiment(**store.meta()["experiment"]), resumed=True)


def reap_leftovers() -> dict[str, int]:
    """Remove what runs that died (kill -9) left on this machine: their sandboxes' cgroups,
    output mounts and Docker containers. Returns how many of each were removed."""
    from darwin.sandbox import reap_stale_cgroups, reap_stale_output_mounts

    found = {"cgroups": reap_stale_cgroups(), "output mounts": reap_stale_output_mounts(),
             "containers": 0}
    try:
        from darwin.sandbox import connect, reap_stale_containers

        client = connect()
    except Exception:  # noqa: BLE001 - no Docker here: nothing of it to reap
        return found
    try:
        found["containers"] = reap_stale_containers(client)
    finally:
        client.close()
    return found


class RunBusy(UserError):
    pass


@dataclass
class RunClaim:
    """This process's exclusive hold on a run: a lock the kernel releases when the process
    dies, however it dies (kill -9 included), so a crash never leaves a run claimed."""

    path: Path
    fd: int

    def release(self) -> None:
        os.close(self.fd)


LEASE_S = 90.0  # a remote claim outlives its holder by at most this long (kill -9, power cut)


class RemoteClaim:
    """A claim on a run in a shared store (S3): a lease in the store, renewed by a thread
    while this process lives. Machines cannot see each other's processes, so a holder that
    died is known by its lease running out, or at once when it ran on this host."""

    def __init__(self, store: RunStore, owner: str):
        import threading

        self.store, self.owner = store, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, daemon=True, name="darwin-lease")
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 3):
            try:
                self.store.take_lease(self.owner, LEASE_S)
            except Exception:  # noqa: BLE001 - a missed renewal is retried; commits stay safe
                pass

    def release(self) -> None:
        """Best effort and bounded (at exit, the store may be the thing that is down): a lease
        not dropped runs out by itself."""
        import threading

        self._stop.set()

        def drop() -> None:
            try:
                self.store.drop_lease(self.owner)
            except Exception:  # noqa: BLE001
                pass

        dropper = threading.Thread(target=drop, daemon=True)
        dropper.start()
        dropper.join(timeout=5)


def _claim_remote(store: RunStore) -> RemoteClaim:
    import atexit

    from darwin.memory import LeaseHeld

    owner = f"pid {os.getpid()} on {socket.gethostname()}"
    try:
        store.take_lease(owner, LEASE_S)
    except LeaseHeld as e:
        held = (store.pointer("LEASE") or {}).get("owner", "")
        if not dead_here(held):
            raise RunBusy(str(e)) from None
        store.drop_lease(held)  # its holder died on this host: no need to wait the lease out
        try:
            store.take_lease(owner, LEASE_S)
        except LeaseHeld as again:  # another resume on this host was quicker
            raise RunBusy(str(again)) from None
    claim = RemoteClaim(store, owner)
    atexit.register(claim.release)
    return claim


def claim_run(store: RunStore) -> RunClaim | RemoteClaim:
    """Refuse to work on a run another live process works on (a second ``--resume``)."""
    if not store.local:
        return _claim_remote(store)
    path = Path(store.root) / "run.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise RunBusy(f"run {store.run_id} is already running ({owner}): wait for it to end, "
                      "or stop it first (Ctrl-C or kill), then resume") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return RunClaim(path, fd)


def run_summary(store: RunStore, last: GenerationRecord) -> dict:
    """The run's result: the best against the seed and its noise band, and the test split. The
    best is the first member measured on ``min_runs`` seeds; "beyond the noise" is said only of
    such a member (a record from before min_runs was recorded: the run's own setting)."""
    seed_gen = store.generation(0)
    seed_loss = seed_gen.population[0].fitness
    min_runs = max(last.min_runs, run_min_runs(store))
    measured_best = last.best(min_runs)
    best = measured_best or last.population[0]
    measured = measured_best is not None
    beyond = measured and seed_loss - best.fitness > seed_gen.noise
    if measured:
        verdict = "beyond the noise" if beyond else "within the noise"
    else:
        verdict = (f"measured on {len(best.losses)} of the {min_runs} seeds a claim needs: "
                   "not beyond the noise")
    finals = {cid: store.final(cid) or {} for cid in {best.candidate_id, SEED_ID}}
    return {
        "run_id": store.run_id,
        "generations": last.generation,
        "seed_val_loss": seed_loss,
        "noise": seed_gen.noise,
        "best": best.candidate_id,
        "best_val_loss": best.fitness,
        "best_runs": len(best.losses),
        "min_runs": min_runs,
        "best_measured": measured,
        "improvement": seed_loss - best.fitness,
        "perplexity_change": math.exp(min(best.fitness - seed_loss, 709.0)) - 1,
        "beyond_noise": beyond,
        "verdict": verdict,
        "test_loss_best": finals[best.candidate_id].get("test_loss"),
        "test_loss_seed": finals[SEED_ID].get("test_loss"),
        "population": [m.model_dump() for m in last.population],
        "llm": _llm_summary(store),
        "status": _status(store),
        "reviews": [{"generation": r.generation, "requests": len(r.requests), "gate": r.gate,
                     "via": r.answer.via if r.answer else None,
                     "defaults_applied": r.defaults_applied} for r in store.reviews()],
    }


def _status(store: RunStore) -> dict:
    """Where the run stands once its process lets go (finished, stopped by a review, or
    resumable): the summary is made after the claim is released."""
    return run_status(store, alive=False).model_dump()


def run_min_runs(store: RunStore) -> int:
    """The runs a claim needs in this run (its experiment's min_runs)."""
    return int(store.meta().get("experiment", {}).get("min_runs", 1))


def _llm_summary(store: RunStore) -> dict | None:
    """The run's LLM traffic (calls, tokens, cost, failures); None when it made no call."""
    from darwin.llm import StoredLedger
    from darwin.settings import get_settings

    if store.pointer(StoredLedger.NAME) is None:
        return None
    return StoredLedger(store, get_settings().llm.max_cost_usd).summary()
