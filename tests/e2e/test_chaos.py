"""Crash tests: the orchestrator is killed (SIGKILL, or stopped with SIGTERM) at chosen moments of a
run (``DARWIN_FAULT``, darwin/engine/faults.py), resumed from a new process each time, and the run
must finish with the records of an uninterrupted run, no child trained twice and nothing of a dead
process left running. On the embedded Prefect (the default) and on a real Prefect server."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from darwin.memory.store import RunStore, list_runs
from tests.conftest import DARWIN, cli_env, run_darwin

pytestmark = pytest.mark.sandbox

RUN = ["run", "--budget", "tiny", "--generations", "1", "--population", "2", "--keep", "1",
       "--children", "2", "--seeds", "2", "--reruns", "0", "--repair-tries", "1",
       "--mutator", "offline", "--json"]
# Each kill happens in the process resumed after the previous one, in the order a run meets them.
# SIGTERM must stop a run like a crash: one of the stops is a SIGTERM (SIGINT: test_engine.py).
STOPS = ["train:3:KILL",  # generation 0: a seed is training
         "mutate:2:KILL",  # generation 1: the first child persisted, the second not
         "score:1:TERM",  # a child trained, not scored: stopped with SIGTERM
         "commit:1:KILL",  # generation 1 about to commit
         "final_test:1:KILL"]  # the test split about to be scored
SERVER_KILLS = ["score:1:KILL", "commit:2:KILL"]  # generation 0 trained; generation 1 commit


def _store(home: Path) -> RunStore:
    (run_id,) = list_runs(home / "runs")
    return RunStore(home / "runs", run_id)


def records(store: RunStore) -> dict:
    """A run's records without timings, hosts or what is allowed to differ (cache hits)."""
    head = store.head()
    return {
        "candidates": sorted((c.id, c.code_sha, tuple(c.parents), c.kind, c.operator, c.repair_of)
                             for c in store.candidates()),
        "evaluations": sorted((e.candidate_id, e.seed, e.status, e.val_loss, e.tokens_served)
                              for e in store.evaluations()),
        "generations": [([(m.candidate_id, m.losses) for m in g.population], g.children,
                         g.promoted) for g in (store.generation(n) for n in range(head + 1))],
        "finals": sorted((c.id, (store.final(c.id) or {}).get("test_loss"))
                         for c in store.candidates() if store.final(c.id)),
    }


def leftovers(home: Path, prefect_home: str) -> list[str]:
    """Processes that carry this run's DARWIN_HOME or PREFECT_HOME in their environment (what
    the dead orchestrator started: its embedded server, sandboxes, its watchdog)."""
    marks = [f"DARWIN_HOME={home}".encode(), f"PREFECT_HOME={prefect_home}".encode()]
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120]
        except OSError:
            continue
        if any(m in environ for m in marks):
            found.append(f"{pid}: {cmd.decode(errors='replace')}")
    return found


def _no_leftovers(home: Path, prefect_home: str, within_s: float = 15.0) -> None:
    deadline = time.monotonic() + within_s
    while (left := leftovers(home, prefect_home)) and time.monotonic() < deadline:
        time.sleep(0.25)
    assert not left, f"left running after the orchestrator died: {left}"


def crash_and_resume(home: Path, env: dict, faults: list[str], prefect_home: str) -> dict:
    """Start the run, kill it at each fault in turn (resuming in between), then finish it."""
    timings = []
    for i, fault in enumerate(faults):
        args = RUN if i == 0 else ["run", "--resume", _store(home).run_id, "--json"]
        started = time.monotonic()
        r = run_darwin(args, {**env, "DARWIN_FAULT": fault})
        signal_name = fault.rsplit(":", 1)[1]
        expected = -9 if signal_name == "KILL" else 143
        assert r.returncode == expected, (fault, r.returncode, r.stderr[-3000:])
        if signal_name == "TERM":
            assert "continue with: darwin run --resume" in r.stderr and "Traceback" not in r.stderr
        timings.append(round(time.monotonic() - started, 1))
        _no_leftovers(home, prefect_home)
    started = time.monotonic()
    r = run_darwin(["run", "--resume", _store(home).run_id, "--json"], env)
    assert r.returncode == 0, r.stderr[-3000:]
    trained = (home / "trainings.log").read_text().splitlines()
    assert len(trained) == len(set(trained)), "a child was trained twice"
    _no_leftovers(home, prefect_home)
    summary = json.loads(r.stdout)
    summary["timings"] = timings + [round(time.monotonic() - started, 1)]
    return summary


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sandbox):
    home = tmp_path_factory.mktemp("reference")
    r = run_darwin(RUN, cli_env(home, prefect=home / "prefect", DARWIN_WARM="off",
                                DARWIN_TRAINING_LOG=str(home / "trainings.log")))
    assert r.returncode == 0, r.stderr[-3000:]
    return records(_store(home)), json.loads(r.stdout)


