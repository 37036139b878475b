"""Deployments for real: deployments/prefect.yaml deployed to a real Prefect server, its runs
executed by a real process worker, a run continued by the continuing deployment, and
`darwin serve` registering its schedule."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from darwin.memory.store import RunStore, list_runs
from tests.conftest import DARWIN, cli_env, run_darwin

pytestmark = pytest.mark.sandbox

ROOT = Path(__file__).resolve().parents[2]
PREFECT = str(Path(sys.executable).parent / "prefect")


# What a worker's environment needs beyond the server: the checkout its flows run from, and a
# quick poll for scheduled runs.
WORKER = {"DARWIN_CHECKOUT": str(ROOT), "PREFECT_WORKER_QUERY_SECONDS": "1"}


def _prefect(args, env, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([PREFECT, *args], env=env, cwd=ROOT, text=True, capture_output=True,
                          timeout=timeout)


def _api(prefect_server, path: str, body: dict) -> list:
    req = urllib.request.Request(f"{prefect_server['url']}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def worker(prefect_server, sandbox, tmp_path_factory):
    """The darwin-cpu process pool, the tiny and continuing deployments, one worker."""
    home = tmp_path_factory.mktemp("deployed")
    env = cli_env(home, prefect=prefect_server, **WORKER)
    r = _prefect(["work-pool", "create", "darwin-cpu", "--type", "process", "--overwrite"], env)
    assert r.returncode == 0, r.stderr
    # As the README says: the worker's environment names its checkout, not the deploying shell.
    deploying = {k: v for k, v in env.items() if k != "DARWIN_CHECKOUT"}
    r = _prefect(["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                  "--name", "tiny", "--name", "continue-nightly"], deploying)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    log = open(home / "worker.log", "w")
    proc = subprocess.Popen([PREFECT, "worker", "start", "--pool", "darwin-cpu"], env=env,
                            cwd=home, stdout=log, stderr=log, start_new_session=True)
    yield home, env
    os.killpg(proc.pid, signal.SIGINT)  # a worker stops on SIGINT (SIGTERM may be ignored)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


def _run(env, deployment: str, *params: str) -> subprocess.CompletedProcess:
    args = ["deployment", "run", deployment, "--watch", "--watch-timeout", "500"]
    for p in params:
        args += ["-p", p]
    return _prefect(args, env, timeout=600)


def _flow_run(prefect_server, name: str) -> dict | None:
    found = _api(prefect_server, "/flow_runs/filter", {"flow_runs": {"name": {"any_": [name]}}})
    return found[0] if found else None


@pytest.fixture(scope="module")
def paused(worker, prefect_server):
    """The tiny deployment triggered with a review gate after each generation: it runs through
    the worker and pauses for its review after generation 1."""
    home, env = worker
    r = _prefect(["deployment", "run", "darwin/tiny", "-p", "review_every=1",
                  "-p", "review_timeout=600"], env)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        runs = list_runs(home / "runs") if (home / "runs").exists() else []
        if runs and (fr := _flow_run(prefect_server, runs[0])) and fr["state_type"] == "PAUSED":
            return runs[0]
        time.sleep(1)
    pytest.fail("the deployed run never paused for its review:\n"
                + (home / "worker.log").read_text()[-3000:])


def test_the_ui_shows_the_run_its_report_and_its_review_form(paused, prefect_server, tmp_path):
    """deployments/screenshots.py against the real UI: each page's rendered DOM holds what its
    picture must show, and no picture is blank."""
    import shutil

    if not shutil.which("chromium") and not os.environ.get("DARWIN_REQUIRE_BROWSER"):
        pytest.skip("no chromium here (CI installs it and sets DARWIN_REQUIRE_BROWSER=1)")
    r = subprocess.run([sys.executable, "deployments/screenshots.py", paused, "--ui",
                        prefect_server["ui"], "--out", str(tmp_path)], cwd=ROOT, text=True,
                       capture_output=True, timeout=400)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("run", "report", "review"):
        assert f"ok: {tmp_path / name}.png" in r.stdout
        assert (tmp_path / f"{name}.png").stat().st_size > 20_000


def test_answering_the_review_lets_it_finish_and_a_second_deployment_continues_it(
        worker, paused, prefect_server):
    home, env = worker
    run_id = paused
    r = run_darwin(["review", run_id, "--note", "answered by the deployment test"], env,
                   timeout=120)
    assert r.returncode == 0, r.stderr
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if (fr := _flow_run(prefect_server, "new-run")) and fr["state_type"] in (
                "COMPLETED", "FAILED", "CRASHED"):
            break
        time.sleep(1)
    assert fr["state_type"] == "COMPLETED", (home / "worker.log").read_text()[-3000:]
    store = RunStore(home / "runs", run_id)
    assert store.head() == 1 and (home / "reports" / run_id / "report.html").is_file()
    assert store.meta()["experiment"]["budget"] == "tiny"  # from the experiment file
    assert store.review(1).answer.note == "answered by the deployment test"
    before = {p.name: p.read_bytes() for p in (Path(store.root) / "evaluations").iterdir()}

    r = _run(env, "darwin/continue-nightly", f"continue_run={run_id}", "more_generations=1")
    assert r.returncode == 0 and "Completed" in r.stdout, r.stdout[-2000:] + \
        (home / "worker.log").read_text()[-3000:]
    assert list_runs(home / "runs") == [run_id] and store.head() == 2
    after = {p.name: p.read_bytes() for p in (Path(store.root) / "evaluations").iterdir()}
    assert {k: after[k] for k in before} == before  # nothing trained again
    assert all(name.startswith("g002-") for name in set(after) - set(before))
    assert _flow_run(prefect_server, f"continue-{run_id}")["state_type"] == "COMPLETED"
    r = run_darwin(["runs", "--json"], env, timeout=60)
    assert json.loads(r.stdout)[0]["generations"] == "2 (continued)"

    # `darwin run` with the experiment file's settings goes through the same lifecycle
    # (flows/launch.py) and records the same settings.
    spec = json.loads((ROOT / "deployments" / "experiments" / "tiny.json").read_text())
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in spec.items()]
    by_hand = {**env, "DARWIN_HOME": str(home / "cli")}  # the same Prefect server
    r = run_darwin(["run", *flags, "--no-review"], by_hand)
    assert r.returncode == 0, r.stderr[-3000:]
    (cli_run,) = list_runs(home / "cli" / "runs")
    deployed, by_cli = store.meta(), RunStore(home / "cli" / "runs", cli_run).meta()
    assert deployed["experiment"] == by_cli["experiment"]
    for key in ("sandbox", "device", "dataset_sha256", "packages"):
        assert deployed["environment"][key] == by_cli["environment"][key], key


def test_a_bad_parameter_fails_the_deployed_run_in_one_line(worker, prefect_server):
    """The deployed flow refuses what `darwin run` refuses, in the same words (naming the
    parameter), as the flow run's state message instead of a traceback."""
    home, env = worker
    r = _run(env, "darwin/tiny", "review_timeout=0")
    assert "Failed" in r.stdout, r.stdout[-2000:]
    found = _api(prefect_server, "/flow_runs/filter", {"flow_runs": {"state": {
        "type": {"any_": ["FAILED"]}}}})
    messages = [fr["state"]["message"] for fr in found]
    assert "invalid review_timeout: 0.0; give the seconds a review waits, for example 900" \
        in messages, messages


