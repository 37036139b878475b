"""Sandbox backends for untrusted (LLM-written) training programs.

``get_sandbox("auto" | "docker" | "local" | "unsafe")`` returns a backend; ``probe.check()`` says
what works on this machine and why not. ``auto`` takes Docker when a daemon answers, else the local
(bubblewrap) backend. Where nothing isolates, untrusted code is refused unless the user chose unsafe
mode explicitly.
"""

from __future__ import annotations

from darwin.faces import lazy
from darwin.sandbox.base import Sandbox, SandboxUnavailable

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "IO_DIR": "base",
    "LIB_DIR": "base",
    "Mount": "base",
    "OUT_DIR": "base",
    "Outcome": "base",
    "PKG_DIR": "base",
    "PROGRAM_DIR": "base",
    "Sandbox": "base",
    "SandboxError": "base",
    "SandboxInfraError": "base",
    "SandboxProcess": "base",
    "SandboxResult": "base",
    "SandboxSpec": "base",
    "SandboxUnavailable": "base",
    "Warm": "base",
    "log_tail": "base",
    "may_renice": "base",
    "connect": "docker_backend",
    "reap_stale_containers": "docker_backend",
    "build_from_dockerfile": "image",
    "build_offline": "image",
    "describe_runtime": "image",
    "image_runtime": "image",
    "pid_alive": "limits",
    "reap_stale_cgroups": "limits",
    "reap_stale_output_mounts": "limits",
    "PackageRefused": "packages",
    "build_layer": "packages",
    "check_requirement": "packages",
    "check": "probe",
}
__all__ = sorted([*_FACE, "BACKENDS", "describe", "get_sandbox"])  # the last: defined below
__getattr__ = lazy(__name__, _FACE)

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


def describe(box: Sandbox, chosen: str) -> list[str]:
    """What a run says about its sandbox: the backend, and a loud line when it does not
    isolate (``chosen``: the name asked for, e.g. auto)."""
    lines = []
    if box.name == "docker":
        from darwin.sandbox.image import describe_runtime

        lines.append(f"sandbox: docker ({box.image_name}, {describe_runtime(box.runtime_kind)})")
    elif box.name == "local":
        lines.append("sandbox: local (bubblewrap)"
                     + (", no Docker daemon answered" if chosen == "auto" else ""))
    if not box.isolated:
        lines.append("UNSAFE: untrusted code runs WITHOUT isolation (--sandbox unsafe); "
                     "results are marked isolated=false")
    return lines
