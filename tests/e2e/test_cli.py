"""The `darwin` command as a user runs it (a real subprocess each time)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import DARWIN, cli_env, run_darwin


@pytest.mark.parametrize(
    "args, words",
    [
        (["baseline", "--budget", "huge"], ["unknown budget 'huge'", "tiny|cpu|paper"]),
        (["baseline", "--budget", "tiny", "--device", "cuda"], ["--device cuda", "CUDA"]),
        (["baseline", "--budget", "tiny", "--device", "tpu"], ["unknown device 'tpu'"]),
        (["baseline", "--budget", "tiny", "--seeds", "0"], ["--seeds must be at least 1"]),
        (["score", "/nonexistent/train.py", "--budget", "tiny"], ["program not found"]),
        (["baseline", "--budget", "tiny", "--sandbox", "magic"], ["unknown sandbox 'magic'"]),
        (["runs", "--storage", "ftp://host/runs"], ["ftp:// is not supported", "s3://bucket"]),
        (["leaderboard", "--storage", "gs://bucket/runs"], ["gs:// is not supported"]),
        (["runs", "--storage", "/nonexistent/runs"], ["/nonexistent/runs: no such folder"]),
        (["export", "some-run", __file__], ["is a file; give a folder"]),
        (["run", "--generations", "three"], ["Invalid value for --generations", "three"]),
        (["review", "--stop", "--remaining", "3"], ["--stop with --remaining 3", "give one"]),
    ],
)
def test_bad_input_is_one_clear_line(args, words, tmp_path):
    r = run_darwin(args, cli_env(tmp_path))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("darwin: error:"), r.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""


def test_missing_sandbox_is_refused_with_the_fix(tmp_path):
    r = run_darwin(["baseline", "--budget", "tiny"],
                   cli_env(tmp_path, PATH="/nonexistent",
                           DOCKER_HOST=f"unix://{tmp_path}/no-docker.sock"))
    assert r.returncode == 2
    assert "bubblewrap" in r.stderr and "--sandbox unsafe" in r.stderr
    assert "no Docker daemon answers" in r.stderr and "DOCKER_HOST" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.sandbox
def test_sandbox_check_reports_an_isolating_backend(sandbox, tmp_path):
    r = run_darwin(["sandbox", "check", "--json"], cli_env(tmp_path))
    assert r.returncode == 0, r.stderr
    rows = {row["backend"]: row for row in json.loads(r.stdout)}
    assert rows["local"]["works"] and rows["local"]["isolates"]
    assert rows["unsafe"]["isolates"] is False


@pytest.mark.sandbox
def test_score_and_baseline_agree_on_the_seed(sandbox, tmp_path):
    """`baseline` on the default backend (auto: Docker where a daemon answers, as in CI) and
    `score` forced onto the local one: both end to end through the CLI, with the same number."""
    from darwin.evaluation.training import seed_program
    from darwin.sandbox import get_sandbox

    base = run_darwin(["baseline", "--budget", "tiny", "--seeds", "1", "--seed", "3", "--json"],
                      cli_env(tmp_path, DARWIN_SANDBOX="auto"))
    assert base.returncode == 0, base.stderr
    scored = run_darwin(["score", str(seed_program()), "--budget", "tiny", "--seed", "3",
                         "--json", "--sandbox", "local"], cli_env(tmp_path))
    assert scored.returncode == 0, scored.stderr
    b = json.loads(base.stdout)  # --json: nothing but JSON on stdout
    s = json.loads(scored.stdout)
    assert b["runs"][0]["sandbox"] == get_sandbox("auto").name and s["sandbox"] == "local"
    assert b["runs"][0]["status"] == s["status"] == "ok"
    assert b["runs"][0]["val_loss"] == s["val_loss"]  # same program, seed, budget: same number
    assert b["summary"]["ok"] == 1 and b["runs"][0]["isolated"] is True and s["isolated"] is True


def test_each_worker_has_a_darwin_home_of_its_own():
    """tests/conftest.py: two test workers never share runs, scratch folders or layers."""
    home = Path(os.environ["DARWIN_HOME"])
    assert home.name == os.environ.get("PYTEST_XDIST_WORKER", "main") and home.is_dir()


def test_mutate_without_a_key_names_the_variable(tmp_path):
    env = cli_env(tmp_path, OPENAI_API_KEY="", DARWIN_LLM__API_KEY="")
    r = run_darwin(["mutate", "seed/train.py", "--mutator", "openai"], env)
    assert r.returncode == 2 and "OPENAI_API_KEY" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _mutate_then_score(llm_server, tmp_path: Path) -> dict:
    """`darwin mutate` the stock seed through the test server, `darwin score` the child (it
    must train and score); the mutation's report."""
    from darwin.evaluation.training import seed_program

    env = cli_env(tmp_path, OPENAI_BASE_URL=llm_server.url, OPENAI_API_KEY=llm_server.key)
    child = tmp_path / "child.py"
    m = run_darwin(["mutate", str(seed_program()), "--budget", "tiny", "--out", str(child),
                    "--json"], env)
    assert m.returncode == 0, m.stderr
    assert child.read_text() != seed_program().read_text()
    s = run_darwin(["score", str(child), "--budget", "tiny", "--json"], cli_env(tmp_path))
    assert s.returncode == 0, s.stderr
    assert json.loads(s.stdout)["status"] == "ok"
    return json.loads(m.stdout)


