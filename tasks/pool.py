"""Children trained by the workers of a Prefect work pool (``darwin run --pool``).

Each (candidate, seed) is submitted with ``run_deployment`` as a subflow of the task that waits
for it (so the UI shows, under its generation, which worker ran which child), with an
idempotency key per attempt: a resumed orchestrator submitting it again finds the same flow run
instead of training the child twice. Its result is read from the run's store, never through
Prefect's result storage.

One watcher per run and process follows every child in flight with three requests per poll,
however many there are: the flow runs' states (one filtered read), the store's evaluations and
heartbeats (one listing each). A child whose heartbeat stands still is lost with its worker:
recorded as an infrastructure failure in the store (lost/), its flow run marked Crashed, and
tried once more on any worker; lost twice, the generation fails before anything is committed
and the run resumes from there.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from darwin.engine import ChildWatch, RunRef, beat_interval, engine_for, idempotency_key
from darwin.errors import DarwinError, UserError
from darwin.memory import EvaluationRecord

CHILD_FLOW = "evaluate-child"
CHILD_TAG = "darwin-child"  # the flow runs of children (a resumed run leaves them running)
MAX_LOSSES = 2  # a child lost with its worker is tried once more; lost again, the run stops
POLL_S = 1.0


class WorkerLost(DarwinError):
    """A child was lost with its worker on every attempt: the machines' fault, not the
    child's; nothing of the generation is committed and the run can be resumed."""

    exit_code = 6


def deployment_name(pool: str) -> str:
    return f"{CHILD_FLOW}/{pool}"


@dataclass
class _Child:
    flow_run: UUID
    cid: str
    seed: int
    attempt: int
    watch: ChildWatch
    done: threading.Event = field(default_factory=threading.Event)
    verdict: object = None
    state: str = "SCHEDULED"


class PoolWatcher:
    """Follows this process's children in flight on one run (see the module's docstring)."""

    def __init__(self, store, pool: str, lost_after_s: float, wait_s: float, start_s: float):
        self.store, self.pool = store, pool
        self.lost_after_s, self.wait_s, self.start_s = lost_after_s, wait_s, start_s
        self._children: dict[UUID, _Child] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def wait(self, flow_run: UUID, cid: str, seed: int, attempt: int):
        child = _Child(flow_run, cid, seed, attempt, ChildWatch(
            time.monotonic(), self.lost_after_s, self.wait_s, self.start_s))
        with self._lock:
            self._children[flow_run] = child
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, daemon=True,
                                                name=f"pool-watch-{self.store.run_id}")
                self._thread.start()
        try:
            child.done.wait()
            return child.verdict
        finally:
            with self._lock:
                self._children.pop(flow_run, None)

    def _loop(self) -> None:
        while True:
            time.sleep(POLL_S)
            with self._lock:
                children = list(self._children.values())
            if not children:
                continue
            try:
                self._poll(children)
            except Exception:  # noqa: BLE001 - the API or the store blinked: poll again,
                now = time.monotonic()  # and nobody is found lost for what we could not see
                for child in children:
                    child.watch.excuse(now)

    def _poll(self, children: list[_Child]) -> None:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
        from prefect.client.schemas.objects import WorkerStatus

        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[c.flow_run
                                                                      for c in children])),
                limit=len(children))
            states = {r.id: (r.state.type.value if r.state else "SCHEDULED",
                             (r.state.message or "") if r.state else "") for r in runs}
            # The store after Prefect: a run that completed between the two reads is then seen
            # with its record.
            evaluated, beats = self.store.evaluated(), self.store.beat_stamps()
            now = time.monotonic()
            online = None
            if any(c.watch.needs_workers(now) and states.get(c.flow_run, ("",))[0]
                   in ("SCHEDULED", "LATE") for c in children):
                online = any(w.status == WorkerStatus.ONLINE
                             for w in client.read_workers_for_work_pool(self.pool))
        for c in children:
            state, message = states.get(c.flow_run, ("SCHEDULED", ""))
            c.state = state
            verdict = c.watch.verdict(now, evaluated=(c.cid, c.seed) in evaluated, state=state,
                                      message=message, beat=beats.get((c.cid, c.seed)),
                                      workers_online=online)
            if verdict.what != "wait":
                c.verdict = verdict
                c.done.set()

    def stop_all(self, why: str) -> None:
        """Wake every task waiting here: the orchestrator is stopping (its flow is being torn
        down, which waits for these threads)."""
        from darwin.engine import Verdict

        with self._lock:
            children = list(self._children.values())
        for c in children:
            c.verdict = Verdict("stopped", why)
            c.done.set()

    def in_flight(self) -> list[_Child]:
        with self._lock:
            return list(self._children.values())


_WATCHERS: dict[tuple[str, str], PoolWatcher] = {}
_WATCHERS_LOCK = threading.Lock()


def _watcher(engine) -> PoolWatcher:
    key = (engine.store.run_id, engine.experiment.pool)
    with _WATCHERS_LOCK:
        if key not in _WATCHERS:
            _WATCHERS[key] = PoolWatcher(engine.store, engine.experiment.pool,
                                         engine.settings.lost_after_s,
                                         engine.settings.pool_wait_s,
                                         engine.settings.pool_start_s)
        return _WATCHERS[key]


