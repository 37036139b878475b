"""The Docker backend: the container's configuration as the daemon reports it, reaping after a
crash, backend selection, and scoring through Docker agreeing with scoring through bubblewrap."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from darwin.evaluation.training import seed_program
from darwin.sandbox import OUT_DIR, PROGRAM_DIR, Mount, SandboxSpec, SandboxUnavailable, get_sandbox
from darwin.sandbox.docker_backend import LABEL, OWNER_PID, connect
from tests.conftest import PROGRAMS

pytestmark = pytest.mark.sandbox


def _spec(tmp_path: Path, program: Path, **kw) -> SandboxSpec:
    prog, out = tmp_path / "program", tmp_path / "out"
    prog.mkdir(mode=0o755)
    out.mkdir()
    (prog / "train.py").write_text(program.read_text())
    (prog / "train.py").chmod(0o644)
    return SandboxSpec(argv=["python", f"{PROGRAM_DIR}/train.py"],
                       mounts=[Mount(prog, PROGRAM_DIR), Mount(out, OUT_DIR, writable=True)],
                       cwd=OUT_DIR, log_path=tmp_path / "log.txt", **kw)


def test_the_daemon_reports_a_locked_down_container(docker_sandbox, tmp_path):
    spec = _spec(tmp_path, PROGRAMS / "sleeper.py", deadline_s=30, memory_mb=300, max_pids=40,
                 cpus=[0])
    proc = docker_sandbox.start(spec)
    try:
        proc.container.reload()
        hc = proc.container.attrs["HostConfig"]
        cfg = proc.container.attrs["Config"]
        assert hc["NetworkMode"] == "none"
        assert hc["ReadonlyRootfs"] is True
        assert hc["CapDrop"] == ["ALL"] and not hc.get("CapAdd")
        assert hc["SecurityOpt"] == ["no-new-privileges"]
        assert hc["Privileged"] is False
        assert hc["Memory"] == hc["MemorySwap"] == 300 << 20
        assert hc["PidsLimit"] == 40
        assert hc["CpusetCpus"] == "0"
        assert hc["Init"] is True
        assert hc["LogConfig"]["Type"] == "none"
        assert cfg["User"] == ("65534:65534" if os.geteuid() == 0 else f"{os.getuid()}:{os.getgid()}")
        assert set(cfg["Env"]) >= {"HOME=/tmp", "OMP_NUM_THREADS=1"}
        assert not any(k.startswith(("OPENAI", "AWS", "PREFECT", "DOCKER")) for k in cfg["Env"])
        assert cfg["Labels"][LABEL] == "1" and cfg["Labels"][OWNER_PID] == str(os.getpid())
        writable = [m["Destination"] for m in proc.container.attrs["Mounts"] if m["RW"]]
        assert writable == [OUT_DIR]
        assert not any("docker.sock" in m["Source"] for m in proc.container.attrs["Mounts"])
        assert set(hc["Tmpfs"]) >= {"/tmp"}
    finally:
        result = proc.finish()
    assert result.outcome.value == "crash"  # stopped by us before its deadline
    client = connect()
    try:
        assert not client.containers.list(all=True, filters={"id": proc.container.id})
    finally:
        client.close()


_ORPHAN = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    from darwin.sandbox import get_sandbox, Mount, SandboxSpec, PROGRAM_DIR, OUT_DIR
    tmp = Path(sys.argv[1])
    prog, out = tmp / "program", tmp / "out"
    prog.mkdir(mode=0o755); out.mkdir()
    (prog / "train.py").write_text("import time\\nwhile True: time.sleep(1)\\n")
    (prog / "train.py").chmod(0o644)
    box = get_sandbox("docker")
    p = box.start(SandboxSpec(argv=["python", PROGRAM_DIR + "/train.py"], deadline_s=600,
                              mounts=[Mount(prog, PROGRAM_DIR), Mount(out, OUT_DIR, writable=True)]))
    print(p.container.id, flush=True)
    time.sleep(600)
""")


def test_containers_of_a_killed_orchestrator_are_reaped_at_start_up(docker_sandbox, tmp_path):
    orchestrator = subprocess.Popen([sys.executable, "-c", _ORPHAN, str(tmp_path)],
                                    stdout=subprocess.PIPE, text=True)
    container_id = orchestrator.stdout.readline().strip()
    assert container_id, "the orchestrator did not start its container"
    orchestrator.kill()  # kill -9: no cleanup of any kind runs
    orchestrator.wait()
    client = connect()
    try:
        left = client.containers.list(filters={"id": container_id})
        assert left and left[0].status == "running"  # the crash really left it behind
        if os.geteuid() == 0:
            assert str(tmp_path / "out") in Path("/proc/self/mounts").read_text()
        get_sandbox("docker")  # a new orchestrator starting up
        assert not client.containers.list(all=True, filters={"id": container_id})
    finally:
        for c in client.containers.list(all=True, filters={"id": container_id}):
            c.remove(force=True)
        client.close()
    if os.geteuid() == 0:  # its output tmpfs is unmounted too
        assert str(tmp_path / "out") not in Path("/proc/self/mounts").read_text()


def test_auto_takes_docker_when_the_daemon_answers_else_local(docker_sandbox, monkeypatch):
    assert get_sandbox("auto").name == "docker"
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert get_sandbox("auto").name == "local"
    with pytest.raises(SandboxUnavailable) as e:
        get_sandbox("docker")
    assert "\n" not in str(e.value) and "DOCKER_HOST" in str(e.value)


