"""The Docker sandbox: a fresh, locked-down container per run, through the docker SDK.

Every container: no network at all (``network_mode="none"``: the default bridge reached the host
when measured), read-only root, a small tmpfs /tmp, every capability dropped, no-new-privileges, a
non-root user, memory capped with swap included, a pids cap, pinned CPUs, a file-size ulimit, an
init process that reaps orphans, no log driver (output streams to us and is capped here, so a log
flood fills neither the daemon's disk nor our memory). Only the spec's mounts are visible: the
program and our helpers read-only, one writable output folder, the token socket. Never val/test,
never our environment or credentials.

The deadline is ours: past it the container is killed and removed. Containers carry labels with the
orchestrator's host and pid, so a later start-up removes what a crashed orchestrator left behind.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

import requests

from darwin.sandbox.base import (
    SANDBOX_UID,
    Handover,
    OutputGuard,
    Releasable,
    SandboxInfraError,
    SandboxResult,
    SandboxSpec,
    SandboxUnavailable,
    base_env,
    classify,
    held,
    prepare_outputs,
    schedule_tree,
)
from darwin.sandbox.image import DEFAULT_IMAGE, ensure_image, image_runtime
from darwin.sandbox.limits import OutputCap, pid_alive, reap_stale_output_mounts
from darwin.sandbox.local import ETC_FILES, SYSTEM_DIRS, PythonRuntime

log = logging.getLogger(__name__)

LABEL = "io.darwin.sandbox"
OWNER_HOST = "io.darwin.owner-host"
OWNER_PID = "io.darwin.owner-pid"
RUN_LABEL = "io.darwin.label"
TMP_MB = 256


def connect():
    """A client for the daemon the ecosystem's variables name (DOCKER_HOST...), or a clear reason."""
    try:
        import docker
    except ImportError:
        raise SandboxUnavailable("the docker package is missing: pip install docker") from None
    try:
        client = docker.from_env(timeout=120)
        client.ping()
    except docker.errors.DockerException as e:
        text = str(e)
        where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
        if "FileNotFoundError" in text or "No such file" in text:
            reason = f"nothing at {where}"
        elif "PermissionError" in text or "Permission denied" in text:
            reason = f"permission denied on {where}: join the docker group, or run as root"
        elif "Connection refused" in text or "ConnectionRefused" in text:
            reason = f"connection refused at {where}"
        else:
            reason = text.split(": ", 1)[-1][:160]
        raise SandboxUnavailable(
            f"no Docker daemon answers ({reason}): start dockerd or set DOCKER_HOST, "
            "or use --sandbox local"
        ) from None
    return client


def daemon_lost(error: Exception) -> SandboxInfraError:
    """The daemon went away under a sandbox (dockerd stopped or restarted): ours to fix, never
    the candidate's, so nothing is recorded for it and the run stops resumably."""
    where = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    text = str(error)
    cause = next((words for marks, words in (
        (("ConnectionRefused", "Connection refused"), "connection refused"),
        (("ConnectionReset", "Connection reset"), "connection reset"),
        (("FileNotFoundError", "No such file"), "its socket is gone"),
        (("Connection aborted", "RemoteDisconnected"), "connection closed"),
    ) if any(m in text for m in marks)), type(error).__name__)
    return SandboxInfraError(f"the Docker daemon at {where} stopped answering while a sandbox "
                             f"ran ({cause}): start it again (dockerd)")


def reap_stale_containers(client) -> int:
    """Remove containers that orchestrators on this host left behind when they died (kill -9)."""
    import docker

    removed = 0
    host = socket.gethostname()
    # The low-level listing: containers of live orchestrators come and go while we look.
    for c in client.api.containers(all=True, filters={"label": [LABEL, f"{OWNER_HOST}={host}"]}):
        pid = (c.get("Labels") or {}).get(OWNER_PID, "")
        if pid.isdigit() and pid_alive(int(pid)):
            continue
        try:
            client.api.remove_container(c["Id"], force=True)
            removed += 1
        except docker.errors.APIError:
            # Another reaper (a dead run's watchdog) may be removing it right now: wait until
            # it is gone, so that "reaped" means gone when this returns.
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                try:
                    client.api.inspect_container(c["Id"])
                except docker.errors.NotFound:
                    break
                time.sleep(0.1)
    if removed:
        log.warning("removed %d sandbox container(s) left by a crashed orchestrator", removed)
    return removed