@pytest.mark.sandbox
def test_mutate_through_the_test_server_then_score_the_child(sandbox, llm_server, tmp_path):
    report = _mutate_then_score(llm_server, tmp_path)
    assert report["ok"] and report["input_tokens"] > 0 and report["cost_usd"] > 0


@pytest.mark.sandbox
def test_an_answer_with_only_a_fenced_program_becomes_a_child_of_kind_other(
        sandbox, llm_server, tmp_path):
    """What a real server answered: a line of reasoning and the whole program in a python fence,
    no KIND line. It is kept (kind other, noted), and the child trains and scores."""
    from darwin.evaluation.training import seed_program

    seed = seed_program().read_text()
    assert "dropout = 0.0" not in seed
    changed = seed.replace("dropout = ", "dropout = 0.0  # was ", 1)
    llm_server.enqueue({"content": f"Drop dropout: the model is small.\n```python\n{changed}```\n"})
    report = _mutate_then_score(llm_server, tmp_path)
    assert report["ok"] and report["kind"] == "other" and "kind not stated" in report["notes"]
    assert report["reasoning"] == "Drop dropout: the model is small."


@pytest.mark.parametrize("env, words", [
    ({"DARWIN_LLM__MAX_COST_USD": "ten dollars"}, "invalid DARWIN_LLM__MAX_COST_USD: "),
    ({"DARWIN_STORAGE_RETRY_S": "soon", "DARWIN_STORAGE_URL": "s3://darwin/x",
      "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}, "invalid DARWIN_STORAGE_RETRY_S='soon': give"),
])
def test_a_bad_setting_is_one_line_naming_the_variable(env, words, tmp_path):
    r = run_darwin(["runs"], cli_env(tmp_path, **env))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], r.stderr


@pytest.mark.sandbox
def test_score_with_a_private_text_reports_the_memorisation_gap_of_an_honest_seed(tmp_path):
    """`darwin score` with DARWIN_PRIVATE_EVAL: the honest seed's val loss and its loss on
    private Shakespeare it never saw stay close, unflagged, and the gap is printed."""
    from darwin.evaluation.data import load_dataset
    from darwin.evaluation.training import seed_program

    corpus = load_dataset()
    private = tmp_path / "private.txt"
    private.write_text(corpus.text(corpus.train[300_000:340_000]))
    env = cli_env(tmp_path, DARWIN_PRIVATE_EVAL=str(private))
    r = run_darwin(["score", str(seed_program()), "--budget", "tiny", "--sandbox", "local",
                    "--json"], env)
    assert r.returncode == 0, r.stderr
    s = json.loads(r.stdout)
    assert s["status"] == "ok" and s["private_loss"] is not None
    assert abs(s["private_loss"] - s["val_loss"]) < 0.25, s
    assert not any(f.startswith("heldout_gap") for f in s["flags"]), s["flags"]
    assert s["checks"]["probes"] == 256 + 64 + 64 and len(s["checks"]["private_eval"]) == 16


@pytest.mark.sandbox
def test_a_docker_daemon_that_goes_away_mid_run_stops_it_in_one_line(docker_sandbox,
                                                                      prefect_server, tmp_path):
    """dockerd stops while the run's first container works (a proxy in front of the daemon's
    socket, switched off): the run ends with one line naming the daemon and the resume command,
    exit 4 (ours, not the candidate's), no traceback, and nothing recorded for that training."""
    from darwin.memory import RunStore, list_runs
    from darwin.sandbox.docker_backend import LABEL, OWNER_PID, connect
    from tests.tcp_proxy import UnixProxy

    real = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    proxy = UnixProxy(real, str(tmp_path / "docker.sock"))
    proxy.on()
    home = tmp_path / "home"
    run = subprocess.Popen(
        [*DARWIN, "run", "--budget", "tiny", "--generations", "1", "--population", "2",
         "--keep", "1", "--children", "2", "--seeds", "2", "--reruns", "0", "--mutator",
         "offline", "--sandbox", "docker", "--no-review"],
        env=cli_env(home, prefect=prefect_server, DOCKER_HOST=proxy.url),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    client = connect()  # the real daemon, behind the proxy's back
    mine = {"label": [f"{LABEL}=1", f"{OWNER_PID}={run.pid}"]}
    try:
        deadline = time.monotonic() + 300
        while not client.containers.list(filters=mine):
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
            time.sleep(0.1)
        proxy.off()
        _, stderr = run.communicate(timeout=300)
    finally:
        run.kill()
        for c in client.containers.list(all=True, filters=mine):
            c.remove(force=True)
        client.close()
    assert run.returncode == 4 and "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("darwin: error: the Docker daemon at unix://") \
        and "stopped answering while a sandbox ran" in last \
        and "continue with: darwin run --resume" in last, last
    (run_id,) = list_runs(home / "runs")
    assert not RunStore(home / "runs", run_id).evaluations()  # no verdict on the seed