def _submit(ref: RunRef, cid: str, seed: int, attempt: int, beat_s: float):
    from prefect.context import TagsContext
    from prefect.deployments import run_deployment

    return run_deployment(
        deployment_name(ref.experiment.pool), timeout=0,
        parameters={"run_id": ref.run_id, "storage_url": ref.storage_url,
                    "experiment": ref.experiment.model_dump(mode="json"), "candidate": cid,
                    "seed": seed, "attempt": attempt, "beat_s": beat_s},
        idempotency_key=idempotency_key(ref.run_id, cid, seed, attempt),
        flow_run_name=f"{cid}-s{seed}-a{attempt}",
        tags=sorted({*TagsContext.get().current_tags, CHILD_TAG}))


def set_states(flow_runs: list[UUID], make_state) -> None:
    """Force each flow run into ``make_state()`` (Crashed for a lost one, Cancelling for those
    an interrupted orchestrator leaves: Prefect does not cascade a cancellation to them)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        for fr in flow_runs:
            try:
                client.set_flow_run_state(fr, make_state(), force=True)
            except Exception:  # noqa: BLE001 - one that ended meanwhile needs nothing
                pass


def cancel_children() -> int:
    """Cancel every child flow run this process still waits for (the worker stops its
    process); returns how many. Called when the orchestrator is interrupted: each cancelled
    attempt is noted in the store, so a resumed run submits a fresh one (not counted as lost)."""
    from prefect.states import Cancelled, Cancelling

    with _WATCHERS_LOCK:
        children = [(w.store, c) for w in _WATCHERS.values() for c in w.in_flight()]
    why = "the run's orchestrator stopped"
    # One no worker took yet ends now; one a worker runs is Cancelling: its worker stops it
    # (a Cancelling run nobody will ever act on would linger in the server for good).
    waiting = [c.flow_run for _, c in children if c.state in ("SCHEDULED", "LATE")]
    set_states(waiting, lambda: Cancelled(message=why))
    set_states([c.flow_run for _, c in children if c.flow_run not in waiting],
               lambda: Cancelling(message=why))
    for store, c in children:
        _note_ended(store, c.cid, c.seed, c.attempt, c.flow_run,
                    "cancelled: the run's orchestrator stopped", cancelled=True)
    return len(children)


def stop_waiting() -> None:
    """The orchestrator stops (SIGTERM, Ctrl-C, a failed generation): cancel the children in
    flight, then wake the tasks waiting for them, so the flow's teardown does not wait for
    workers that will never answer."""
    cancel_children()
    with _WATCHERS_LOCK:
        watchers = list(_WATCHERS.values())
    for w in watchers:
        w.stop_all("the run's orchestrator stopped")


def _note_ended(store, cid: str, seed: int, attempt: int, flow_run: UUID, why: str,
                host: str | None = None, cancelled: bool = False) -> None:
    from darwin.memory import ImmutableConflict

    try:
        store.put_lost(cid, seed, attempt, {
            "candidate": cid, "seed": seed, "attempt": attempt, "why": why,
            "flow_run": str(flow_run), "host": host, "at": time.time(), "cancelled": cancelled})
    except ImmutableConflict:
        pass  # noted by an orchestrator that died before it could go on
    except Exception:  # noqa: BLE001 - a cancelled attempt not noted is only tried again
        if not cancelled:
            raise


@task(name="train-on-pool", task_run_name="pool-{cid}-s{seed}", cache_policy=NO_CACHE)
def evaluate_on_pool(ref: RunRef, cid: str, seed: int) -> EvaluationRecord:
    """(cid, seed) trained and scored by a worker of the run's pool; its record, read from the
    store."""
    from prefect.states import Crashed

    engine = engine_for(ref)
    store, pool = engine.store, ref.experiment.pool
    if (known := store.evaluation(cid, seed)) is not None:
        return known
    if engine.evaluations.needs_training(cid, seed) in ("no program", "cached"):
        return engine.evaluations.score(cid, seed)  # no training: nothing for a worker to do
    beat_s = beat_interval(engine.settings.lost_after_s)
    ended = store.lost(cid, seed)  # attempts lost with a worker, or cancelled with us
    attempt, losses = len(ended) + 1, sum(not e.get("cancelled") for e in ended)
    while True:
        flow_run = _submit(ref, cid, seed, attempt, beat_s)
        verdict = _watcher(engine).wait(flow_run.id, cid, seed, attempt)
        if verdict.what == "done":
            return store.evaluation(cid, seed)
        if verdict.what == "stopped":
            raise DarwinError(f"{cid} seed {seed}: {verdict.why}")
        if verdict.what == "no_worker":
            set_states([flow_run.id], lambda: Crashed(message="no worker was online"))
            raise UserError(
                f"no worker is online for pool {pool!r} ({cid} waited "
                f"{engine.settings.pool_wait_s:.0f} s): start one on each machine that should "
                f"train with: darwin worker --pool {pool}; then continue with: darwin run "
                f"--resume {ref.run_id}")
        last = store.last_beat(cid, seed) or {}
        set_states([flow_run.id], lambda v=verdict: Crashed(message=f"lost: {v.why}"))
        _note_ended(store, cid, seed, attempt, flow_run.id, verdict.why, last.get("host"))
        losses += 1
        where = f" on {last['host']}" if last.get("host") else ""
        get_run_logger().warning(
            f"{cid} seed {seed}, attempt {attempt}: lost{where} ({verdict.why})"
            + ("; trying once more on any worker" if losses < MAX_LOSSES else ""))
        if losses >= MAX_LOSSES:
            raise WorkerLost(
                f"{cid} seed {seed} was lost with its worker {losses} times ({verdict.why}): "
                f"the machines' fault, not the child's; nothing of this generation is "
                f"committed; when the workers are healthy continue with: darwin run --resume "
                f"{ref.run_id}")
        attempt += 1