@pytest.mark.parametrize("program", ["seed", "nanogpt_fork"])
def test_scoring_through_docker_agrees_with_bubblewrap(program, docker_sandbox, sandbox, tiny,
                                                       tmp_path):
    """The honest seed and a user's nanoGPT fork pass every check of the scorer on both
    backends, with the same loss."""
    from darwin.evaluation.trial import train_then_score

    path = seed_program() if program == "seed" else PROGRAMS / "nanogpt_fork.py"
    losses = {}
    for box in (docker_sandbox, sandbox):
        ev = train_then_score(path, tiny, 0, box, tmp_path / box.name)
        assert ev.ok, ev.detail
        assert ev.train.backend == box.name and ev.train.isolated
        checks = ev.score.checks
        assert checks["probes"] == 256 + 64 and checks["verified"] is True, checks
        assert checks["max_diff"] <= checks["tolerance"] and checks["edge"] <= checks["epsilon"]
        assert ev.score.unused == [] and ev.mfu is not None
        losses[box.name] = ev.loss
    assert abs(losses["docker"] - losses["local"]) < 1e-4, losses
    assert losses["docker"] < 3.5


def test_sandbox_check_and_offline_build_from_the_cli(docker_sandbox):
    # "Offline" shown by what it needs and makes, not by a stopwatch: as root the build runs in a
    # network namespace of its own (no network at all; the daemon's unix socket still answers),
    # and the image holds mount points only (a download would weigh hundreds of MB).
    isolate = ["unshare", "--net", "--"] if os.geteuid() == 0 else []
    built = subprocess.run([*isolate, sys.executable, "-m", "darwin.cli", "sandbox", "build",
                            "--offline", "--json"], capture_output=True, text=True)
    assert built.returncode == 0, built.stderr
    row = json.loads(built.stdout)
    assert row["runtime"] == "host" and row["size_mb"] < 1, row
    check = subprocess.run([sys.executable, "-m", "darwin.cli", "sandbox", "check", "--json"],
                           capture_output=True, text=True)
    rows = {r["backend"]: r for r in json.loads(check.stdout)}
    assert rows["docker"]["works"] and rows["docker"]["isolates"], rows["docker"]
    assert rows["local"]["isolates"]


def test_a_dockerfile_build_that_cannot_finish_says_so_in_one_line(docker_sandbox):
    from darwin.sandbox.image import ImageBuildError, build_from_dockerfile

    client = connect()
    try:
        # Fails whether or not a registry is reachable: without one at FROM, with one at pip
        # (nothing listens on port 9). Either way the user gets one line, not a traceback.
        with pytest.raises(ImageBuildError) as e:
            build_from_dockerfile(client, "darwin-sandbox-test:never", torch_version="0.0.0",
                                  torch_index="http://127.0.0.1:9/simple")
    finally:
        client.close()
    message = str(e.value)
    assert message.startswith("docker build failed:") and "\n" not in message
    if "registry" in message:
        assert "--offline" in message


def test_a_bad_image_name_is_one_line_naming_the_setting(docker_sandbox, tmp_path):
    env = {**os.environ, "DARWIN_HOME": str(tmp_path), "DARWIN_DOCKER_IMAGE": "Bad Name"}
    for argv in (["baseline", "--budget", "tiny", "--sandbox", "docker"],
                 ["sandbox", "build", "--offline"]):
        r = subprocess.run([sys.executable, "-m", "darwin.cli", *argv], capture_output=True,
                           text=True, env=env)
        assert r.returncode == 2, r.stderr
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("darwin: error: invalid Docker image name 'Bad Name'")
        assert "DARWIN_DOCKER_IMAGE" in lines[-1] and "Traceback" not in r.stderr


def test_a_daemon_that_goes_away_under_a_sandbox_is_ours_in_one_line(docker_sandbox, tmp_path,
                                                                      monkeypatch):
    """dockerd stopping mid-training is infrastructure: a SandboxInfraError naming the daemon
    (the run stops resumably, the candidate is not blamed), never a ConnectionError traceback
    and never a verdict (no 'timeout' for a container we could not ask about)."""
    from darwin.sandbox import SandboxInfraError
    from tests.tcp_proxy import UnixProxy

    real = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock").removeprefix("unix://")
    proxy = UnixProxy(real, str(tmp_path / "docker.sock"))
    proxy.on()
    monkeypatch.setenv("DOCKER_HOST", proxy.url)
    proc = docker_sandbox.start(_spec(tmp_path, PROGRAMS / "sleeper.py", deadline_s=60,
                                      memory_mb=300))
    try:
        proxy.off()  # the daemon is gone: no answer, open connections cut
        with pytest.raises(SandboxInfraError, match=r"Docker daemon at unix://\S+docker.sock "
                                                    r"stopped answering while a sandbox ran"):
            proc.wait()
        with pytest.raises(SandboxInfraError, match="stopped answering"):
            proc.finish()  # asked again: the same, not a stale or empty result
        assert proc.stdout is None and proc._log.closed and not proc._pump.is_alive()
    finally:
        monkeypatch.setenv("DOCKER_HOST", f"unix://{real}")
        client = connect()
        try:
            client.containers.get(proc.container.id).remove(force=True)
        finally:
            client.close()