class _SocketWriter:
    """The container's stdin: writes go to the attach socket; close() sends EOF."""

    def __init__(self, sock):
        self._sock = getattr(sock, "_sock", sock)

    def write(self, data: bytes) -> int:
        self._sock.sendall(data)
        return len(data)

    def flush(self) -> None:
        pass

    def close(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class DockerProcess(Releasable):
    """A started container, with the same surface as ``SandboxProcess``."""

    def __init__(self, client, container, attach, spec: SandboxSpec, pipe: bool,
                 output_cap: OutputCap | None = None, handover: Handover | None = None):
        self.client = client
        self.handover = handover
        self.container = container
        self.spec = spec
        self.backend = "docker"
        self.isolated = True
        self.started = time.monotonic()
        self.timed_out = False
        self.log_overflow = False
        self._attach = attach
        self._finished = False
        self._lost: Exception | None = None
        # Unbuffered: the trusted side stamps each loss line as it appears in this file
        # (evaluation/curves.py); a buffer would hold every line until the container ends.
        self._log = open(spec.log_path, "wb", buffering=0) if spec.log_path else None
        self._log_left = spec.max_file_mb << 20
        self._out_w: int | None = None
        self.stdout = None
        self.stdin = None
        if pipe:
            r, self._out_w = os.pipe()
            self.stdout = os.fdopen(r, "rb")
            self.stdin = _SocketWriter(attach)
        self._pump = threading.Thread(target=self._pump_output, name="darwin-docker-output",
                                      daemon=True)
        self._pump.start()
        self._outputs = OutputGuard(spec, self.kill, output_cap)

    # The attach stream multiplexes stdout and stderr; in pipe mode stdout is the protocol, the
    # rest goes to the log file, capped like the local backend's file-size limit. The stream is
    # drained to its end whatever happens: the daemon blocks the container (and its own API calls
    # for it) while output is not read.
    def _pump_output(self) -> None:
        from docker.utils.socket import STDOUT, frames_iter

        try:
            for stream, data in frames_iter(self._attach, tty=False):
                if stream == STDOUT and self._out_w is not None:
                    try:
                        os.write(self._out_w, data)
                    except OSError:
                        pass  # the reader went away; keep draining
                    continue
                if self._log is None or self.log_overflow:
                    continue
                if len(data) > self._log_left:
                    self._log.write(data[: self._log_left])
                    self._log_left = 0
                    self.log_overflow = True
                    threading.Thread(target=self.kill, daemon=True).start()
                    continue
                self._log.write(data)
                self._log_left -= len(data)
        except (OSError, ValueError):
            pass  # the connection closed under us: the container is gone
        finally:
            if self._out_w is not None:
                os.close(self._out_w)
                self._out_w = None

    def remaining(self) -> float:
        return self.spec.deadline_s - (time.monotonic() - self.started)

    def alive(self) -> bool:
        import docker

        try:
            self.container.reload()
        except docker.errors.NotFound:
            return False
        except requests.exceptions.ConnectionError as e:
            raise daemon_lost(e) from None
        return self.container.status in ("created", "running")

    def pin(self, cpus: list[int]) -> None:
        try:
            self.container.update(cpuset_cpus=",".join(str(c) for c in cpus))
        except requests.exceptions.ConnectionError as e:
            raise daemon_lost(e) from None

    def root_pid(self) -> int | None:
        """The container's first process, as the host sees it."""
        import docker

        try:
            self.container.reload()
        except docker.errors.NotFound:
            return None
        except requests.exceptions.ConnectionError as e:
            raise daemon_lost(e) from None
        return self.container.attrs.get("State", {}).get("Pid") or None

    def _wait_exit(self, timeout: float) -> bool:
        try:
            self.container.wait(timeout=max(timeout, 0.01))
            return True
        except (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError):
            return False

    def wait(self) -> SandboxResult:
        if not self._wait_exit(self.remaining()):
            self.timed_out = True
        return self.finish()

    def kill(self) -> None:
        import docker

        try:
            self.container.kill()
        except docker.errors.APIError:
            pass  # already stopped or gone
        except requests.exceptions.ConnectionError:
            pass  # the daemon is gone (called from threads too): finish() says so

    def finish(self, grace_s: float = 0.0) -> SandboxResult:
        import docker

        if self._finished:
            return self._result
        if self._lost is not None:
            raise daemon_lost(self._lost) from None
        if grace_s > 0 and not self.timed_out:
            self._wait_exit(min(grace_s, max(self.remaining(), 0)))
        if self.stdout is not None:  # the protocol is over; never let a full pipe stall the pump
            self.stdout.close()
        killed_at, lost = None, None
        rc, oom = None, False
        try:
            try:
                self.container.reload()
                running = self.container.status in ("created", "running", "restarting",
                                                    "paused")
            except docker.errors.NotFound:
                running = False
            if self.timed_out or running:
                killed_at = time.monotonic()
                self.kill()
            wall = time.monotonic() - self.started
            self._wait_exit(30)
            try:
                self.container.reload()
                state = self.container.attrs.get("State", {})
                rc, oom = state.get("ExitCode"), bool(state.get("OOMKilled"))
                self.container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as e:
                log.warning("could not remove sandbox container %s: %s",
                            self.container.short_id, e)
        except requests.exceptions.ConnectionError as e:
            # No verdict without the daemon; what is ours here is still closed below, and the
            # container (labelled with this process) is reaped at the next start-up.
            lost = e
        cleanup = time.monotonic() - killed_at if killed_at is not None else 0.0
        self._pump.join(timeout=10)
        for closing in (self.stdin, self.stdout, self._log, self._attach):
            if closing is not None:
                try:
                    closing.close()
                except OSError:
                    pass
        self.client.close()
        if self.handover is not None:
            self.handover.close()
        if lost is not None:
            self._outputs.settle()
            self._lost = lost  # a second finish() says the same, without asking the daemon
            raise daemon_lost(lost) from None
        disk = self._outputs.settle() or self.log_overflow
        self._result = SandboxResult(
            outcome=classify(rc, self.timed_out, oom, disk),
            returncode=rc,
            wall_s=wall,
            backend=self.backend,
            isolated=True,
            log_path=self.spec.log_path,
            cleanup_s=cleanup,
        )
        self._finished = True
        return self._result


class DockerSandbox:
    """Docker backend (see the module docstring)."""

    name = "docker"
    isolated = True

    def __init__(self, image: str = DEFAULT_IMAGE):
        client = connect()
        try:
            self.image_name = image
            img = ensure_image(client, image, log=log.warning)
            self.image_id = img.id
            self.runtime_kind = image_runtime(img)
            self.host_runtime = self.runtime_kind == "host"
            reap_stale_containers(client)
            reap_stale_output_mounts()  # after the containers that held them
        finally:
            client.close()
        self.runtime = PythonRuntime.detect() if self.host_runtime else None
        self.as_root = os.geteuid() == 0
        # As root the candidate is nobody; a non-root user's files stay theirs (still no caps).
        self.user = (f"{SANDBOX_UID}:{SANDBOX_UID}" if self.as_root
                     else f"{os.getuid()}:{os.getgid()}")

    def _mounts(self, spec: SandboxSpec):
        from docker.types import Mount as DockerMount

        mounts, tmpfs = [], {"/tmp": f"size={TMP_MB}m,mode=1777"}

        def bind(src, dst, writable=False) -> None:
            mounts.append(DockerMount(target=str(dst), source=str(src), type="bind",
                                      read_only=not writable))

        if self.runtime is not None:  # the offline image: the host's OS and Python, read-only
            bind("/usr", "/usr")
            for d in SYSTEM_DIRS:
                if d != "/sbin" and Path(d).is_dir() and not Path(d).is_symlink():
                    bind(d, d)
            for f in ETC_FILES:
                if f not in ("/etc/passwd", "/etc/group") and Path(f).exists():
                    bind(f, f)
            for b in self.runtime.binds:
                bind(b, b)
            for m in self.runtime.masks:  # our package and dataset, if inside the environment
                tmpfs[str(m)] = "size=4k,mode=0555"
        for m in spec.mounts:
            bind(m.src, m.dst, m.writable)
        return mounts, tmpfs

    def start(self, spec: SandboxSpec, *, pipe: bool = False) -> DockerProcess:
        import docker
        from docker.types import DeviceRequest, LogConfig, Ulimit

        spec, handover = held(spec)
        mounts, tmpfs = self._mounts(spec)
        output_cap = prepare_outputs(spec)
        argv = list(spec.argv)
        if argv and argv[0] == "python":
            argv[0] = self.runtime.executable if self.runtime is not None else "python"
        # We kill at the deadline; this bounds a container whose orchestrator died (kill -9) and
        # so cannot (bubblewrap dies with its parent; a container does not). Killing `timeout`
        # from inside only ends the container sooner.
        argv = ["timeout", "--signal=KILL", f"{int(spec.deadline_s) + 60}s", *argv]
        memory = spec.memory_mb << 20
        file_cap = spec.max_file_mb << 20
        extra = {}
        if spec.cpus:
            extra["cpuset_cpus"] = ",".join(str(c) for c in spec.cpus)
        else:
            extra["nano_cpus"] = int(spec.threads * 1e9)
        if spec.gpu and self.runtime is not None:
            # The offline image already sees the host's driver libraries under /usr: the device
            # nodes are all it needs (no NVIDIA Container Toolkit), as in the local backend.
            extra["devices"] = [f"{d}:{d}:rwm" for d in sorted(Path("/dev").glob("nvidia*"))
                                if d.is_char_device()]
        elif spec.gpu:
            extra["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        client = container = attach = None
        try:
            client = docker.from_env(timeout=120)
            container = client.containers.create(
                self.image_id,
                command=argv,
                user=self.user,
                environment=base_env(spec),
                working_dir=spec.cwd,
                hostname="sandbox",
                network_mode="none",
                read_only=True,
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                mem_limit=memory,
                memswap_limit=memory,
                pids_limit=spec.max_pids,
                ulimits=[Ulimit(name="fsize", soft=file_cap, hard=file_cap),
                         Ulimit(name="nofile", soft=4096, hard=4096),
                         Ulimit(name="core", soft=0, hard=0)],
                mounts=mounts,
                tmpfs=tmpfs,
                init=True,
                ipc_mode="private",
                stdin_open=pipe,
                log_config=LogConfig(type="none"),
                labels={LABEL: "1", OWNER_HOST: socket.gethostname(), OWNER_PID: str(os.getpid()),
                        RUN_LABEL: spec.label[:200]},
                **extra,
            )
            # Attach before start so not a byte of output is missed.
            attach = client.api.attach_socket(
                container.id, params={"stdin": int(pipe), "stdout": 1, "stderr": 1, "stream": 1})
            container.start()
        except (docker.errors.DockerException, requests.exceptions.ConnectionError) as e:
            if container is not None:
                try:
                    container.remove(force=True)
                except (docker.errors.DockerException, requests.exceptions.ConnectionError):
                    pass
            if client is not None:
                client.close()
            if output_cap is not None:
                output_cap.release()
            if handover is not None:
                handover.close()
            if not isinstance(e, docker.errors.APIError):  # no answer at all (from_env asks)
                raise daemon_lost(e) from None
            reason = str(e.explanation or e)
            if spec.gpu and "gpu" in reason.lower():
                reason += " (GPUs in Docker need the NVIDIA Container Toolkit; or --sandbox local)"
            raise SandboxInfraError(f"docker sandbox failed to start: {reason}") from None
        proc = DockerProcess(client, container, attach, spec, pipe, output_cap, handover)
        if handover is not None and handover.idle and (root := proc.root_pid()) is not None:
            schedule_tree(root, idle=True)  # Docker has no such option: set from outside
        return proc

    def run(self, spec: SandboxSpec) -> SandboxResult:
        return self.start(spec).wait()
