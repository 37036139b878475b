"""The attack suite: every backend that isolates must stop each attack in tests/sandbox/attacks/.

Each attack runs through the real training path (token server, sandbox, deadline) on each backend
and must end in a typed outcome with the host unchanged and no process left. Each also runs once
*unsandboxed* (a plain subprocess with our environment, as a careless harness would run it) and must
succeed there: proof that the check can fail.

Set DARWIN_ATTACK_REPORT=path to get the table (blocked, outcome, kill-to-nothing-left) as JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from darwin.evaluation.budgets import get_budget
from darwin.evaluation.data import corpus_path
from darwin.evaluation.failures import Rejected
from darwin.evaluation.outputs import collect_outputs
from darwin.evaluation.training import runtime_dir, train
from tests.conftest import HostListener, host_ip

ATTACKS = Path(__file__).parent / "attacks"
# Small caps so the suite is quick; the mechanisms are the ones every budget uses.
BUDGET = get_budget("tiny").model_copy(update={
    "deadline_s": 3.0, "memory_mb": 512, "max_pids": 64, "max_file_mb": 64, "max_out_mb": 128})
BARE_TIMEOUT_S = 60

pytestmark = pytest.mark.sandbox


# -- the host side: a listener, planted secrets, a victim process ------------------------------
@dataclass
class Host:
    base: Path
    listener: HostListener
    ip: str
    canary: str
    secrets: dict[str, Path] = field(default_factory=dict)
    decoy: Path | None = None


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    base = tmp_path_factory.mktemp("attack")
    base.chmod(0o755)
    canary = f"CANARY-{uuid.uuid4().hex}"
    planted = {
        "other_candidate": base / "other" / "out" / "model.safetensors",
        "credentials": base / "home" / ".aws" / "credentials",
        "prefect_db": base / "home" / ".prefect" / "prefect.db",
    }
    for name, path in planted.items():
        path.parent.mkdir(parents=True)
        path.write_text(f"{name} secret {canary}\n")
    decoy = base / "decoy"
    decoy.mkdir()
    ip = host_ip()
    assert not ip.startswith("127."), "this host has no external address to attack"
    listener = HostListener()
    h = Host(base=base, listener=listener, ip=ip, canary=canary, secrets=planted,
             decoy=decoy)
    yield h
    listener.close()


@pytest.fixture()
def canary_env(host, monkeypatch):
    """The orchestrator holds secrets in its environment, as a real one would."""
    for key in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING"):
        monkeypatch.setenv(key, host.canary)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


def survivors(token: str) -> list[int]:
    """Processes on this host still carrying the attack's name (our processes are all visible)."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == token:
                found.append(int(comm.parent.name))
        except OSError:
            pass
    return found


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()) / 2**20


# -- the attacks -------------------------------------------------------------------------------
def torch_dir() -> Path:
    import torch

    return Path(torch.__file__).resolve().parent


def config(name: str, host: Host, run: Path, sandboxed: bool) -> dict:
    corpus = corpus_path().read_bytes()
    at = int(len(corpus) * 0.92)  # inside the validation split (90-95 %)
    val_test = corpus[at : at + 60].decode()
    c = {
        "net_loopback": {"host": "127.0.0.1", "port": host.listener.port},
        "net_external": {"host": host.ip, "port": host.listener.port},
        "dns_lookup": {"name": "example.com", "host": host.ip, "port": host.listener.udp_port},
        "steal_env": {"canary": host.canary},
        "read_val_test": {"paths": [str(corpus_path()), "/sandbox/data/val.bin"],
                          "secret": val_test},
        "read_other_candidate": {"paths": [str(host.secrets["other_candidate"])],
                                 "relative": ["other/out/model.safetensors"]},
        "read_credentials": {"paths": [str(host.secrets["credentials"]),
                                       os.path.expanduser("~/.aws/credentials")]},
        "read_prefect_db": {"paths": [str(host.secrets["prefect_db"]),
                                      os.path.expanduser("~/.prefect/prefect.db")]},
        "write_outside": {"targets": [str(host.decoy / "pwn.py")] + ([
            "/sandbox/lib/pwn.py", "/sandbox/program/pwn.py", "/sandbox/pwn.py",
            f"{runtime_dir()}/pwn.py", f"{torch_dir()}/pwn.py", "/etc/pwn", "/usr/pwn"]
            if sandboxed else [])},
        "fork_bomb": {"count": 2 * BUDGET.max_pids, "hold_s": 20},
        "daemon": {"live_s": 4},
        "busy_loop": {"spin_s": 2 * BUDGET.deadline_s},
        "memory_hog": {"mb": 2 * BUDGET.memory_mb},
        "disk_filler": {"mb": 2 * BUDGET.max_out_mb},
        "log_flood": {"mb": 1024},
        "kill_parent": {"victim_pid": 0},  # filled in per run
        "link_out": {"secret": str(host.secrets["credentials"])},
    }[name]
    return {**c, "token": f"atk{uuid.uuid4().hex[:10]}"}


