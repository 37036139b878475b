"""`darwin run` with its store on S3 (moto's server over HTTP), configured the way a user would:
DARWIN_STORAGE_URL=s3://bucket/prefix and the standard AWS variables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pytest
import s3fs

pytestmark = pytest.mark.sandbox


def test_a_run_stores_everything_on_s3_and_reads_back(s3_env, sandbox, tmp_path):
    url = f"s3://{s3_env['bucket']}/runs-{uuid.uuid4().hex[:8]}"
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(DARWIN_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect"),
               DARWIN_STORAGE_URL=url, OPENAI_API_KEY="")
    darwin = [sys.executable, "-m", "darwin.cli"]
    r = subprocess.run([*darwin, "run", "--budget", "tiny", "--generations", "1", "--population",
                        "2", "--keep", "1", "--children", "2", "--seeds", "2", "--reruns", "0",
                        "--mutator", "offline", "--json"], env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    run_id = json.loads(r.stdout)["run_id"]
    fs = s3fs.S3FileSystem(endpoint_url=s3_env["endpoint"], key="testing", secret="testing")
    root = url.removeprefix("s3://") + "/" + run_id
    assert json.loads(fs.cat_file(f"{root}/HEAD")) == {"generation": 1}
    assert len(fs.ls(f"{root}/candidates")) == 3  # the seed and two children
    assert not (tmp_path / "home" / "runs").exists()  # nothing of the run went to local disk
    board = subprocess.run([*darwin, "leaderboard", run_id, "--json"], env=env,
                           capture_output=True, text=True, timeout=120)
    assert board.returncode == 0, board.stderr
    assert {c["candidate"] for c in json.loads(board.stdout)["candidates"]} == {
        "seed", "g001-c00", "g001-c01"}
    assert "testing" not in fs.cat_file(f"{root}/run.json").decode()  # no credentials stored
