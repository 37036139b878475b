"""`darwin run` with its store on S3 (moto's server over HTTP), configured the way a user would:
DARWIN_STORAGE_URL=s3://bucket/prefix and the standard AWS variables.

One run, killed (-9) while committing generation 2, resumed by a new process with an empty
DARWIN_HOME (no scratch folder, no training cache) and a fresh PREFECT_HOME: everything it needs
is in the bucket, so nothing trains twice, and the final test scores the models kept there."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import uuid

import pytest
import s3fs

from tests.conftest import DARWIN, cli_env, run_darwin

pytestmark = pytest.mark.sandbox


def test_a_run_killed_on_s3_resumes_elsewhere_and_trains_nothing_twice(s3_env, sandbox, tmp_path):
    url = f"s3://{s3_env['bucket']}/runs-{uuid.uuid4().hex[:8]}"
    # Each process its own home and Prefect (nothing local is shared), one training log.
    log = str(tmp_path / "trainings.log")
    first = run_darwin(
        ["run", "--budget", "tiny", "--generations", "2", "--population", "2", "--keep", "1",
         "--children", "2", "--seeds", "2", "--reruns", "0", "--mutator", "offline"],
        cli_env(tmp_path / "first" / "home", prefect=tmp_path / "first" / "pf",
                DARWIN_STORAGE_URL=url, DARWIN_TRAINING_LOG=log, DARWIN_FAULT="commit:3:KILL"),
        timeout=900)
    assert first.returncode == -9, first.stderr[-3000:]  # died committing generation 2
    fs = s3fs.S3FileSystem(endpoint_url=s3_env["endpoint"], key="testing", secret="testing")
    base = url.removeprefix("s3://")
    (run_id,) = [p.rsplit("/", 1)[-1] for p in fs.ls(base) if not p.endswith("prefect-results")]
    root = f"{base}/{run_id}"
    assert json.loads(fs.cat_file(f"{root}/HEAD"))["generation"] == 1
    trained_before = (tmp_path / "trainings.log").read_text().splitlines()

    second_env = cli_env(tmp_path / "second" / "home", prefect=tmp_path / "second" / "pf",
                         DARWIN_STORAGE_URL=url, DARWIN_TRAINING_LOG=log)  # nothing local survives
    second = run_darwin(["run", "--resume", run_id, "--json"], second_env, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    summary = json.loads(second.stdout)
    assert summary["generations"] == 2 and summary["test_loss_seed"] is not None
    assert summary["test_loss_best"] is not None

    trainings = (tmp_path / "trainings.log").read_text().splitlines()
    twice = [line for line, n in collections.Counter(trainings).items() if n > 1]
    assert not twice, f"trained twice: {twice}"
    assert trainings == trained_before, "the resumed run trained something"
    assert not any("again-for-the-test-split" in line for line in trainings)
    assert not (tmp_path / "second" / "home" / "runs").exists()  # nothing of it on local disk

    # Every trained child's log, the population's models, and the generations' storage figures.
    assert len(fs.ls(f"{root}/logs")) == len(trainings)
    gen2 = json.loads(fs.cat_file(f"{root}/generations/0002.json"))
    for member in gen2["population"]:
        assert fs.exists(f"{root}/outputs/{member['candidate_id']}-s0/model.safetensors")
    gen1 = json.loads(fs.cat_file(f"{root}/generations/0001.json"))
    assert gen1["storage"]["bytes_written"] > 0 and gen2["storage"]["calls"] > 0

    # The bucket is versioned: HEAD's history shows both processes' commits, and the run reads
    # back as it was at any of them.
    shown = run_darwin(["history", run_id, "--json"], second_env, timeout=120)
    found = json.loads(shown.stdout)
    versions = found["head_versions"]
    assert [v["generation"] for v in versions] == [0, 1, 2]
    assert versions[1]["pid"] != versions[2]["pid"]  # the killed process, then the resumed one
    assert [c["generation"] for c in found["commits"]] == [0, 1, 2]
    at = {}
    for flag in (["--at", versions[1]["version"]], ["--at-generation", "1"]):
        board = run_darwin(["leaderboard", run_id, *flag, "--json"], second_env, timeout=120)
        at[flag[0]] = json.loads(board.stdout)
    assert at["--at"] == at["--at-generation"] and at["--at"]["head"] == 1
    assert {r["generation"] for r in at["--at"]["candidates"]} == {0, 1}
    bad = run_darwin(["leaderboard", run_id, "--at", "not-a-version"], second_env, timeout=120)
    assert bad.returncode == 2 and "no such version" in bad.stderr

    # Prefect's flow results sit next to the run, as JSON (never a pickle read back).
    results = fs.find(f"{base}/prefect-results")
    assert results, "no Prefect results on S3"
    for path in results:
        json.loads(fs.cat_file(path))

    # No credentials anywhere: not in the bucket, not in the result-storage block the UI shows.
    for path in fs.find(base):
        if not path.endswith(".safetensors"):
            assert b"testing" not in fs.cat_file(path), path
    blocks = subprocess.run(
        [sys.executable, "-c", "from prefect.client.orchestration import get_client\n"
         "with get_client(sync_client=True) as c:\n"
         "    print([d.data for d in c.read_block_documents()])"],
        env=second_env, capture_output=True, text=True, timeout=300)
    assert s3_env["endpoint"] in blocks.stdout and "testing" not in blocks.stdout, blocks.stderr

    board = run_darwin(["leaderboard", run_id, "--json"], second_env, timeout=120)
    assert board.returncode == 0, board.stderr
    assert {"seed", "g001-c00", "g002-c00"} <= {
        c["candidate"] for c in json.loads(board.stdout)["candidates"]}


def test_a_store_that_goes_down_mid_run_stops_it_in_one_line(s3_env, sandbox, tmp_path):
    """The store goes away (a TCP proxy in front of moto switched off) once a child of
    generation 1 has trained: the run stops with one line and the resume command, exit 3, and
    what was committed stays readable."""
    import time
    from urllib.parse import urlparse

    from tests.tcp_proxy import TcpProxy

    target = urlparse(s3_env["endpoint"])
    proxy = TcpProxy(target.hostname, target.port)
    proxy.on()
    url = f"s3://{s3_env['bucket']}/down-{uuid.uuid4().hex[:8]}"
    env = cli_env(tmp_path / "down" / "home", prefect=tmp_path / "down" / "pf",
                  DARWIN_STORAGE_URL=url, DARWIN_TRAINING_LOG=str(tmp_path / "trainings.log"),
                  AWS_ENDPOINT_URL=proxy.url, DARWIN_STORAGE_RETRY_S="3", AWS_MAX_ATTEMPTS="1")
    run = subprocess.Popen(
        [*DARWIN, "run", "--budget", "tiny", "--generations", "1", "--population", "2", "--keep",
         "1", "--children", "2", "--seeds", "2", "--reruns", "0", "--repair-tries", "0",
         "--mutator", "offline"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    trainings = tmp_path / "trainings.log"
    deadline = time.monotonic() + 600
    while " g001-" not in (trainings.read_text() if trainings.exists() else ""):
        assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()[-3000:]
        time.sleep(0.2)
    proxy.off()
    try:
        _, stderr = run.communicate(timeout=600)
    finally:
        proxy.on()
    assert run.returncode == 3, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert "unreachable for 3 s" in last and "continue with: darwin run --resume" in last, last
    fs = s3fs.S3FileSystem(endpoint_url=s3_env["endpoint"], key="testing", secret="testing")
    (root,) = [p for p in fs.ls(url.removeprefix("s3://")) if not p.endswith("prefect-results")]
    assert json.loads(fs.cat_file(f"{root}/HEAD"))["generation"] == 0  # whole, readable
    proxy.off()
