"""The suite fails when it leaves a new untracked file in the checkout (tests/conftest.py's
session hooks), and only then: an inner pytest run, with the real conftest as its plugin, shows
it; git's own answers show what counts as untracked."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

from tests.conftest import CHECKOUT, untracked_files

# The inner test writes (or touches) the file named by LEFT in the checkout and passes.
INNER_TEST = """
import os
from pathlib import Path


def test_writes_into_the_checkout():
    Path(os.environ["LEFT"]).write_text("left behind")
"""


def _inner_run(tmp_path, left) -> subprocess.CompletedProcess:
    """One test in ``tmp_path`` (its own rootdir and ini: no xdist, no addopts), run with
    tests/conftest.py loaded as a plugin, so its session hooks guard the real checkout."""
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_inner.py").write_text(INNER_TEST)
    env = {**os.environ, "LEFT": str(left), "PYTHONPATH": str(CHECKOUT)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider",
         "-c", str(tmp_path / "pytest.ini"), "--rootdir", str(tmp_path), "-q",
         str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_that_leaves_a_file_in_the_checkout_fails_and_names_it(tmp_path):
    if untracked_files(CHECKOUT) is None:
        pytest.skip("the checkout is not a git work tree: nothing to guard")
    left = CHECKOUT / f"left-by-a-test-{uuid.uuid4().hex[:8]}.txt"
    try:
        r = _inner_run(tmp_path, left)
        assert left.exists()  # the inner test did write it
    finally:
        left.unlink(missing_ok=True)
    out = r.stdout + r.stderr
    assert "1 passed" in out, out  # the test itself passed: the run fails for the file alone
    assert r.returncode == 1, out
    assert "files left in the checkout" in out and left.name in out, out


def test_a_file_there_before_the_run_is_not_its_doing(tmp_path):
    if untracked_files(CHECKOUT) is None:
        pytest.skip("the checkout is not a git work tree: nothing to guard")
    there = CHECKOUT / f"there-before-{uuid.uuid4().hex[:8]}.txt"
    there.write_text("a user's scratch file")
    try:
        r = _inner_run(tmp_path, there)  # the inner test rewrites it: still not a new file
    finally:
        there.unlink(missing_ok=True)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "1 passed" in out, out
    assert "files left in the checkout" not in out, out


def test_untracked_means_neither_tracked_nor_ignored(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".gitignore").write_text("ignored/\n")
    (repo / "tracked.txt").write_text("x")
    subprocess.run(["git", "-C", str(repo), "add", "tracked.txt"], check=True)
    (repo / "ignored").mkdir()
    (repo / "ignored" / "run.json").write_text("{}")
    (repo / "new" / "deep").mkdir(parents=True)
    (repo / "new" / "deep" / "LEDGER").write_text("{}")
    assert untracked_files(repo) == {".gitignore", "new/deep/LEDGER"}
    assert untracked_files(repo / "new") is None  # not the top of the work tree
    assert untracked_files(tmp_path) is None  # no work tree at all: the check stands aside
