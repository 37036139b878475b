"""A small pure-Python wheel, written by hand (no build tools, no network), for the tests that
install an approved package from a local folder."""

from __future__ import annotations

import base64
import hashlib
import zipfile
from pathlib import Path


def make_wheel(folder: Path, name: str = "darwin_probe_pkg", version: str = "1.0",
               code: str = "VALUE = 42\n") -> Path:
    dist = f"{name}-{version}"
    files = {
        f"{name}/__init__.py": code,
        f"{dist}.dist-info/METADATA": (f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\n"
                                       f"Version: {version}\n"),
        f"{dist}.dist-info/WHEEL": ("Wheel-Version: 1.0\nGenerator: darwin-tests\n"
                                    "Root-Is-Purelib: true\nTag: py3-none-any\n"),
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    wheel = folder / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel
