"""Shared fixtures and helpers. Sandbox tests need bubblewrap (and Docker tests a Docker daemon);
where one is missing they are skipped, unless DARWIN_REQUIRE_SANDBOX=1 / DARWIN_REQUIRE_DOCKER=1
(CI sets both) turn that skip into a failure.

A run of the suite that leaves a new untracked file in the checkout fails (see
``pytest_sessionfinish``): tests write under their temporary folders, never into the cwd."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from darwin.evaluation.budgets import get_budget

PROGRAMS = Path(__file__).parent / "sandbox" / "programs"
CHECKOUT = Path(__file__).resolve().parents[1]
_UNTRACKED_BEFORE = pytest.StashKey[set | None]()  # what the checkout held as the run began


def untracked_files(root: Path) -> set[str] | None:
    """The untracked, not ignored files under ``root`` (paths relative to it), or None where
    ``root`` is not the top of a git work tree (an unpacked sdist, no git at all)."""
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"],
                             capture_output=True, text=True, timeout=60)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != root.resolve():
            return None
        listed = subprocess.run(["git", "-C", str(root), "ls-files", "--others",
                                 "--exclude-standard", "-z"],
                                capture_output=True, text=True, timeout=120, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return {p for p in listed.stdout.split("\0") if p}


def _controller(config) -> bool:
    """Whether this process runs the session as a whole: pytest-xdist's workers each run a part
    of it (and carry ``workerinput``); the controller sees it begin and end."""
    return not hasattr(config, "workerinput")


def pytest_sessionstart(session):
    if _controller(session.config):
        session.config.stash[_UNTRACKED_BEFORE] = untracked_files(CHECKOUT)


def pytest_sessionfinish(session, exitstatus):
    """Fail the run when it left a new untracked file in the checkout (files that were there
    before it began are not its doing)."""
    if not _controller(session.config):
        return
    before = session.config.stash.get(_UNTRACKED_BEFORE, None)
    if before is None:
        return
    left = sorted((untracked_files(CHECKOUT) or set()) - before)
    if not left:
        return
    lines = [f"the tests left {len(left)} new untracked file(s) in the checkout {CHECKOUT}:",
             *(f"  {p}" for p in left),
             "write under tmp_path (or ignore the file in .gitignore if it belongs there)"]
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.ensure_newline()
        reporter.write_sep("=", "files left in the checkout", red=True)
        for line in lines:
            reporter.write_line(line)
    else:
        print("\n".join(lines))
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


DARWIN = [sys.executable, "-m", "darwin.cli"]  # this interpreter, so this checkout's code


def cli_env(home: Path | None = None, *, prefect: dict | Path | None = None,
            **extra: str) -> dict:
    """The environment of a ``darwin`` subprocess: this process's, and on top of it

    - ``DARWIN_HOME=home`` where given (else the worker's own, see ``worker_darwin_home``);
    - ``prefect``: the ``prefect_server`` fixture's dict (its API URL and PREFECT_HOME), or a
      folder, the PREFECT_HOME of a Prefect the command runs itself, with any PREFECT_API_URL of
      the shell dropped so that it reaches no server; None leaves the shell's Prefect settings;
    - ``OPENAI_API_KEY`` empty, so no real key from the shell is ever used (a test's scripted
      server passes its own in ``extra``), and no ``DARWIN_FAULT`` but one a test names;
    - ``extra``: any further variables, which win over all of the above."""
    env = {k: v for k, v in os.environ.items() if k != "DARWIN_FAULT"}
    env["OPENAI_API_KEY"] = ""
    if home is not None:
        env["DARWIN_HOME"] = str(home)
    if isinstance(prefect, dict):
        env.update(PREFECT_API_URL=prefect["url"], PREFECT_HOME=prefect["home"])
    elif prefect is not None:
        env.pop("PREFECT_API_URL", None)
        env["PREFECT_HOME"] = str(prefect)
    env.update(extra)
    return env


def run_darwin(args: Sequence[str], env: dict, timeout: float = 600,
               cwd: Path | None = None) -> subprocess.CompletedProcess:
    """``darwin ARGS`` as a user runs it: a real subprocess, its output captured as text, stdin
    closed (a command that asks for input fails at once instead of waiting for the timeout)."""
    return subprocess.run([*DARWIN, *args], env=env, cwd=cwd, text=True,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)


def require_sandbox(name: str):
    """The backend ``name``, or a skip where it is unavailable; CI turns those skips into failures
    (DARWIN_REQUIRE_SANDBOX=1 for the local backend, DARWIN_REQUIRE_DOCKER=1 for Docker)."""
    from darwin.sandbox import SandboxUnavailable, get_sandbox

    try:
        return get_sandbox(name)
    except SandboxUnavailable as e:
        flag = "DARWIN_REQUIRE_DOCKER" if name == "docker" else "DARWIN_REQUIRE_SANDBOX"
        if os.environ.get(flag) == "1":
            pytest.fail(f"{name} sandbox required ({flag}=1) but unavailable: {e}")
        pytest.skip(f"no {name} sandbox here: {e}")


@pytest.fixture(scope="session", autouse=True)
def worker_darwin_home(tmp_path_factory):
    """Each pytest-xdist worker gets a DARWIN_HOME of its own: a subfolder, named after the worker,
    of the one CI sets for the whole run (.ci/run), or of the session's temporary folder where
    none is set. Runs, scratch folders and package layers of two workers never meet."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    base = os.environ.get("DARWIN_HOME")
    home = (Path(base) if base else tmp_path_factory.getbasetemp() / "darwin-home") / worker
    home.mkdir(parents=True, exist_ok=True)
    patch = pytest.MonkeyPatch()
    patch.setenv("DARWIN_HOME", str(home))
    yield home
    patch.undo()


def processes_named(token: str) -> list[int]:
    """Live processes on this host whose name (/proc/PID/comm) is ``token``: a test program names
    itself so, and every process it forks inherits the name, inside a sandbox or not (the host
    sees every pid). Zombies are dead and not counted."""
    found = []
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() != token:
                continue
            stat = (comm.parent / "stat").read_text()
        except OSError:
            continue
        if stat[stat.rindex(")") + 2] not in "ZX":
            found.append(int(comm.parent.name))
    return found


@contextlib.contextmanager
def process_holding(secret: str):
    """A real process (an orchestrator stand-in) with ``secret`` in its environment, so it shows
    in /proc/PID/environ. (``monkeypatch.setenv`` never does: /proc shows the environment a
    process started with, not later changes.)"""
    env = {"PATH": "/usr/bin:/bin", "OPENAI_API_KEY": secret, "AWS_SECRET_ACCESS_KEY": secret}
    proc = subprocess.Popen(["sleep", "3600"], env=env, start_new_session=True)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def sandbox():
    return require_sandbox("local")


@pytest.fixture(scope="session")
def docker_sandbox():
    return require_sandbox("docker")


@pytest.fixture(scope="session")
def tiny():
    return get_budget("tiny")


@pytest.fixture()
def darwin_home(tmp_path, monkeypatch):
    home = tmp_path / "darwin-home"
    monkeypatch.setenv("DARWIN_HOME", str(home))
    return home


@pytest.fixture()
def llm_server():
    """A real HTTP OpenAI-compatible server on 127.0.0.1 with scripted answers."""
    from darwin.llm.devserver import ScriptedLLMServer

    key = f"sk-canary-{os.urandom(8).hex()}"
    with ScriptedLLMServer(api_key=key) as server:
        server.key = key
        yield server


@pytest.fixture()
def llm_settings(llm_server):
    from darwin.settings import LLMSettings

    return LLMSettings(base_url=llm_server.url, api_key=llm_server.key, model="gpt-4o-mini",
                       timeout_s=3.0, max_retries=1)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server (SQLite, its own PREFECT_HOME, a free port) for the session, with
    its UI (the screenshot test looks at it)."""
    import signal
    import subprocess
    import sys
    import time
    import urllib.request

    home = tmp_path_factory.mktemp("prefect-home")
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "PREFECT_API_URL": url, "PREFECT_SERVER_LOGGING_LEVEL": "WARNING"}
    prefect = Path(sys.executable).parent / "prefect"
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port",
                             str(port)], env=env, stdout=log, stderr=log,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.read().strip() == b"true":
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Prefect server did not start: {(home / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield {"url": url, "home": str(home), "ui": url.removesuffix("/api")}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@contextlib.contextmanager
def _atomic_s3_writes():
    """Make moto's writes atomic, as real S3's are. moto's ``put_object`` checks ``If-Match`` /
    ``If-None-Match`` and then writes, with no lock between (moto/s3/responses.py), so two
    conditional PUTs that read the same ETag can both pass: the store's compare-and-swap would
    then lose updates on the test harness, never on S3. One lock around each write (moto runs
    in this process, on threads) restores the contract the store relies on; nothing of
    DARWIN's own code is changed, and the no-CAS control still loses updates."""
    from moto.s3.responses import S3Response

    lock = threading.Lock()
    originals = {name: getattr(S3Response, name) for name in ("put_object", "delete_object")}

    def serialised(original):
        def write(self, *args, **kwargs):
            with lock:
                return original(self, *args, **kwargs)
        return write

    for name, original in originals.items():
        setattr(S3Response, name, serialised(original))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(S3Response, name, original)


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 API), with a versioned bucket and writes
    as atomic as S3's (see _atomic_s3_writes)."""
    from moto.server import ThreadedMotoServer

    stack = contextlib.ExitStack()
    stack.enter_context(_atomic_s3_writes())
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    url = f"http://127.0.0.1:{port}"
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=url, key="testing", secret="testing")
    fs.mkdir("darwin-test")
    fs.make_bucket_versioned("darwin-test")
    yield {"endpoint": url, "bucket": "darwin-test"}
    server.stop()
    stack.close()


