"""The Docker sandbox's image, built two ways.

- ``build_from_dockerfile``: the project's Dockerfile (slim Python + the pinned torch), for machines
  that reach a registry. Everything the candidate runs on is inside the image.
- ``build_offline``: for machines without a registry (measured here: no Docker Hub). A nearly empty
  root file system is imported with ``docker import`` (under a second, no download), and the host's
  OS tree (/usr), its Python and the environment that holds torch are mounted read-only at run time,
  exactly the files the local sandbox exposes.

The image's labels say which kind it is, so the backend knows what to mount.
"""

from __future__ import annotations

import io
import sys
import tarfile
import time
from pathlib import Path

from darwin.errors import UserError

DEFAULT_IMAGE = "darwin-sandbox:latest"
RUNTIME_LABEL = "io.darwin.runtime"  # "image" (self-contained) or "host" (host runtime mounted)
PYTHON_LABEL = "io.darwin.python"  # the interpreter that built a "host" image (informational)
DOCKERFILE = Path(__file__).with_name("Dockerfile")
SANDBOX_DIRS = ("sandbox", "sandbox/program", "sandbox/out", "sandbox/io", "sandbox/lib")
# /sbin stays a real folder: Docker mounts its init at /sbin/docker-init, which a link into the
# (mounted-over) /usr would hide.
SYSTEM_LINKS = ("bin", "lib", "lib64", "lib32", "libx32")


class ImageBuildError(UserError):
    """The sandbox image could not be built (said in one line, with what to do)."""


def _split(name: str) -> tuple[str, str]:
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:  # "registry:5000/x" has no tag
        return name, "latest"
    return repo, tag


def _rootfs() -> bytes:
    """A root file system with mount points only; the host's OS tree is mounted over it."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)

        for d in ("usr", "sbin", "etc", "proc", "dev", "sys", "run", "var", *SANDBOX_DIRS):
            add_dir(d)
        add_dir("tmp", 0o1777)
        for name in SYSTEM_LINKS:  # merged-/usr systems link /bin to usr/bin and so on
            host = Path("/") / name
            if host.is_symlink():
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, str(host.readlink())
                tar.addfile(info)
            elif host.is_dir():
                add_dir(name)
        for name, text in (("etc/passwd", "nobody:x:65534:65534:nobody:/tmp:/usr/sbin/nologin\n"),
                           ("etc/group", "nogroup:x:65534:\n")):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _invalid_name(name: str, error) -> ImageBuildError:
    reason = str(getattr(error, "explanation", "") or error).rsplit(": ", 1)[-1]
    return ImageBuildError(f"invalid Docker image name {name!r} ({reason}): fix "
                           "DARWIN_DOCKER_IMAGE or --image, e.g. darwin-sandbox:latest")


def build_offline(client, name: str = DEFAULT_IMAGE):
    """Import the mount-point-only image for this host's Python (no registry, no download)."""
    import docker

    repo, tag = _split(name)
    changes = [
        f"LABEL {RUNTIME_LABEL}=host",
        f"LABEL {PYTHON_LABEL}={sys.executable}",
        "USER 65534:65534",
        "WORKDIR /tmp",
    ]
    try:
        client.api.import_image_from_data(_rootfs(), repository=repo, tag=tag, changes=changes)
    except docker.errors.APIError as e:
        if e.status_code == 400:
            raise _invalid_name(name, e) from None
        raise
    return client.images.get(name)


def build_from_dockerfile(client, name: str = DEFAULT_IMAGE, *, torch_version: str,
                          torch_index: str, on_line=None):
    """``docker build`` of the project's Dockerfile (needs a registry and the network)."""
    import docker

    args = {"TORCH": torch_version, "TORCH_INDEX": torch_index,
            "PYTHON": f"{sys.version_info.major}.{sys.version_info.minor}"}
    try:
        # The host network for RUN steps: our daemon may run without a bridge (--bridge=none).
        for chunk in client.api.build(path=str(DOCKERFILE.parent), dockerfile=DOCKERFILE.name,
                                      tag=name, buildargs=args, network_mode="host", rm=True,
                                      decode=True):
            if "error" in chunk:
                raise ImageBuildError(_build_hint(str(chunk["error"]).strip()))
            if on_line is not None and chunk.get("stream", "").strip():
                on_line(chunk["stream"].rstrip())
    except docker.errors.APIError as e:
        raise ImageBuildError(_build_hint(str(e.explanation or e))) from None
    return client.images.get(name)


def _build_hint(message: str) -> str:
    first = message.splitlines()[0][:200] if message else "unknown error"
    if any(s in message for s in ("registry", "no such host", "pull access", "dial tcp")):
        return (f"docker build failed: {first}. No registry is reachable from here: "
                "use `darwin sandbox build --offline` (the host's Python and torch, mounted "
                "read-only)")
    return f"docker build failed: {first}"


def image_runtime(image) -> str:
    return (image.labels or {}).get(RUNTIME_LABEL, "image")


def describe_runtime(runtime: str) -> str:
    """What an image's runtime label means, for people."""
    if runtime == "host":
        return "offline image: this host's OS, Python and torch mounted read-only"
    return "self-contained image"


def ensure_image(client, name: str = DEFAULT_IMAGE, log=None):
    """The image to run; builds the offline one when there is none."""
    import docker

    try:
        image = client.images.get(name)
    except docker.errors.ImageNotFound:
        image = None
    except docker.errors.APIError as e:
        if e.status_code == 400:  # the daemon refuses the name itself
            raise _invalid_name(name, e) from None
        raise
    if image is not None:  # an offline image holds nothing of a particular Python: any will do
        return image
    if log is not None:
        log(f"building the offline sandbox image {name} (this host's Python, mounted read-only); "
            "`darwin sandbox build` makes a self-contained one where a registry is reachable")
    return build_offline(client, name)
