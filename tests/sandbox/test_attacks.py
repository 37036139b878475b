"""The attack suite: every backend that isolates must stop each attack in tests/sandbox/attacks/.

Each attack runs through the real training path (token server, sandbox, deadline) on each backend
and must end in a typed outcome with the host unchanged and no process left. Each also runs once
*unsandboxed* (a plain subprocess with our environment, as a careless harness would run it): there
it must succeed, and every detection a sandboxed run of it is checked with must fire (``detect``
and ``FIRES``). A sandboxed check whose detection no control makes fire is refused
(test_every_detection_has_a_control).

Set DARWIN_ATTACK_REPORT=path to get the table (blocked, outcome, kill-to-nothing-left; for each
control, the detections it made fire) as JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
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
from tests.conftest import HostListener, host_ip, process_holding, processes_named

ATTACKS = Path(__file__).parent / "attacks"
# Small caps so the suite is quick; the mechanisms are the ones every budget uses.
BUDGET = get_budget("tiny").model_copy(update={
    "deadline_s": 3.0, "memory_mb": 512, "max_pids": 64, "max_file_mb": 64, "max_out_mb": 128})
BARE_TIMEOUT_S = 60
PWN = f"pwn-{uuid.uuid4().hex[:8]}.py"  # what write_outside leaves in the runtime and torch

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
    holder: subprocess.Popen | None = None  # a process with the canary in its real environment


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
    with process_holding(canary) as holder:
        yield Host(base=base, listener=listener, ip=ip, canary=canary, secrets=planted,
                   decoy=decoy, holder=holder)
    listener.close()


@pytest.fixture()
def canary_env(host, monkeypatch):
    """The orchestrator holds secrets in its environment, as a real one would (os.environ only:
    /proc/PID/environ of this process never shows them; ``host.holder``'s does)."""
    for key in ("OPENAI_API_KEY", "AWS_SECRET_ACCESS_KEY", "PREFECT_API_AUTH_STRING"):
        monkeypatch.setenv(key, host.canary)


def tree_hash(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file() and not p.is_symlink():
            h.update(p.read_bytes())
    return h.hexdigest()


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
        # The host paths effect() inspects are targets everywhere (the control writes them too,
        # and the test removes them at once); sandbox and system paths only inside a sandbox.
        "write_outside": {"targets": [str(host.decoy / "pwn.py"), str(runtime_dir() / PWN),
                                      str(torch_dir() / PWN)] + ([
            f"/sandbox/lib/{PWN}", f"/sandbox/program/{PWN}", f"/sandbox/{PWN}", "/etc/pwn",
            "/usr/pwn"] if sandboxed else [])},
        "fork_bomb": {"count": 2 * BUDGET.max_pids, "hold_s": 20},
        "daemon": {"live_s": 60},  # found by its name long before; killed by the test
        # It spins well past the deadline and prints when done: a sandbox must stop it before
        # (an ordering, whatever Docker's kill costs on a loaded machine: 1.1 s seen).
        "busy_loop": {"spin_s": BUDGET.deadline_s + 5},
        "memory_hog": {"mb": 2 * BUDGET.memory_mb},
        "disk_filler": {"mb": 2 * BUDGET.max_out_mb},
        "log_flood": {"mb": 4 * BUDGET.max_file_mb},
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
    held: bytes = b""  # what a careless harness kept in memory (the log_flood control)


def run_sandboxed(box, program: Path, run: Path) -> Ran:
    r = train(program, BUDGET, 0, run, box)
    ran = Ran(r.outcome.value, r.returncode, r.wall_s, r.out_dir, r.log_path, r.cleanup_s)
    return ran


def run_bare(program: Path, run: Path, wrap_parent: bool = False, env: dict | None = None,
             capture: bool = False) -> Ran:
    """Unsandboxed, as a careless harness runs it: our environment (or ``env``), our user, host
    paths; with ``capture``, its output read into our memory before it is written to the log."""
    out = run / "out"
    out.mkdir(parents=True)
    log = run / "train.log"
    argv = [sys.executable, str(program)]
    if wrap_parent:  # a sacrificial parent, so killing it harms nothing here
        argv = ["/bin/sh", "-c", f"{sys.executable} {program}; sleep 30"]
    env = {**(os.environ if env is None else env), "DARWIN_OUT_DIR": str(out)}
    started = time.monotonic()
    held = b""
    with open(log, "wb") as f:
        p = subprocess.Popen(argv, cwd=out, env=env, stdout=subprocess.PIPE if capture else f,
                             stderr=subprocess.STDOUT, start_new_session=True)
        try:
            if capture:
                held, _ = p.communicate(timeout=BARE_TIMEOUT_S)
                f.write(held)
            rc = p.wait(timeout=BARE_TIMEOUT_S)
        finally:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return Ran("exited", rc, time.monotonic() - started, out, log, parent_killed=rc == -9,
               held=held)


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
        return any(host.decoy.iterdir()) or runtime_changed(extra) or (torch_dir() / PWN).exists()
    if name == "fork_bomb":
        return f"forked {cfg['count']}" in taken(ran)
    if name == "daemon":
        if extra["left"]:  # alive after the run ended, found by its name
            return True
        beat = ran.out / "heartbeat"  # (as root a sandbox's outputs are out of its reach by then)
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


def arrived(host: Host, cfg: dict, ran: Ran) -> None:
    """Let the listener's threads catch up (they may lag on a loaded machine): until the token
    is in, where the program says it got through, else a short grace for what it did not say."""
    until = time.monotonic() + (10 if re.search(r"^(connected|query sent)$", taken(ran), re.M)
                                else 0.3)
    while cfg["token"].encode() not in host.listener.received and time.monotonic() < until:
        time.sleep(0.05)


def runtime_changed(extra: dict) -> bool:
    return tree_hash(runtime_dir()) != extra["runtime_hash"]


def detect(name: str, cfg: dict, host: Host, ran: Ran, extra: dict) -> dict[str, bool]:
    """Every detection a sandboxed run is checked with, each True when it saw the attack (or a
    bound) get through. A sandboxed run must leave all of them False."""
    found = {
        "effect": effect(name, cfg, host, ran, extra),
        "survivor": bool(extra["left"]),  # a process named as the attack, after the run
        "runtime_changed": runtime_changed(extra),
        "canary_taken": host.canary in taken(ran),
    }
    if name == "busy_loop":  # it ran to its own end: nothing stopped it
        found["not_stopped"] = ran.wall_s >= cfg["spin_s"] or "spun to the end" in taken(ran)
    if name == "log_flood":
        found["log_over_cap"] = ran.log.stat().st_size > BUDGET.max_file_mb << 20
        found["orchestrator_buffered"] = extra["rss_grown_mb"] >= 100
    if name == "disk_filler" and os.geteuid() == 0:
        # As root the output folder is a tmpfs of exactly max_out_mb; without root the cap is a
        # poll, late by whatever one poll lets through (the outcome is still checked).
        found["out_over_cap"] = folder_mb(ran.out) > BUDGET.max_out_mb
    if name == "write_outside":
        found["decoy_written"] = any(host.decoy.iterdir())
        found["torch_written"] = (torch_dir() / PWN).exists()
    if name == "steal_env":  # found through another process' /proc/PID/environ
        found["read_other_environ"] = \
            f"/proc/{host.holder.pid}/environ: OPENAI_API_KEY={host.canary}" in taken(ran)
    return found


# What each unsandboxed control must make fire ("effect" for all: the attack worked).
FIRES = {
    "daemon": {"survivor"},
    "steal_env": {"canary_taken", "read_other_environ"},
    "read_other_candidate": {"canary_taken"},
    "read_credentials": {"canary_taken"},
    "read_prefect_db": {"canary_taken"},
    "link_out": {"canary_taken"},
    "write_outside": {"runtime_changed", "decoy_written", "torch_written"},
    "busy_loop": {"not_stopped"},
    "log_flood": {"log_over_cap", "orchestrator_buffered"},
    "disk_filler": {"out_over_cap"} if os.geteuid() == 0 else set(),
}


def test_every_detection_has_a_control():
    """Each detection the sandboxed runs rely on is made to fire by at least one control."""
    fired = {"effect"}.union(*FIRES.values())
    checked = {"effect", "survivor", "runtime_changed", "canary_taken", "not_stopped",
               "log_over_cap", "orchestrator_buffered", "decoy_written", "torch_written",
               "read_other_environ"} | ({"out_over_cap"} if os.geteuid() == 0 else set())
    assert checked <= fired, checked - fired
    assert set(FIRES) <= set(NAMES)


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
    request.addfinalizer(lambda: shutil.rmtree(run, ignore_errors=True))
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
        elif name == "steal_env":  # without the canary in its own environment: only /proc has it
            clean = {k: v for k, v in os.environ.items() if host.canary not in v}
            ran = run_bare(program, run, env=clean)
        else:
            ran = run_bare(program, run, wrap_parent=name == "kill_parent",
                           capture=name == "log_flood")
        if name in ("net_loopback", "net_external", "dns_lookup"):
            arrived(host, cfg, ran)
        extra["left"] = processes_named(cfg["token"])
        extra["rss_grown_mb"] = rss_mb() - rss_before
        ran.held = b""
        found = detect(name, cfg, host, ran, extra)
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        for pid in processes_named(cfg["token"]):  # the unsandboxed daemon / fork bomb
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for p in (host.decoy / "pwn.py", torch_dir() / PWN, runtime_dir() / PWN):
            p.unlink(missing_ok=True)

    fired = sorted(d for d, hit in found.items() if hit)
    if not sandboxed:
        report_row({"backend": kind, "attack": name, "control_fired": fired})
        must = {"effect"} | FIRES.get(name, set())
        silent = sorted(d for d in must if not found[d])
        assert not silent, f"{name} unsandboxed: {silent} did not fire, so the sandboxed " \
            "checks prove nothing:\n" + taken(ran)[-2000:]
        return
    verdict = ran.failure or ran.outcome
    report_row({"backend": kind, "attack": name, "blocked": not found["effect"],
                "outcome": verdict, "returncode": ran.returncode, "wall_s": round(ran.wall_s, 2),
                "cleanup_s": round(ran.cleanup_s, 3), "survivors": len(extra["left"]),
                "log_mb": round(ran.log.stat().st_size / 2**20, 1)})
    assert not fired, f"{name} got through the {kind} sandbox ({fired}):\n" + taken(ran)[-2000:]
    assert verdict in EXPECTED.get(name, {"crash"}), (name, verdict, taken(ran)[-1000:])
    if name == "busy_loop":  # and it was not stopped before its deadline
        assert ran.wall_s >= BUDGET.deadline_s, ran.wall_s
