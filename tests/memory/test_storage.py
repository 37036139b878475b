"""The run store's guarantees, on a local folder and on S3 (moto's server over HTTP): records
round-trip, immutable objects are never overwritten with other bytes, and many writers moving
one pointer lose no update (shown able to fail with compare-and-swap switched off)."""

from __future__ import annotations

import json
import threading
import time
import uuid

import pytest

from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord, Member
from darwin.memory.store import RunStore, StoreError, list_runs
from tests.conftest import cli_env, run_darwin

WRITERS, UPDATES = 8, 50


@pytest.fixture()
def url(storage_url):
    return storage_url


def test_every_record_type_round_trips(url):
    store = RunStore(url, "r1")
    store.create({"run_id": "r1", "experiment": {"budget": "tiny"}})
    sha = store.put_code("print('hi')\n")
    cand = CandidateRecord(id="g001-c00", run_id="r1", generation=1, code_sha=sha,
                           mutator="offline", parents=["seed"], created_at=1.0)
    store.put_candidate(cand)
    ev = EvaluationRecord(candidate_id="g001-c00", code_sha=sha, seed=0, budget="tiny",
                          status="ok", val_loss=2.5)
    store.put_evaluation(ev)
    gen = GenerationRecord(run_id="r1", generation=0, population=[Member(candidate_id="seed",
                                                                         losses=[2.5, 2.6])])
    store.commit(gen)
    store.put_final("g001-c00", {"test_loss": 2.7})
    again = RunStore(url, "r1")
    assert again.meta()["experiment"] == {"budget": "tiny"}
    assert again.code(sha) == "print('hi')\n"
    assert again.candidate("g001-c00") == cand and again.candidates() == [cand]
    assert again.evaluation("g001-c00", 0) == ev and again.evaluations() == [ev]
    assert again.head() == 0 and again.generation(0).population[0].losses == [2.5, 2.6]
    assert again.final("g001-c00") == {"test_loss": 2.7}
    assert list_runs(url) == ["r1"]


def test_an_immutable_record_is_never_overwritten_with_other_bytes(url):
    store = RunStore(url, "r2")
    name = "evaluations/x.json"
    assert store.create_object(name, b"first") is True
    assert store.create_object(name, b"first") is False  # a retry with the same bytes: fine
    with pytest.raises(StoreError, match="immutable"):
        store.create_object(name, b"second")
    assert store.fs.cat_file(store.blobs.path(name)) == b"first"


def test_head_never_moves_backwards(url):
    store = RunStore(url, "r3")
    store.commit(GenerationRecord(run_id="r3", generation=0, population=[]))
    one = GenerationRecord(run_id="r3", generation=1, population=[])
    store.commit(one)
    store.commit(one)  # the same snapshot again: a retry after a lost reply, a no-op
    with pytest.raises(StoreError, match="already committed"):  # an older generation
        store.commit(GenerationRecord(run_id="r3", generation=0, population=[], wall_s=1.0))
    with pytest.raises(StoreError, match="another orchestrator"):  # its generation 1
        store.commit(GenerationRecord(run_id="r3", generation=1, population=[], wall_s=9.0))
    assert store.head() == 1


