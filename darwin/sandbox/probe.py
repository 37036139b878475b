"""``darwin sandbox check``: run a tiny program in each backend and see what it can reach (uid,
network interfaces, the network itself, the home folder, a write to a read-only folder)."""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

from darwin.sandbox import get_sandbox
from darwin.sandbox.base import (
    OUT_DIR,
    PROGRAM_DIR,
    Mount,
    Sandbox,
    SandboxInfraError,
    SandboxSpec,
    SandboxUnavailable,
    log_tail,
)
from darwin.sandbox.image import describe_runtime

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
