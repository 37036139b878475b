"""The local sandbox, tested from inside with small hostile programs.

Each property is also checked to be *detectable*, in the same test: the same program run without
isolation (--sandbox unsafe), or through a sandbox with a deliberate hole, must make the very
detection used on the sandboxed run fire, so these tests can fail.
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
from darwin.evaluation.training import Extras, train
from darwin.sandbox import PKG_DIR, Outcome
from darwin.sandbox.unsafe import UnsafeSandbox
from tests.conftest import PROGRAMS, HostListener, host_ip, process_holding, processes_named

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


def _run_probe(box, tmp_path, budget, monkeypatch, search_root: str,
               extras: Extras | None = None) -> tuple[dict, HostListener]:
    secret = f"sk-canary-{uuid.uuid4().hex}"
    # The orchestrator's own environment (what a sandbox must not inherit)...
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    home_file = Path.home() / f".darwin-test-canary-{uuid.uuid4().hex[:8]}"
    home_file.write_text(secret)
    listener = HostListener()
    val_c, test_c = _canaries()
    work = tmp_path / f"probe-{uuid.uuid4().hex[:6]}"
    host_dir = work / "host-dir"
    host_dir.mkdir(parents=True)
    tag = uuid.uuid4().hex[:8]
    program = work / "probe.py"
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
            TAG=tag,
        )
    )
    try:  # ...and another process's, readable through /proc where processes can see each other
        with process_holding(secret):
            result = train(program, budget, 0, work / "run", box, extras=extras or Extras())
        assert result.outcome is Outcome.ok, result.log_tail()
        report = json.loads((result.out_dir / "result.json").read_text())
        # Every connection the probe says it made must reach the listener's count (its thread
        # may lag on a loaded machine); a short grace for any it did not report.
        made = [report[k] for k in ("loopback", "external")].count("connected")
        until = time.monotonic() + 10
        while listener.connections < made and time.monotonic() < until:
            time.sleep(0.05)
        time.sleep(0.3)
    finally:
        home_file.unlink()
        for outside in ("/usr", "/etc", "/"):  # what the probe wrote unsandboxed, as root
            Path(outside, f"evil-{tag}").unlink(missing_ok=True)
        listener.close()
    report["host_dir_written"] = (host_dir / f"evil-{tag}").exists()
    return report, listener


def _corpus_found(report: dict) -> list[str]:
    name = corpus_path().name
    return [f for f in report["canary_files"] if f.endswith("/" + name)]


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

    # Control 1, the held-out search: the same grep from / in the same sandbox finds the corpus
    # as soon as its folder is visible anywhere (a hole: the data folder mounted where approved
    # packages go). Text files are searched, only binaries skipped.
    holed, _ = _run_probe(sandbox, tmp_path, roomy, monkeypatch, search_root="/",
                          extras=Extras(packages=corpus_path().parent))
    assert _corpus_found(holed) and all(f.startswith(PKG_DIR + "/") for f in _corpus_found(holed)), \
        holed["canary_files"]

    # Control 2, everything else: the same probe unsandboxed finds each thing the sandbox hides,
    # by the same checks (the secret in another process' environment through /proc included).
    bare, listener = _run_probe(UnsafeSandbox(), tmp_path, tiny, monkeypatch,
                                search_root=str(corpus_path().parent))
    assert _corpus_found(bare)
    assert bare["planted_home_file_visible"] is True
    assert bare["secret_visible"] is True  # unsafe mode cleans its own environment: via /proc
    assert bare["loopback"] == "connected" and listener.connections >= 1
    assert bare["wrote_outside"] and bare["host_dir_written"] is True


def test_program_asking_for_more_than_the_budget_gets_none(sandbox, tmp_path, tiny):
    result = train(PROGRAMS / "greedy.py", tiny, 0, tmp_path / "work", sandbox)
    assert result.ok, result.log_tail()
    got = json.loads((result.out_dir / "result.json").read_text())
    assert got == {"first_refused": True, "got": tiny.tokens, "extra_refused": True}
    assert result.tokens_served == tiny.tokens


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


def _sleeper(tmp_path: Path, **config) -> Path:
    program = tmp_path / f"sleeper-{uuid.uuid4().hex[:6]}.py"
    text = (PROGRAMS / "sleeper.py").read_text()
    program.write_text(text.replace('CONFIG = json.loads("{}")',
                                    f"CONFIG = json.loads({json.dumps(json.dumps(config))})"))
    return program


def _kill_all(token: str) -> None:
    for pid in processes_named(token):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass


def test_deadline_kills_everything_it_started(sandbox, tmp_path, tiny):
    budget = tiny.model_copy(update={"deadline_s": 4.0})
    # It would end by itself (printing "lived to the end") well after its deadline: the sandbox
    # must stop it before that, whatever the machine's load.
    life_s = budget.deadline_s + 10
    token = f"slp{uuid.uuid4().hex[:10]}"
    program = _sleeper(tmp_path, token=token, life_s=life_s)
    seen: list[tuple[int, int]] = []
    ns_file = tmp_path / "work" / "out" / "ns.txt"
    done = threading.Event()

    def watch():  # the host's view while it runs: the processes in the sandbox's PID namespace
        while not done.wait(0.1):
            if ns_file.exists() and ns_file.read_text():
                seen.extend(_in_pid_namespace(ns_file.read_text()))

    t = threading.Thread(target=watch)
    t.start()
    try:
        result = train(program, budget, 0, tmp_path / "work", sandbox)
    finally:
        done.set()
        t.join()
        left = processes_named(token)
        _kill_all(token)
    assert result.outcome is Outcome.timeout
    assert budget.deadline_s <= result.wall_s < life_s  # stopped by the deadline, not its own end
    assert "lived to the end" not in result.log_tail()
    # The same scan that must find nothing afterwards found the sandbox's processes while it ran
    # (its own control), and none ran as root on the host.
    assert seen and all(uid != 0 for _, uid in seen), f"host view of sandboxed pids: {seen}"
    assert (result.out_dir / "heartbeat").exists()  # the daemon did run...
    assert _in_pid_namespace(ns_file.read_text()) == [], "a process of the sandbox survived"
    assert left == [], f"the daemon survived the sandbox: {left}"  # ...and is dead now

    # The control for the name scan: unsandboxed, killpg alone lets the setsid grandchild live
    # on, and the scan finds it. (The heartbeat file cannot serve here: as root the sandbox's
    # output folder is a tmpfs copied back at the end, out of a survivor's reach.)
    token = f"slp{uuid.uuid4().hex[:10]}"
    control = _sleeper(tmp_path, token=token, life_s=60)
    try:
        bare = train(control, budget.model_copy(update={"deadline_s": 2.0}), 0,
                     tmp_path / "bare", UnsafeSandbox())
        assert bare.outcome is Outcome.timeout
        assert processes_named(token), "the unsandboxed daemon was not found by its name"
    finally:
        _kill_all(token)
