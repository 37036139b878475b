"""Sandbox backends for untrusted (LLM-written) training programs.

``get_sandbox("auto" | "docker" | "local" | "unsafe")`` returns a backend; ``check()`` says what
works on this machine and why not. ``auto`` takes Docker when a daemon answers, else the local
(bubblewrap) backend. Where nothing isolates, untrusted code is refused unless the user chose unsafe
mode explicitly.
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

from darwin.sandbox.base import (
    IO_DIR,
    LIB_DIR,
    OUT_DIR,
    PROGRAM_DIR,
    Mount,
    Outcome,
    Sandbox,
    SandboxInfraError,
    SandboxResult,
    SandboxSpec,
    SandboxUnavailable,
    log_tail,
)

__all__ = [
    "IO_DIR",
    "LIB_DIR",
    "OUT_DIR",
    "PROGRAM_DIR",
    "Mount",
    "Outcome",
    "Sandbox",
    "SandboxResult",
    "SandboxSpec",
    "SandboxUnavailable",
    "check",
    "get_sandbox",
    "log_tail",
]

BACKENDS = ("auto", "docker", "local", "unsafe")


def get_sandbox(name: str = "auto", *, image: str | None = None) -> Sandbox:
    """The backend called ``name``; ``image`` is the Docker image (default $DARWIN_DOCKER_IMAGE)."""
    if name not in BACKENDS:
        raise SandboxUnavailable(f"unknown sandbox {name!r}: use --sandbox " + "|".join(BACKENDS))
    if name == "unsafe":
        from darwin.sandbox.unsafe import UnsafeSandbox

        return UnsafeSandbox()
    if name in ("docker", "auto"):
        from darwin.sandbox.docker_backend import DockerSandbox

        if image is None:
            from darwin.settings import get_settings

            image = get_settings().docker_image
        try:
            return DockerSandbox(image)
        except SandboxUnavailable as e:
            if name == "docker":
                raise
            docker_reason = str(e)
    from darwin.sandbox.local import LocalSandbox

    if name == "local":
        return LocalSandbox()
    try:
        return LocalSandbox()
    except SandboxUnavailable as e:  # auto, and neither backend works: say both reasons
        raise SandboxUnavailable(f"no sandbox here. Docker: {docker_reason}. bubblewrap: {e}") \
            from None


_PROBE = r"""
import json, os, socket
report = {"uid": os.getuid(), "interfaces": [n for _, n in socket.if_nameindex()]}
try:
    socket.create_connection(("1.1.1.1", 53), timeout=1); report["network"] = "reachable"
except OSError as e:
    report["network"] = "blocked: " + type(e).__name__
report["home_visible"] = os.path.exists("/root") and bool(os.listdir("/root")) if os.path.isdir("/root") else False
try:
    open("/sandbox/program/probe", "w"); report["ro_write"] = "allowed"
except OSError:
    report["ro_write"] = "denied"
print(json.dumps(report))
"""


def check() -> list[dict]:
    from darwin.sandbox.image import describe_runtime

    """Probe each backend for real: run a tiny program and see what it can reach."""
    rows = []
    for name in ("docker", "local"):
        try:
            box = get_sandbox(name)
        except SandboxUnavailable as e:
            rows.append({"backend": name, "works": False, "isolates": False, "why": str(e)})
        else:
            row = _probe(box)
            if name == "docker":
                row["why"] += f"; {box.image_name}: {describe_runtime(box.runtime_kind)}"
            rows.append(row)
    rows.append(
        {
            "backend": "unsafe",
            "works": True,
            "isolates": False,
            "why": "plain subprocess with rlimits: only with --sandbox unsafe, recorded in results",
        }
    )
    return rows


def _probe(box: Sandbox) -> dict:
    import json

    with tempfile.TemporaryDirectory(prefix="darwin-check-") as tmp:
        tmp_path = Path(tmp)
        prog = tmp_path / "program"
        prog.mkdir(mode=0o755)
        (prog / "probe.py").write_text(_PROBE)
        (prog / "probe.py").chmod(0o644)
        out = tmp_path / "out"
        out.mkdir()
        log = tmp_path / "log.txt"
        spec = SandboxSpec(
            argv=["python", f"{PROGRAM_DIR}/probe.py"],
            mounts=[Mount(prog, PROGRAM_DIR), Mount(out, OUT_DIR, writable=True)],
            deadline_s=60,
            memory_mb=512,
            log_path=log,
            label="check",
        )
        try:
            result = box.run(spec)
        except (OSError, subprocess.SubprocessError, SandboxInfraError) as e:
            return {"backend": box.name, "works": False, "isolates": False, "why": str(e)}
        text = log_tail(log)
        if not result.ok:
            why = text.strip().splitlines()[-1] if text.strip() else result.outcome.value
            return {"backend": box.name, "works": False, "isolates": False, "why": why}
        try:
            report = json.loads(text.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {"backend": box.name, "works": False, "isolates": False, "why": text[-200:]}
    isolates = (
        report["uid"] != 0
        and report["interfaces"] == ["lo"]
        and report["network"].startswith("blocked")
        and report["ro_write"] == "denied"
    )
    why = (
        f"uid {report['uid']}, interfaces {report['interfaces']}, network {report['network']}, "
        f"read-only program dir: {report['ro_write']}, {result.wall_s:.2f}s to start and exit"
    )
    return {"backend": box.name, "works": True, "isolates": isolates, "why": why}
