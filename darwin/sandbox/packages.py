"""Approved packages as one read-only layer (trusted side): installed by pip, from wheels only,
constrained to the sandbox's torch and numpy, into a folder both backends mount read-only at
PKG_DIR and put on the import path. Nothing of a package runs at install time (wheels have no
setup.py), and nothing is installed before a person approved it.

A layer is named by what it holds (the requirements, this Python, torch and numpy), built once
per machine under $DARWIN_HOME/layers, and rebuilt from the requirements recorded with the run
where it is missing (a resume on another machine). pip reads its usual settings (PIP_INDEX_URL,
PIP_FIND_LINKS, PIP_NO_INDEX, pip.conf), so a local wheel folder works offline.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

SHADOWED = ("torch", "numpy")  # the sandbox's own: a layer never replaces them
INSTALL_TIMEOUT_S = 600


class PackageRefused(ValueError):
    """Why an approved package cannot be installed (one line, with the fix)."""


def check_requirement(text: str) -> str:
    """The requirement as pip will read it, or PackageRefused: a name with an optional version
    specifier; no URLs, paths or options."""
    from packaging.requirements import InvalidRequirement, Requirement

    text = text.strip()
    if not text:
        raise PackageRefused("name the package in value, for example einops==0.8.1")
    if text.startswith("-") or "/" in text or "\\" in text or "://" in text:
        raise PackageRefused(f"{text!r}: give a package name and version, not a path, URL or "
                             "pip option")
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise PackageRefused(f"{text!r} is not a requirement pip understands: {e}") from None
    if req.url:
        raise PackageRefused(f"{text!r}: direct URLs are refused; give a name and a version")
    if req.name.lower().replace("_", "-") in SHADOWED:
        raise PackageRefused(f"{req.name} is the sandbox's own; it cannot be replaced")
    return str(req)


def _versions() -> dict[str, str]:
    import numpy
    import torch

    return {"python": f"{sys.version_info.major}.{sys.version_info.minor}",
            "torch": torch.__version__.split("+")[0], "numpy": numpy.__version__}


def layer_key(requirements: list[str]) -> str:
    blob = json.dumps({"requirements": sorted(requirements), **_versions()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def build_layer(requirements: list[str], root: Path) -> Path:
    """The layer holding ``requirements`` (built if absent), or PackageRefused with pip's
    reason. Safe to call from two processes at once: the first complete layer wins."""
    reqs = sorted({check_requirement(r) for r in requirements})
    layer = Path(root) / layer_key(reqs)
    if (layer / ".complete").is_file():
        return layer
    Path(root).mkdir(parents=True, exist_ok=True)
    tmp = Path(root) / f".{layer.name}.{uuid.uuid4().hex[:8]}.tmp"
    tmp.mkdir()
    versions = _versions()
    constraints = tmp.parent / f"{tmp.name}.constraints.txt"
    constraints.write_text(f"torch=={versions['torch']}\nnumpy=={versions['numpy']}\n")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
           "--no-input", "--no-warn-script-location", "--only-binary", ":all:",
           "--target", str(tmp), "-c", str(constraints), *reqs]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S,
                              env={**os.environ, "PIP_REQUIRE_VIRTUALENV": "0"})
    except subprocess.TimeoutExpired:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PackageRefused(f"pip took over {INSTALL_TIMEOUT_S} s for {' '.join(reqs)}; "
                             "nothing was installed") from None
    finally:
        constraints.unlink(missing_ok=True)
    if done.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise PackageRefused(f"pip could not install {' '.join(reqs)} from wheels: "
                             f"{_reason(done.stderr)}; nothing was installed")
    for entry in list(tmp.iterdir()):  # never shadow the sandbox's torch and numpy
        base = re.split(r"[-.]", entry.name, maxsplit=1)[0].lower()
        if base in SHADOWED or entry.name == "bin":
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink()
    for path in [tmp, *tmp.rglob("*")]:  # readable by the sandbox's uid, writable by nobody
        path.chmod(0o755 if path.is_dir() else 0o644)
    (tmp / ".complete").write_text(json.dumps({"requirements": reqs, **versions}))
    try:
        tmp.rename(layer)
    except OSError:  # another process finished the same layer first
        shutil.rmtree(tmp, ignore_errors=True)
    return layer


def _reason(stderr: str) -> str:
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("ERROR:")]
    return (errors[0] if errors else lines[-1] if lines else "no output")[:300]
