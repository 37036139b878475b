"""The local sandbox, tested from inside with small hostile programs.

Each property is also checked to be *detectable*: the same probe run without isolation
(--sandbox unsafe) must see what the sandbox hides, so these tests can fail.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from pathlib import Path

import pytest

from darwin.evaluation.data import corpus_path, load_dataset
from darwin.evaluation.training import train
from darwin.sandbox import Outcome
from darwin.sandbox.unsafe import UnsafeSandbox
from tests.conftest import PROGRAMS, HostListener, host_ip

pytestmark = pytest.mark.sandbox


def _canaries() -> tuple[str, str]:
    text = corpus_path().read_text()
    ds = load_dataset()
    n_train, n_val = len(ds.train), len(ds.val)
    train_text = text[:n_train]

    def long_line(start: int, end: int) -> str:  # grep -F takes one pattern per line
        return next(line for line in text[start:end].splitlines()[1:] if len(line) >= 40)[:40]

    val_c = long_line(n_train, n_train + n_val)
    test_c = long_line(n_train + n_val, len(text))
    assert val_c not in train_text and test_c not in train_text
    return val_c, test_c


def _fill(template: str, **values: str) -> str:
    for key, value in values.items():
        template = template.replace(f"@@{key}@@", value)
    assert "@@" not in template
    return template


def _run_probe(box, tmp_path, tiny, monkeypatch, search_root: str) -> tuple[dict, HostListener]:
    secret = f"sk-canary-{uuid.uuid4().hex}"
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    home_file = Path.home() / f".darwin-test-canary-{uuid.uuid4().hex[:8]}"
    home_file.write_text(secret)
    listener = HostListener()
    val_c, test_c = _canaries()
    host_dir = tmp_path / "host-dir"
    host_dir.mkdir()
    program = tmp_path / "probe.py"
    program.write_text(
        _fill(
            (PROGRAMS / "probe.py").read_text(),
            VAL_CANARY=repr(val_c),
            TEST_CANARY=repr(test_c),
            HOME_FILE=str(home_file),
            SECRET=secret,
            PORT=str(listener.port),
            HOST_IP=host_ip(),
            HOST_DIR=str(host_dir),
            SEARCH_ROOT=search_root,
        )
    )
    try:
        result = train(program, tiny, 0, tmp_path / "work", box)
    finally:
        home_file.unlink()
        time.sleep(0.3)
        listener.close()
    assert result.outcome is Outcome.ok, result.log_tail()
    report = json.loads((result.out_dir / "result.json").read_text())
    report["host_dir_written"] = (host_dir / "evil").exists()
    return report, listener


def test_probe_sees_nothing_it_must_not(sandbox, tmp_path, tiny, monkeypatch):
    # Grepping every visible file takes 20-60+ s on a machine whose /usr holds several GB (cold
    # cache, the other test worker busy): the probe gets a deadline its search fits in.
    roomy = tiny.model_copy(update={"deadline_s": 300.0})
    report, listener = _run_probe(sandbox, tmp_path, roomy, monkeypatch, search_root="/")
    assert report["canary_files"] == [], "val/test text visible inside the sandbox"
    assert report["planted_home_file_visible"] is False
    assert report["secret_visible"] is False
    assert report["loopback"] != "connected" and report["external"] != "connected"
    assert report["dns"] != "resolved"
    assert listener.connections == 0
    assert report["wrote_outside"] == [] and not report["host_dir_written"]
    # (the host's view of the uid is checked in test_deadline_kills_everything_it_started)


def test_probe_without_isolation_sees_everything(tmp_path, tiny, monkeypatch):
    """The control: the same probe, unsandboxed, finds each thing the sandbox hides."""
    data_dir = str(corpus_path().parent)
    report, listener = _run_probe(UnsafeSandbox(), tmp_path, tiny, monkeypatch, data_dir)
    assert any(f.endswith("tinyshakespeare.txt") for f in report["canary_files"])
    assert report["planted_home_file_visible"] is True
    assert report["secret_visible"] is False  # unsafe mode still cleans the environment...
    assert report["loopback"] == "connected" and listener.connections >= 1
    assert report["host_dir_written"] is True


def test_program_asking_for_more_than_the_budget_gets_none(sandbox, tmp_path, tiny):
    result = train(PROGRAMS / "greedy.py", tiny, 0, tmp_path / "work", sandbox)
    assert result.ok, result.log_tail()
    got = json.loads((result.out_dir / "result.json").read_text())
    assert got == {"first_refused": True, "got": tiny.tokens, "extra_refused": True}
    assert result.tokens_served == tiny.tokens


def _processes_with(marker: str) -> list[tuple[int, int]]:
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if marker.encode() in cmd and b"bwrap" not in cmd and b"unshare" not in cmd:
            uid = int(next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1])
            found.append((int(pid), uid))
    return found


def _in_pid_namespace(ns: str) -> list[tuple[int, int]]:
    """Host pids (and uids) of the processes in one PID namespace."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ns:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith("Z"):
            continue  # a zombie is dead; it only waits for the host's init to reap it
        found.append((int(pid), int(fields["Uid"].split()[0])))
    return found


def test_deadline_kills_everything_it_started(sandbox, tmp_path, tiny):
    budget = tiny.model_copy(update={"deadline_s": 4.0})
    program = tmp_path / f"sleeper_{uuid.uuid4().hex[:8]}.py"
    program.write_text((PROGRAMS / "sleeper.py").read_text())
    seen: list[tuple[int, int]] = []
    ns_file = tmp_path / "work" / "out" / "ns.txt"

    def watch():  # the host's view while it runs: the processes in the sandbox's PID namespace
        for _ in range(30):
            if ns_file.exists() and ns_file.read_text():
                seen.extend(_in_pid_namespace(ns_file.read_text()))
            time.sleep(0.1)

    t = threading.Thread(target=watch)
    t.start()
    started = time.monotonic()
    result = train(program, budget, 0, tmp_path / "work", sandbox)
    elapsed = time.monotonic() - started
    t.join()
    assert result.outcome is Outcome.timeout
    assert elapsed < budget.deadline_s + 3
    assert seen and all(uid != 0 for _, uid in seen), f"host view of sandboxed pids: {seen}"
    heartbeat = result.out_dir / "heartbeat"
    assert heartbeat.exists()  # the daemon did run...
    size = heartbeat.stat().st_size
    time.sleep(0.6)
    assert heartbeat.stat().st_size == size  # ...and is dead now
    assert _in_pid_namespace(ns_file.read_text()) == [], "a process of the sandbox survived"


def test_unsafe_mode_kill_misses_a_setsid_daemon(tmp_path, tiny):
    """The control for the test above: killpg alone lets the setsid grandchild live on."""
    budget = tiny.model_copy(update={"deadline_s": 2.0})
    result = train(PROGRAMS / "sleeper.py", budget, 0, tmp_path / "work", UnsafeSandbox())
    assert result.outcome is Outcome.timeout
    heartbeat = result.out_dir / "heartbeat"
    size = heartbeat.stat().st_size
    time.sleep(0.5)
    try:
        assert heartbeat.stat().st_size > size  # still beating: it escaped
    finally:  # the escaped daemon runs the copy of the program in the run's folder
        marker = str(tmp_path / "work" / "program")
        for pid, _ in _processes_with(marker):
            os.kill(pid, 9)
        for _ in range(50):
            if not _processes_with(marker):
                break
            time.sleep(0.05)