def _hammer(url: str, move, updates: int = UPDATES) -> int:
    """WRITERS threads, each with its own store object, add 1 to one counter ``updates`` times."""
    errors: list[BaseException] = []

    def writer() -> None:
        store = RunStore(url, "counter")
        try:
            for _ in range(updates):
                move(store)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer) for _ in range(WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    return json.loads(RunStore(url, "counter").read_object("n"))


def _plus_one(old: bytes | None) -> bytes:
    return json.dumps((json.loads(old) if old else 0) + 1).encode()


def test_many_writers_lose_no_update(url):
    started = time.monotonic()
    total = _hammer(url, lambda store: store.update_pointer("n", _plus_one))
    assert total == WRITERS * UPDATES, f"lost {WRITERS * UPDATES - total} updates"
    print(f"{WRITERS} writers x {UPDATES} updates: {time.monotonic() - started:.1f} s")


def test_without_compare_and_swap_updates_are_lost(url):
    """The control: read, then all wait at a barrier, then write (no condition): the same
    workload loses updates every time."""
    barrier = threading.Barrier(WRITERS)

    def blind(store: RunStore) -> None:
        path = store.blobs.path("n")
        store.fs.makedirs(store.root, exist_ok=True)
        try:
            old = store.fs.cat_file(path)
        except FileNotFoundError:
            old = None
        barrier.wait()
        store.fs.pipe_file(path, _plus_one(old))
        barrier.wait()

    rounds = 5
    total = _hammer(url, blind, rounds)
    assert total <= rounds < WRITERS * rounds  # every round, all writers but one lost theirs


def test_an_unreachable_store_is_one_line_naming_the_settings(monkeypatch, tmp_path):
    import socket

    import s3fs

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("DARWIN_STORAGE_RETRY_S", "0")
    s3fs.S3FileSystem.clear_instance_cache()
    with pytest.raises(StoreError, match="AWS_ENDPOINT_URL") as e:
        list_runs("s3://no-such-bucket/runs")
    assert "\n" not in str(e.value) and "testing" not in str(e.value)
    with pytest.raises(StoreError, match="DARWIN_STORAGE_URL"):
        RunStore("s3://no-such-bucket/runs", "r").put_code("x = 1\n")


@pytest.fixture()
def proxied_s3(s3_env, monkeypatch):
    """The S3 server behind a proxy the test switches off and on."""
    from urllib.parse import urlparse

    import s3fs

    from tests.tcp_proxy import TcpProxy

    target = urlparse(s3_env["endpoint"])
    proxy = TcpProxy(target.hostname, target.port)
    proxy.on()
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # our retry window is the one being tested
    s3fs.S3FileSystem.clear_instance_cache()
    yield proxy
    proxy.off()


def test_an_outage_shorter_than_the_retry_window_is_waited_out(proxied_s3, s3_env, monkeypatch):
    monkeypatch.setenv("DARWIN_STORAGE_RETRY_S", "60")
    url = f"s3://{s3_env['bucket']}/outage-{uuid.uuid4().hex[:8]}"
    store = RunStore(url, "r")
    store.commit(GenerationRecord(run_id="r", generation=0, population=[]))
    proxied_s3.off()
    done: list = []
    writer = threading.Thread(target=lambda: done.append(store.commit(
        GenerationRecord(run_id="r", generation=1, population=[]))))
    started = time.monotonic()
    writer.start()
    time.sleep(3)
    assert writer.is_alive() and not done  # waiting on the store, not failed
    proxied_s3.on()
    writer.join(timeout=60)
    assert done == [None], "the commit should finish once the store is back"
    assert 3 <= time.monotonic() - started < 60
    assert RunStore(url, "r").head() == 1


def test_an_outage_longer_than_the_window_stops_in_one_line_and_loses_nothing(
        proxied_s3, s3_env, monkeypatch):
    from darwin.memory.store import StorageDown

    monkeypatch.setenv("DARWIN_STORAGE_RETRY_S", "3")
    url = f"s3://{s3_env['bucket']}/outage-{uuid.uuid4().hex[:8]}"
    store = RunStore(url, "r")
    store.commit(GenerationRecord(run_id="r", generation=0, population=[]))
    proxied_s3.off()
    started = time.monotonic()
    with pytest.raises(StorageDown, match="unreachable for 3 s") as e:
        store.commit(GenerationRecord(run_id="r", generation=1, population=[]))
    assert 2 <= time.monotonic() - started < 30
    assert "\n" not in str(e.value) and "testing" not in str(e.value)
    proxied_s3.on()
    assert store.head() == 0  # the last committed state, whole
    with pytest.raises(StoreError, match="not found"):  # nothing half-written
        store.generation(1)


def test_the_cli_on_a_store_that_is_down_says_so_in_one_line(proxied_s3, s3_env, tmp_path):
    url = f"s3://{s3_env['bucket']}/cli-{uuid.uuid4().hex[:8]}"
    RunStore(url, "r1").create({"run_id": "r1", "experiment": {"budget": "tiny"}})
    env = cli_env(tmp_path, DARWIN_STORAGE_URL=url, DARWIN_STORAGE_RETRY_S="2")

    proxied_s3.off()
    for args in (["runs"], ["run", "--resume", "r1"]):
        r = run_darwin(args, env, timeout=300)
        assert r.returncode == 3, (args, r.stderr)
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "unreachable for 2 s" in lines[0], (args, r.stderr)
    proxied_s3.on()
    r = run_darwin(["runs", "--json"], env, timeout=300)
    assert r.returncode == 0 and "r1" in r.stdout, r.stderr


def test_records_read_once_are_not_fetched_again(url):
    from darwin.memory.blobs import io_stats

    writer = RunStore(url, "cached")
    for i in range(20):
        writer.put_candidate(CandidateRecord(id=f"g001-c{i:02d}", run_id="cached", generation=1,
                                             code_sha="abc"))
    reader = RunStore(url, "cached")  # another store object of this process
    before = io_stats()
    assert len(reader.candidates()) == 20
    assert io_stats().calls - before.calls == 1  # the listing; the records came from memory
    assert reader.head() is None and io_stats().calls - before.calls == 2  # pointers are read