def test_killed_anywhere_on_the_embedded_prefect_then_resumed(reference, tmp_path):
    """Cold sandboxes: "train:3" counts progress reports, twice a second while a seed trains; a
    pre-started tiny training is over in a fifth of a second, so the third report would fall
    in a later generation, whose mutations the next stop expects not yet made."""
    home = tmp_path / "home"
    env = cli_env(home, prefect=tmp_path / "prefect", DARWIN_WARM="off",
                  DARWIN_TRAINING_LOG=str(home / "trainings.log"))
    summary = crash_and_resume(home, env, STOPS, str(tmp_path / "prefect"))
    print("seconds per process (stopped ..., finished):", summary["timings"])
    assert records(_store(home)) == reference[0]


def test_sigkill_on_a_real_prefect_server_then_resume(reference, prefect_server, tmp_path):
    """On the local backend with pre-started sandboxes (the reference: `auto` backend, cold):
    killed while sandboxes wait warm for their slots, resumed, it ends as the reference did."""
    home = tmp_path / "home"
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="local", DARWIN_WARM="on",
                  DARWIN_TRAINING_LOG=str(home / "trainings.log"))
    crash_and_resume(home, env, SERVER_KILLS, prefect_server["home"] + "-none")
    store = _store(home)
    assert store.meta()["environment"]["sandbox"] == "local"
    assert any(e.warm_s > 0 for e in store.evaluations())
    assert records(store) == reference[0]