PROGRAM = {"net_loopback": "net_connect", "net_external": "net_connect",
           "read_val_test": "read_files", "read_other_candidate": "read_files",
           "read_credentials": "read_files", "read_prefect_db": "read_files"}
NAMES = ["net_loopback", "net_external", "dns_lookup", "steal_env", "read_val_test",
         "read_other_candidate", "read_credentials", "read_prefect_db", "write_outside",
         "fork_bomb", "daemon", "busy_loop", "memory_hog", "disk_filler", "log_flood",
         "kill_parent", "link_out"]


def write_program(name: str, cfg: dict, dest: Path) -> Path:
    common = (ATTACKS / "_common.py").read_text()
    line = next(x for x in common.splitlines() if x.startswith("CONFIG ="))
    common = common.replace(line, f"CONFIG = json.loads({json.dumps(json.dumps(cfg))})")
    body = (ATTACKS / f"{PROGRAM.get(name, name)}.py").read_text()
    dest.write_text(common + "\n" + body)
    dest.chmod(0o644)
    return dest


@dataclass
class Ran:
    outcome: str  # the sandbox's outcome, or how a bare process ended
    returncode: int | None
    wall_s: float
    out: Path
    log: Path
    cleanup_s: float = 0.0
    failure: str | None = None  # the trusted collector's verdict (link_out)
    parent_killed: bool = False


def run_sandboxed(box, program: Path, run: Path) -> Ran:
    r = train(program, BUDGET, 0, run, box)
    ran = Ran(r.outcome.value, r.returncode, r.wall_s, r.out_dir, r.log_path, r.cleanup_s)
    return ran


def run_bare(program: Path, run: Path, wrap_parent: bool = False) -> Ran:
    """Unsandboxed, as a careless harness runs it: our environment, our user, host paths."""
    out = run / "out"
    out.mkdir(parents=True)
    log = run / "train.log"
    argv = [sys.executable, str(program)]
    if wrap_parent:  # a sacrificial parent, so killing it harms nothing here
        argv = ["/bin/sh", "-c", f"{sys.executable} {program}; sleep 30"]
    started = time.monotonic()
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, cwd=out, env={**os.environ, "DARWIN_OUT_DIR": str(out)},
                             stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = p.wait(timeout=BARE_TIMEOUT_S)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return Ran("exited", rc, time.monotonic() - started, out, log, parent_killed=rc == -9)


def taken(ran: Ran) -> str:
    """Everything a harness would pick up from the run: output files and the log."""
    text = ""
    for p in [ran.log, *sorted(ran.out.rglob("*"))]:
        if p.is_file() and not p.is_symlink():
            with open(p, "rb") as f:
                text += f.read(8 << 20).decode(errors="replace")
    return text


# -- what "the attack worked" means, seen from the host ----------------------------------------
def effect(name: str, cfg: dict, host: Host, ran: Ran, extra: dict) -> bool:
    if name in ("net_loopback", "net_external", "dns_lookup"):
        return cfg["token"].encode() in host.listener.received
    if name == "steal_env":
        return host.canary in taken(ran)
    if name == "read_val_test":
        return cfg["secret"] in taken(ran)
    if name.startswith("read_"):
        return host.canary in taken(ran)
    if name == "write_outside":
        return any(host.decoy.iterdir()) or extra["runtime_hash"] != tree_hash(runtime_dir()) \
            or (torch_dir() / "pwn.py").exists()
    if name == "fork_bomb":
        return f"forked {cfg['count']}" in taken(ran)
    if name == "daemon":
        beat = ran.out / "heartbeat"
        if not beat.exists():
            return False
        before = beat.read_text()
        time.sleep(0.6)
        return beat.exists() and beat.read_text() != before  # still beating after the run ended
    if name == "busy_loop":
        return ran.outcome == "exited" and ran.returncode == 0 and ran.wall_s >= cfg["spin_s"]
    if name == "memory_hog":
        return f"allocated {cfg['mb']} MB" in taken(ran)
    if name == "disk_filler":
        return folder_mb(ran.out) >= cfg["mb"]
    if name == "log_flood":
        return ran.log.stat().st_size >= cfg["mb"] << 20
    if name == "kill_parent":
        return extra["victim"].poll() is not None or ran.parent_killed
    if name == "link_out":
        if extra.get("collected") is not None:  # sandboxed: did the secret reach our side?
            return host.canary in "".join(p.read_text(errors="replace")
                                          for p in extra["collected"].glob("*") if p.is_file())
        model, code = ran.out / "model.safetensors", ran.out / "model.py"
        return (model.is_symlink() and host.canary in model.read_text()) or (
            code.exists() and code.stat().st_nlink > 1 and host.canary in code.read_text())
    raise AssertionError(name)