@pytest.fixture(params=["local", "s3"])
def storage_url(request, tmp_path):
    """A run store on each backend: a local folder, and a fresh prefix on moto's S3."""
    import uuid

    if request.param == "local":
        return str(tmp_path / "runs")
    env = request.getfixturevalue("s3_env")
    return f"s3://{env['bucket']}/runs-{uuid.uuid4().hex[:8]}"


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """The standard AWS variables pointing at the moto server (what a user would export)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server["endpoint"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches clients per settings
    return s3_server


def host_ip() -> str:
    """This host's outward address (what a sandboxed program would try instead of 127.0.0.1)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing address
        return s.getsockname()[0]
    except OSError:
        return socket.gethostbyname(socket.gethostname())
    finally:
        s.close()


class HostListener:
    """TCP and UDP listeners on all of the host's addresses that count connections and remember
    every byte they receive: what a sandboxed program must never reach."""

    def __init__(self):
        self.connections = 0
        self.received = bytearray()
        self.tcp = socket.create_server(("0.0.0.0", 0))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("0.0.0.0", 0))
        self.port, self.udp_port = self.tcp.getsockname()[1], self.udp.getsockname()[1]
        self._stop = False
        self._threads = [threading.Thread(target=t, daemon=True) for t in (self._tcp, self._udp)]
        for t in self._threads:
            t.start()

    def _tcp(self):
        self.tcp.settimeout(0.2)
        while not self._stop:
            try:
                conn, _ = self.tcp.accept()
            except OSError:
                continue
            self.connections += 1
            with conn:
                conn.settimeout(2)
                try:
                    while data := conn.recv(4096):
                        self.received += data
                except OSError:
                    pass

    def _udp(self):
        self.udp.settimeout(0.2)
        while not self._stop:
            try:
                self.received += self.udp.recv(4096)
            except OSError:
                continue

    def close(self):
        self._stop = True
        for t in self._threads:
            t.join()
        self.tcp.close()
        self.udp.close()
