"""The built wheel carries every file DARWIN reads at run time. An editable install reads them
from the checkout, so a file lost in a move (or missing from package-data) shows only here."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# What the installed package opens by path (importlib.resources), not by import.
PACKAGE_DATA = [
    "darwin/mutation/prompts/system.md",
    "darwin/mutation/prompts/mutate.md",
    "darwin/mutation/prompts/chunk.md",
    "darwin/mutation/prompts/retry.md",
    "darwin/evaluation/runtime/eval_server.py",
    "darwin/evaluation/runtime/darwin_io.py",
    "darwin/sandbox/Dockerfile",
    "darwin/seed/train.py",
    "darwin/seed/README.md",
    "darwin/seed/data/tinyshakespeare.txt",
]


def build_wheel(source: Path, out: Path) -> Path:
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    (wheel,) = out.glob("darwin_evo-*.whl")
    return wheel


def test_wheel_holds_every_package_data_file_and_module(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".ci-darwin-home", "tests"))
    names = set(zipfile.ZipFile(build_wheel(source, tmp_path / "dist")).namelist())
    missing = [f for f in PACKAGE_DATA if f not in names]
    assert not missing, f"not in the wheel: {missing}"
    # Every module of the checkout is in it, under the name it is imported by.
    folders = {"darwin": "darwin", "flows": "darwin/flows", "tasks": "darwin/tasks",
               "memory": "darwin/memory", "seed": "darwin/seed"}
    for folder, installed in folders.items():
        for path in (ROOT / folder).rglob("*.py"):
            name = f"{installed}/{path.relative_to(ROOT / folder).as_posix()}"
            assert name in names, f"{name} is missing from the wheel"
    assert not any(n.startswith(("tests/", "flows/", "tasks/", "memory/")) for n in names), \
        "generic top-level packages must not be installed"


def test_a_lost_file_is_seen(tmp_path):
    """The control: the same build without a prompt file gives a wheel this test rejects."""
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".ci-darwin-home", "tests"))
    (source / "darwin/mutation/prompts/retry.md").unlink()
    names = set(zipfile.ZipFile(build_wheel(source, tmp_path / "dist")).namelist())
    assert "darwin/mutation/prompts/retry.md" not in names
    assert "darwin/mutation/prompts/system.md" in names