# The typed outcome each attack must end in under a sandbox.
EXPECTED = {
    "busy_loop": {"timeout"},
    "memory_hog": {"oom"},
    "disk_filler": {"disk"},
    "log_flood": {"disk"},
    "daemon": {"ok"},
    "kill_parent": {"ok", "crash"},
    "link_out": {"bad_output"},
}


def report_row(row: dict) -> None:
    path = os.environ.get("DARWIN_ATTACK_REPORT")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(row) + "\n")


@pytest.fixture(params=["local", "docker", "unsandboxed"])
def runner(request):
    from tests.conftest import require_sandbox

    if request.param == "unsandboxed":
        return "unsandboxed", None
    return request.param, require_sandbox(request.param)


@pytest.mark.parametrize("name", NAMES)
def test_attack(name, runner, host, canary_env, tmp_path, request):
    kind, box = runner
    sandboxed = box is not None
    run = host.base / f"{name}-{kind}-{uuid.uuid4().hex[:6]}"
    run.mkdir()
    request.addfinalizer(lambda: shutil.rmtree(run, ignore_errors=True))  # up to a GB of flood
    cfg = config(name, host, run, sandboxed)
    extra: dict = {"runtime_hash": tree_hash(runtime_dir())}
    victim = None
    if name == "kill_parent":
        victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
        cfg["victim_pid"] = victim.pid
        extra["victim"] = victim
    program = write_program(name, cfg, tmp_path / f"{name}.py")
    rss_before = rss_mb()
    try:
        if sandboxed:
            ran = run_sandboxed(box, program, run)
            if name == "link_out" and ran.outcome == "ok":
                extra["collected"] = tmp_path / "collected"
                try:
                    collect_outputs(ran.out, extra["collected"])
                except Rejected as r:
                    ran.failure = r.failure.value
        else:
            ran = run_bare(program, run, wrap_parent=name == "kill_parent")
        left = survivors(cfg["token"])
        worked = effect(name, cfg, host, ran, extra)
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        for pid in survivors(cfg["token"]):  # the unsandboxed daemon / fork bomb
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in (host.decoy / "pwn.py", torch_dir() / "pwn.py", runtime_dir() / "pwn.py"):
            p.unlink(missing_ok=True)

    if not sandboxed:
        assert worked, f"{name} did not work even unsandboxed, so the test proves nothing:\n" \
            + taken(ran)[-2000:]
        return
    verdict = ran.failure or ran.outcome
    report_row({"backend": kind, "attack": name, "blocked": not worked, "outcome": verdict,
                "returncode": ran.returncode, "wall_s": round(ran.wall_s, 2),
                "cleanup_s": round(ran.cleanup_s, 3), "survivors": len(left),
                "log_mb": round(ran.log.stat().st_size / 2**20, 1)})
    assert not worked, f"{name} got through the {kind} sandbox:\n" + taken(ran)[-2000:]
    assert left == [], f"{name}: processes left after the {kind} sandbox ended: {left}"
    assert verdict in EXPECTED.get(name, {"crash"}), (name, verdict, taken(ran)[-1000:])
    assert tree_hash(runtime_dir()) == extra["runtime_hash"]
    assert host.canary not in taken(ran)
    if name == "busy_loop":
        # Docker's wall time ends when its kill API call returns: on a loaded 2-core machine that
        # call alone took 1.1 s once (wall 4.12 s for a 3 s deadline), so Docker gets 2 s of slack.
        slack = 2.0 if kind == "docker" else 1.0
        assert ran.wall_s < BUDGET.deadline_s + slack and ran.cleanup_s < 5.0
    if name == "log_flood":
        assert ran.log.stat().st_size <= BUDGET.max_file_mb << 20
        assert rss_mb() - rss_before < 100, "the orchestrator buffered the flood"
    if name == "disk_filler":
        assert folder_mb(ran.out) < BUDGET.max_out_mb + 256
