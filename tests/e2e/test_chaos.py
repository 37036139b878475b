"""Crash tests: the orchestrator is killed (SIGKILL, or stopped with SIGTERM) at chosen moments of a
run (``DARWIN_FAULT``, darwin/engine/faults.py), resumed from a new process each time, and the run
must finish with the records of an uninterrupted run, no child trained twice and nothing of a dead
process left running. On the embedded Prefect (the default) and on a real Prefect server."""

from __future__ import annotations

import json
import os
import subprocess
import time
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