def test_darwin_serve_registers_its_schedule(prefect_server, tmp_path):
    # A schedule that never fires while the test runs (every 5 minutes did, on CI: a run then
    # started, and Ctrl-C waited for it to stop, past the test's patience).
    env = cli_env(tmp_path, prefect=prefect_server, **WORKER)
    proc = subprocess.Popen([*DARWIN, "serve", "--cron", "17 3 1 1 *",
                             "--experiment", "deployments/experiments/tiny.json",
                             "--name", "serve-test"], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline, found = time.monotonic() + 60, []
        while time.monotonic() < deadline and not found:
            found = _api(prefect_server, "/deployments/filter",
                         {"deployments": {"name": {"any_": ["serve-test"]}}})
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.5)
        (deployment,) = found
        assert [s["schedule"]["cron"] for s in deployment["schedules"]] == ["17 3 1 1 *"]
        assert deployment["parameters"]["experiment_file"] == str(
            ROOT / "deployments" / "experiments" / "tiny.json")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)  # read the pipes: a full one would block it
    assert "stopped serving" in stderr.decode(), stderr.decode()[-2000:]


@pytest.mark.parametrize("args, words", [
    (["--cron", "every night"], "invalid --cron 'every night'"),
    (["--experiment", "nowhere.json"], "experiment file nowhere.json not found"),
    (["--continue", "r", "--more-generations", "0"], "invalid --more-generations: 0"),
])
def test_serve_refuses_bad_input_in_one_line(args, words, prefect_server, tmp_path):
    env = cli_env(tmp_path, prefect=prefect_server, **WORKER)
    r = run_darwin(["serve", *args], env, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and words in r.stderr and r.stderr.count("\n") == 1, r.stderr
    env = {k: v for k, v in env.items() if k != "PREFECT_API_URL"}
    r = run_darwin(["serve"], env, timeout=60, cwd=ROOT)
    assert r.returncode == 2 and "needs a Prefect server" in r.stderr
