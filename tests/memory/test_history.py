"""Reading a run's past and moving runs between stores, on both backends (a local folder and a
versioned bucket on moto's S3 server)."""

from __future__ import annotations

import pytest

from darwin.errors import UserError
from darwin.memory.history import RunAsOf, export_run, resolve_at, run_history
from darwin.memory.store import RunStore, StoreError, list_runs
from darwin.reports.views import leaderboard_rows
from tests.reports import synthetic


def _files(store: RunStore) -> dict[str, bytes]:
    return {n: store.read_object(n) for n in store.files()
            if n not in ("LEASE", "run.lock") and not n.split("/")[-1].startswith(".")}


@pytest.fixture()
def stored(storage_url):
    return synthetic.write(synthetic.run(generations=2, children=3), storage_url)


def test_history_lists_every_commit_and_heads_versions_where_kept(stored):
    found = run_history(stored)
    assert [c["generation"] for c in found["commits"]] == [0, 1, 2]
    assert all(c["host"] and c["pid"] for c in found["commits"])  # the committing process
    versions = found["head_versions"]
    if stored.local:
        assert versions is None
    else:  # a versioned bucket: one version of HEAD per commit, oldest first
        assert [v["generation"] for v in versions] == [0, 1, 2]
        assert len({v["version"] for v in versions}) == 3


def test_the_run_as_it_was_after_a_generation(stored):
    then = resolve_at(stored, None, 1)
    assert isinstance(then, RunAsOf) and then.head() == 1
    assert {c.generation for c in then.candidates()} == {0, 1}
    assert all(then.candidate(e.candidate_id) for e in then.evaluations())
    rows = leaderboard_rows(then)
    assert {r["candidate"] for r in rows} == {c.id for c in stored.candidates() if
                                              c.generation <= 1}
    now = {r["candidate"]: r for r in leaderboard_rows(stored)}
    assert any(now[r["candidate"]]["in_population"] != r["in_population"] for r in rows) or \
        stored.generation(1).population == stored.generation(2).population
    if not stored.local:  # the same, named by HEAD's version
        v1 = next(v["version"] for v in stored.head_versions() if v["generation"] == 1)
        assert leaderboard_rows(resolve_at(stored, v1, None)) == rows
    with pytest.raises(StoreError):
        then.generation(2)


@pytest.mark.parametrize("at, at_generation, words", [
    ("no-such-version", None, "no-such-version"), (None, 9, "has generations 0 to 2"),
    ("v", 1, "not both")])
def test_unknown_versions_are_one_line(stored, at, at_generation, words):
    with pytest.raises(UserError, match=words):
        resolve_at(stored, at, at_generation)


def test_export_there_and_back_is_byte_identical_and_resumable(stored, tmp_path, s3_env):
    import uuid

    bucket = f"s3://{s3_env['bucket']}/export-{uuid.uuid4().hex[:8]}"
    here = str(tmp_path / "back")
    middle = RunStore(bucket if stored.local else str(tmp_path / "middle"), stored.run_id)
    first = export_run(stored, middle)
    assert first["copied"] == first["objects"] == first["verified"] > 10
    back = RunStore(here, stored.run_id)
    export_run(middle, back)
    assert _files(back) == _files(stored) and list_runs(here) == [stored.run_id]
    # interrupted: a few objects gone; the export again copies only those
    for name in list(_files(back))[:3]:
        back.fs.rm(back.blobs.path(name))
    again = export_run(middle, back)
    assert again["copied"] == 3 and again["skipped"] == again["objects"] - 3
    assert _files(back) == _files(stored)


def test_export_never_overwrites_another_run(stored, tmp_path):
    other = synthetic.run(generations=1, children=2, seed=5)
    other.meta = {**other.meta, "note": "another run with the same id"}
    dest = synthetic.write(other, tmp_path / "dest")
    before = _files(dest)
    with pytest.raises(UserError, match="already holds another run"):
        export_run(stored, dest)
    assert _files(dest) == before
    with pytest.raises(UserError, match="not in the source store"):
        export_run(RunStore(tmp_path / "empty", "nope"), dest)


def test_a_bucket_without_versioning_says_so_and_the_rest_works(s3_env, s3_server):
    import uuid

    import s3fs

    bucket = f"plain-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_server["endpoint"], key="testing",
                      secret="testing").mkdir(bucket)
    store = synthetic.write(synthetic.run(generations=1, children=2), f"s3://{bucket}/runs")
    assert run_history(store)["head_versions"] is None
    assert [c["generation"] for c in run_history(store)["commits"]] == [0, 1]
    with pytest.raises(UserError, match="keeps no versions"):
        resolve_at(store, "some-version", None)
    assert resolve_at(store, None, 0).head() == 0