def test_a_second_resume_of_a_live_run_is_refused(tmp_path, sandbox):
    home = tmp_path / "home"
    env = cli_env(home, prefect=tmp_path / "prefect",
                  DARWIN_TRAINING_LOG=str(home / "trainings.log"))
    first = subprocess.Popen([*DARWIN, *RUN], env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not ((home / "runs").exists() and list_runs(home / "runs")
                   and (Path(_store(home).root) / "run.lock").exists()):
            assert first.poll() is None and time.monotonic() < deadline, first.stderr.read()
            time.sleep(0.2)
        second = run_darwin(["run", "--resume", _store(home).run_id], env, timeout=120)
        assert second.returncode == 2, second.stderr
        assert "is already running" in second.stderr and "Traceback" not in second.stderr
        assert len(second.stderr.strip().splitlines()) <= 3
    finally:
        first.kill()
        first.wait()
    # Its death frees the run at once (the kernel drops the lock): the run can be claimed.
    from darwin.engine.runs import claim_run

    claim_run(_store(home)).release()


# -- many machines: children trained by the workers of a pool (darwin run --pool) ------------
def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, by parent pid (a worker starts each child's flow run
    in a session of its own, so a process group would miss them)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        parents.setdefault(int(text[text.rindex(")") + 2:].split()[1]), []).append(
            int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(parents.get(p, []))
    return found


class Machine:
    """A worker standing in for a machine: its own folder and DARWIN_HOME; it shares only the
    Prefect server and the bucket with the others."""

    def __init__(self, root: Path, pool: str, env: dict):
        self.root, self.pool, self.env = root, pool, env
        self.home = root / "home"
        root.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def start(self) -> Machine:
        log = open(self.root / "worker.log", "a")
        self.proc = subprocess.Popen([*DARWIN, "worker", "--pool", self.pool, "--slots", "1"],
                                     env={**self.env, "DARWIN_HOME": str(self.home)},
                                     cwd=self.root, stdout=log, stderr=log,
                                     start_new_session=True)
        return self

    def runs(self, pid: int) -> bool:
        return self.proc is not None and pid in descendants(self.proc.pid)

    def die(self) -> None:
        """The machine dies: the worker and everything it started, at once (SIGKILL)."""
        for pid in descendants(self.proc.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # a worker stops on SIGINT
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.die()

    def trained(self) -> set[str]:
        """The (candidate, seed) folders this machine trained in its scratch."""
        return {p.name for p in (self.home / "scratch").glob("*/*")
                if (p / "trained.json").exists()}


def _pool_env(prefect_server, s3_server, **extra) -> dict:
    return cli_env(None, prefect=prefect_server, AWS_ENDPOINT_URL=s3_server["endpoint"],
                   AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                   AWS_DEFAULT_REGION="us-east-1", DARWIN_SANDBOX="local", DARWIN_WARM="off",
                   PREFECT_WORKER_QUERY_SECONDS="1", **extra)


def _wait_for(what, timeout: float, proc: subprocess.Popen | None = None, why: str = ""):
    deadline = time.monotonic() + timeout
    while not (found := what()):
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"it ended ({proc.returncode}) before {why}: "
                        f"{proc.stderr.read()[-3000:] if proc.stderr else ''}")
        assert time.monotonic() < deadline, f"timed out waiting for {why}"
        time.sleep(0.2)
    return found


def _child_flow_runs(prefect_server, run_id: str) -> list[dict]:
    import urllib.request

    body = json.dumps({"flow_runs": {"tags": {"all_": [f"darwin-run:{run_id}",
                                                       "darwin-child"]}}}).encode()
    req = urllib.request.Request(f"{prefect_server['url']}/flow_runs/filter", data=body,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_a_pool_run_survives_a_dead_worker_and_a_dead_orchestrator(
        reference, prefect_server, s3_env, tmp_path):
    """Two workers (two "machines") train the children of one run: one dies (SIGKILL, its whole
    tree) while it trains a child, which is found lost and tried again on the other; then the
    orchestrator is killed while that second attempt trains, and the resumed run re-attaches to
    it instead of training it again. The run ends with the records of the one-process reference
    and nothing trained twice."""
    pool = f"chaos-{uuid.uuid4().hex[:6]}"
    storage = f"s3://{s3_env['bucket']}/pool-{uuid.uuid4().hex[:6]}"
    env = _pool_env(prefect_server, s3_env, DARWIN_STORAGE_URL=storage,
                    DARWIN_TRAINING_LOG=str(tmp_path / "trainings.log"))
    machines = [Machine(tmp_path / name, pool, env).start() for name in ("a", "b")]
    orchestrator = tmp_path / "orchestrator"
    run_env = {**env, "DARWIN_HOME": str(orchestrator / "home"), "DARWIN_LOST_AFTER_S": "6"}
    orchestrator.mkdir()
    proc = subprocess.Popen([*DARWIN, *RUN, "--pool", pool], env=run_env, cwd=orchestrator,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        run_id = _wait_for(lambda: list_runs(storage), 120, proc, "the run was created")[0]
        store = RunStore(storage, run_id)
        # A machine dies while it trains a child of generation 1 (beating: its third beat).
        beat = _wait_for(lambda: next((b for cid, seed in store.beat_stamps()
                                       if cid.startswith("g001")
                                       and (b := {**store.last_beat(cid, seed), "cid": cid,
                                                  "seed": seed})["beat"] >= 3), None),
                         240, proc, "a child of generation 1 trained")
        victim = next(m for m in machines if m.runs(beat["pid"]))
        victim.die()
        # It is found lost (no heartbeat for 6 s) and tried again; then the orchestrator dies.
        lost = _wait_for(lambda: store.lost(), 60, proc, "the child was found lost")
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        victim.start()  # the machine comes back
        r = run_darwin(["run", "--resume", run_id, "--json"],
                       {**run_env, "DARWIN_LOST_AFTER_S": "30"}, timeout=400, cwd=orchestrator)
        assert r.returncode == 0, r.stderr[-3000:]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for m in machines:
            m.stop()
    assert records(store) == reference[0]  # as if made in one process
    assert [(x["candidate"], x["seed"], x["attempt"], x["cancelled"]) for x in lost] == [
        (beat["cid"], beat["seed"], 1, False)]
    assert store.evaluation(beat["cid"], beat["seed"]).attempt == 2
    trained = (tmp_path / "trainings.log").read_text().splitlines()
    assert len(trained) == len(set(trained)), "a child was trained twice"
    # Every training was a worker's, and both machines trained.
    assert not [p for p in (orchestrator / "home" / "scratch").glob("*/*")
                if (p / "trained.json").exists()]
    by_machine = [m.trained() for m in machines]
    assert all(by_machine) and not set.intersection(*by_machine), by_machine
    evaluated = {f"{e.candidate_id}-s{e.seed}" for e in store.evaluations() if e.code_sha}
    assert set.union(*by_machine) == evaluated
    # One flow run per attempt: the resumed orchestrator found its children again.
    names = sorted(fr["name"] for fr in _child_flow_runs(prefect_server, run_id))
    assert len(names) == len(set(names)) == len(evaluated) + 1, names


def test_no_worker_for_the_pool_is_one_line_and_the_run_stays_resumable(
        prefect_server, s3_env, tmp_path):
    pool = f"empty-{uuid.uuid4().hex[:6]}"
    storage = f"s3://{s3_env['bucket']}/empty-{uuid.uuid4().hex[:6]}"
    env = _pool_env(prefect_server, s3_env, DARWIN_HOME=str(tmp_path / "home"),
                    DARWIN_STORAGE_URL=storage, DARWIN_POOL_WAIT_S="3")
    r = run_darwin([*RUN, "--pool", pool], env, timeout=180)
    assert r.returncode == 2, r.stderr[-3000:]
    (line,) = [x for x in r.stderr.splitlines() if x.startswith("darwin: error:")]
    assert f"no worker is online for pool '{pool}'" in line
    assert f"darwin worker --pool {pool}" in line and "darwin run --resume" in line
    assert "Traceback" not in r.stderr
    (run_id,) = list_runs(storage)
    # Nothing is left waiting for a worker that may come later.
    states = {fr["state_type"] for fr in _child_flow_runs(prefect_server, run_id)}
    assert states and states <= {"CRASHED", "CANCELLING", "CANCELLED"}, states


def test_sigterm_on_the_orchestrator_cancels_its_children(prefect_server, s3_env, tmp_path):
    pool = f"term-{uuid.uuid4().hex[:6]}"
    storage = f"s3://{s3_env['bucket']}/term-{uuid.uuid4().hex[:6]}"
    env = _pool_env(prefect_server, s3_env, DARWIN_HOME=str(tmp_path / "home"),
                    DARWIN_STORAGE_URL=storage)
    proc = subprocess.Popen([*DARWIN, *RUN, "--pool", pool], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        run_id = _wait_for(lambda: list_runs(storage), 120, proc, "the run was created")[0]
        _wait_for(lambda: len(_child_flow_runs(prefect_server, run_id)) >= 3, 60, proc,
                  "the seed's trainings were submitted")
        proc.terminate()
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode != 0 and "Traceback" not in stderr, stderr[-3000:]
    assert f"darwin run --resume {run_id}" in stderr
    states = {fr["state_type"] for fr in _child_flow_runs(prefect_server, run_id)}
    assert states <= {"CANCELLING", "CANCELLED"}, states


@pytest.mark.parametrize("store, api, words", [
    ("local", True, "is a folder on this machine"),
    ("s3", False, "need a Prefect server they can reach"),
])
def test_a_pool_the_workers_could_not_serve_is_refused(store, api, words, prefect_server,
                                                       s3_env, tmp_path):
    env = _pool_env(prefect_server, s3_env, DARWIN_HOME=str(tmp_path / "home"))
    if store == "s3":
        env["DARWIN_STORAGE_URL"] = f"s3://{s3_env['bucket']}/refused"
    if not api:
        env.pop("PREFECT_API_URL")
        env["PREFECT_HOME"] = str(tmp_path / "prefect")
    r = run_darwin([*RUN, "--pool", "somewhere"], env, timeout=120)
    assert r.returncode == 2 and words in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) <= 3 and "Traceback" not in r.stderr
    assert not list_runs(env.get("DARWIN_STORAGE_URL") or tmp_path / "home" / "runs")
