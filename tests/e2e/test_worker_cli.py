"""`darwin worker`: what it checks before it serves a pool, each problem in one line."""

from __future__ import annotations

import json
import urllib.request
import uuid

from darwin.engine import read_experiment
from darwin.errors import UserError
from tests.conftest import cli_env, run_darwin


def test_a_worker_checks_its_machine_says_what_it_is_and_creates_the_pool(prefect_server,
                                                                           sandbox, tmp_path):
    pool = f"check-{uuid.uuid4().hex[:6]}"
    env = cli_env(tmp_path / "home", prefect=prefect_server, DARWIN_SANDBOX="local")
    r = run_darwin(["worker", "--pool", pool, "--slots", "1", "--check"], env, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"worker for pool {pool} (created)" in r.stderr and "1 slot(s) on cpu" in r.stderr
    with urllib.request.urlopen(f"{prefect_server['url']}/work_pools/{pool}", timeout=30) as got:
        assert json.loads(got.read())["type"] == "process"


def test_a_worker_without_a_server_or_with_too_many_slots_is_one_line(prefect_server, sandbox,
                                                                      tmp_path):
    env = cli_env(tmp_path / "home", prefect=tmp_path / "prefect", DARWIN_SANDBOX="local")
    r = run_darwin(["worker", "--pool", "cpu-boxes"], env, timeout=120)
    assert r.returncode == 2 and "PREFECT_API_URL is not set" in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1
    env = cli_env(tmp_path / "home", prefect=prefect_server, DARWIN_SANDBOX="local")
    r = run_darwin(["worker", "--pool", "cpu-boxes", "--slots", "999", "--check"], env,
                   timeout=120)
    assert r.returncode == 2 and "--slots 999" in r.stderr and "Traceback" not in r.stderr
    r = run_darwin(["worker", "--pool", "not a pool", "--check"], env, timeout=120)
    assert r.returncode == 2 and "is not a work pool name" in r.stderr


def test_an_experiment_file_names_its_pool(tmp_path):
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"budget": "tiny", "pool": "gpu-boxes"}))
    assert read_experiment(path).pool == "gpu-boxes"
    path.write_text(json.dumps({"pool": "gpu boxes"}))
    try:
        read_experiment(path)
    except UserError as e:
        assert "pool: 'gpu boxes' is not a work pool name" in str(e)
    else:
        raise AssertionError("a bad pool name was accepted")
