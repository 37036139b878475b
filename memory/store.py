"""The run store over fsspec: a local folder by default; S3 slots in behind the same interface.

Layout of one run (every file but HEAD is written once and never changed):

    <root>/<run_id>/run.json                        the experiment settings and versions
    <root>/<run_id>/code/<sha256>.py                programs, content-addressed
    <root>/<run_id>/candidates/<id>.json            written BEFORE the child trains
    <root>/<run_id>/evaluations/<id>-s<seed>.json   one per trained seed
    <root>/<run_id>/generations/<n:04d>.json        a committed generation
    <root>/<run_id>/logs/<id>-s<seed>.log           a child's training log (its end, capped)
    <root>/<run_id>/outputs/<id>-s<seed>/<file>     a population member's trained model
    <root>/<run_id>/reviews/g<n:04d>.json           the humans' answer after generation n
    <root>/<run_id>/datasets/<sha256>.txt           an approved extra dataset, cleaned
    <root>/<run_id>/HEAD                            {"generation": n, "host", "pid"}, written last
    <root>/<run_id>/REVIEW                          the review waiting for an answer, if any
    <root>/<run_id>/LEASE                           which orchestrator works on the run, until when

The scratch folder is only a cache: a run resumed on another machine (or with an emptied scratch
folder) finds every program, log, evaluation and the models the final test needs here.

Two primitives keep concurrent writers (two orchestrators, two machines) from losing anything:

- ``create_object``: an immutable object is created only if absent, atomically and whole (local: a
  hard link of a complete temporary file, which fails if the name exists; S3: ``PutObject`` with
  ``If-None-Match: *``). A second create with the same bytes is a retry and fine; other bytes are
  refused.
- ``update_pointer``: a mutable pointer (HEAD, and later the run index and the LLM ledger) moves by
  compare-and-swap (local: read and rename under a lock; S3: ``PutObject`` with ``If-Match`` of
  the ETag read, re-read and retried on 412). HEAD moves only after the generation's snapshot is
  complete and never backwards, so a crash at any point leaves the last committed generation
  intact and every persisted candidate reusable.

``DARWIN_STORAGE_URL=s3://bucket/prefix`` selects S3 (s3fs; endpoint from ``AWS_ENDPOINT_URL``,
credentials from the usual AWS sources, never stored or logged). A store that cannot be reached
(connection refused, timeouts, 5xx) is retried with backoff for ``DARWIN_STORAGE_RETRY_S`` seconds
(default 120); every write is whole or absent, so giving up leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import os
import random
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import fsspec
import fsspec.asyn
from pydantic import BaseModel

from darwin import errors
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    ReviewRecord,
    code_hash,
    read_candidate,
)


class StoreError(errors.StorageError):
    """The run store cannot do what was asked (see darwin.errors)."""


class ImmutableConflict(StoreError):
    """An immutable object exists with other bytes."""


class LeaseHeld(StoreError):
    """Another live orchestrator holds the run."""


class StorageDown(StoreError):
    """The store stayed unreachable for the whole retry window."""


@dataclass
class IOStats:
    """What this process asked of its stores: calls (on S3, one request each, plus s3fs's own
    retries and list pages), bytes each way, and seconds spent waiting (summed over threads)."""

    calls: int = 0
    bytes_read: int = 0
    bytes_written: int = 0
    seconds: float = 0.0

    def minus(self, earlier: IOStats) -> dict:
        return {k: round(v - getattr(earlier, k), 4) for k, v in asdict(self).items()}


_IO = IOStats()
_IO_LOCK = threading.Lock()


# Immutable objects never change once written, so a copy read (or written) once serves every
# later read in this process: selection, lessons and reports re-read every record of the run
# each time, which on S3 was one request per record per read (1.5x the run's wall time on
# moto). Only reads that ask for it are cached (never a pointer), and no large object (models).
_CACHE_MAX_OBJECT = 1 << 20
_CACHE_MAX_TOTAL = 256 << 20
_cache: dict[tuple[str, str], bytes] = {}
_cache_bytes = 0


def _cacheable(data: bytes) -> bool:
    return len(data) <= _CACHE_MAX_OBJECT


def _remember(key: tuple[str, str], data: bytes) -> None:
    global _cache_bytes
    with _IO_LOCK:
        if key in _cache or _cache_bytes + len(data) > _CACHE_MAX_TOTAL:
            return
        _cache[key] = data
        _cache_bytes += len(data)


def io_stats() -> IOStats:
    with _IO_LOCK:
        return IOStats(**asdict(_IO))


@contextlib.contextmanager
def _counted(read: int = 0, written: int = 0):
    started = time.perf_counter()
    try:
        yield
    finally:
        with _IO_LOCK:
            _IO.calls += 1
            _IO.bytes_read += read
            _IO.bytes_written += written
            _IO.seconds += time.perf_counter() - started


def open_fs(url: str | Path):
    """(file system, root path) for a store URL. S3 listings are never cached: other processes
    and machines write to the same bucket."""
    url = str(url)
    options: dict = {}
    if url.startswith(("s3://", "s3a://")):
        options["use_listings_cache"] = False
        # Named explicitly (botocore would read it too) so that file systems cached per process
        # are told apart by endpoint.
        if endpoint := os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL"):
            options["client_kwargs"] = {"endpoint_url": endpoint}
    return fsspec.core.url_to_fs(url, **options)


def _precondition_failed(e: BaseException) -> bool:
    """Whether an S3 error is a failed If-Match / If-None-Match (412) or a conflict (409)."""
    if isinstance(e, FileExistsError):
        return True
    cause = getattr(e, "__cause__", None)
    response = getattr(cause, "response", None) or {}
    code = response.get("Error", {}).get("Code", "")
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412)


def writer() -> dict:
    """Who writes: the host and process (a commit records it)."""
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


class RunStore:
    CAS_TRIES = 200

    def __init__(self, url: str | Path, run_id: str):
        self.fs, root = open_fs(url)
        self.root = f"{root.rstrip('/')}/{run_id}"
        self.run_id = run_id
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))
        # Which store this is, for the cache of immutable objects (same path, other endpoint).
        self._fs_key = json.dumps([self.fs.protocol, self.fs.storage_options], sort_keys=True,
                                  default=str)

    # -- low level ----------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _s3(self, method: str, path: str, **kwargs):
        bucket, key, _ = self.fs.split_path(path)
        with _counted(written=len(kwargs.get("Body", b""))):
            return self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)

    def _cat(self, path: str, immutable: bool = False) -> bytes:
        key = (self._fs_key, path)
        if immutable and (hit := _cache.get(key)) is not None:
            return hit
        with _counted():
            data = self.fs.cat_file(path)
        with _IO_LOCK:
            _IO.bytes_read += len(data)
        if immutable and _cacheable(data):
            _remember(key, data)
        return data

    def _cat_many(self, paths: list[str]) -> list[bytes]:
        """Read many immutable objects: cached ones from memory, the rest in one concurrent
        batch (s3fs sends the GETs at once)."""
        missing = [p for p in paths if (self._fs_key, p) not in _cache]
        if len(missing) > 1:
            with _counted():
                got = self.fs.cat(missing)
            with _IO_LOCK:
                _IO.calls += len(missing) - 1
                _IO.bytes_read += sum(len(d) for d in got.values())
            for p, data in got.items():
                if _cacheable(data):
                    _remember((self._fs_key, p), data)
            return [_cache.get((self._fs_key, p)) or got.get(p) or self._cat(p, immutable=True)
                    for p in paths]
        return [self._cat(p, immutable=True) for p in paths]

    def _ls(self, path: str) -> list[str]:
        with _counted():
            return self.fs.ls(path, detail=False)

    def create_object(self, path: str, data: bytes) -> bool:
        """Create the immutable object ``path`` (True), or find it there with the same bytes
        (False, a retry); StoreError when it holds other bytes."""
        if self.local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            with _counted(written=len(data)):
                tmp.write_bytes(data)
            try:
                os.link(tmp, target)  # atomic, whole, and only if the name is free
                if _cacheable(data):
                    _remember((self._fs_key, path), data)
                return True
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        else:
            try:
                self._s3("put_object", path, Body=data, IfNoneMatch="*")
                if _cacheable(data):
                    _remember((self._fs_key, path), data)
                return True
            except Exception as e:  # noqa: BLE001 - anything but "it exists" is a real failure
                if not _precondition_failed(e):
                    raise
        if self._cat(path, immutable=True) != data:
            raise ImmutableConflict(f"refusing to overwrite immutable record {path}")
        return False

    def update_pointer(self, name: str, change) -> bytes:
        """Move the mutable pointer ``name`` from its bytes (None when absent) to
        ``change(old)`` by compare-and-swap; ``change`` may raise to refuse the move."""
        path = self._path(name)
        if self.local:
            with self._lock():
                new = change(self._read(path))
                tmp = Path(self._path(f".{name}.{uuid.uuid4().hex[:8]}.tmp"))
                with _counted(written=len(new)):
                    tmp.write_bytes(new)
                os.replace(tmp, path)
                return new
        for attempt in range(self.CAS_TRIES):
            try:  # one GET: the bytes and the ETag of the same version
                got = self._s3("get_object", path)
                etag, old = got["ETag"], fsspec.asyn.sync(self.fs.loop, got["Body"].read)
                with _IO_LOCK:
                    _IO.bytes_read += len(old)
            except FileNotFoundError:
                etag, old = None, None
            new = change(old)
            condition = {"IfMatch": etag} if etag else {"IfNoneMatch": "*"}
            try:
                self._s3("put_object", path, Body=new, **condition)
                return new
            except Exception as e:  # noqa: BLE001
                if not _precondition_failed(e):
                    raise
            time.sleep(random.uniform(0, 0.002 * 2 ** min(attempt, 7)))  # back off, with jitter
        raise StoreError(f"{path}: {self.CAS_TRIES} writers in a row changed it first; try again")

    def _write_once(self, path: str, data: bytes) -> None:
        self.create_object(path, data)

    def _read(self, path: str, immutable: bool = False) -> bytes | None:
        try:
            return self._cat(path, immutable)
        except FileNotFoundError:
            return None

    @staticmethod
    def _json(model: BaseModel) -> bytes:
        return model.model_dump_json(indent=1).encode()

    def exists(self) -> bool:
        return self._read(self._path("run.json"), immutable=True) is not None

    # -- run ----------------------------------------------------------------------------------
    def create(self, meta: dict) -> None:
        self._write_once(self._path("run.json"), json.dumps(meta, indent=1, sort_keys=True).encode())

    def meta(self) -> dict:
        data = self._read(self._path("run.json"), immutable=True)
        if data is None:
            raise StoreError(f"run {self.run_id} not found")
        return json.loads(data)

    # -- code and candidates ------------------------------------------------------------------
    def put_code(self, source: str) -> str:
        sha = code_hash(source)
        try:
            self.create_object(self._path("code", f"{sha}.py"), source.encode())
        except ImmutableConflict:
            pass  # same hash = same program up to whitespace: the first one stays
        return sha

    def code(self, sha: str) -> str:
        data = self._read(self._path("code", f"{sha}.py"), immutable=True)
        if data is None:
            raise StoreError(f"code {sha[:12]} missing from run {self.run_id}")
        return data.decode()

    def put_candidate(self, record: CandidateRecord) -> None:
        self._write_once(self._path("candidates", f"{record.id}.json"), self._json(record))

    def candidate(self, cid: str) -> CandidateRecord | None:
        data = self._read(self._path("candidates", f"{cid}.json"), immutable=True)
        return read_candidate(json.loads(data)) if data is not None else None

    def candidates(self) -> list[CandidateRecord]:
        return [read_candidate(json.loads(d)) for d in self._records("candidates")]

    def _records(self, folder: str) -> list[bytes]:
        """The bytes of every JSON record in ``folder``, in name order (none: empty)."""
        try:
            names = self._ls(self._path(folder))
        except FileNotFoundError:
            return []
        return self._cat_many(sorted(n for n in names if n.endswith(".json")))

    # -- evaluations --------------------------------------------------------------------------
    def put_evaluation(self, record: EvaluationRecord) -> None:
        self._write_once(
            self._path("evaluations", f"{record.candidate_id}-s{record.seed}.json"),
            self._json(record),
        )

    def evaluation(self, cid: str, seed: int) -> EvaluationRecord | None:
        data = self._read(self._path("evaluations", f"{cid}-s{seed}.json"), immutable=True)
        return EvaluationRecord.model_validate_json(data) if data is not None else None

    def evaluations(self) -> list[EvaluationRecord]:
        return [EvaluationRecord.model_validate_json(d) for d in self._records("evaluations")]

    # -- generations and HEAD -----------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self):
        if not self.local:
            yield
            return
        Path(self.root).mkdir(parents=True, exist_ok=True)
        with open(Path(self.root) / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def pointer(self, name: str) -> dict | None:
        """A mutable pointer's current JSON (None when absent)."""
        data = self._read(self._path(name))
        return json.loads(data) if data is not None else None

    def head_versions(self) -> list[dict] | None:
        """Every version of HEAD, oldest first: {version, at, generation, host, pid}; None when
        the store keeps no versions (a local folder, a bucket without versioning)."""
        if self.local:
            return None
        path = self._path("HEAD")
        bucket, key, _ = self.fs.split_path(path)
        with _counted():
            listed = self.fs.call_s3("list_object_versions", Bucket=bucket, Prefix=key)
        infos = [v for v in listed.get("Versions", []) if v["Key"] == key]
        if not any(v.get("VersionId") not in (None, "null") for v in infos):
            return None if infos else []  # an unversioned bucket: one "null" version
        rows = []
        # S3 lists versions newest first; LastModified has whole seconds, so ties keep that order.
        for v in sorted(reversed(infos), key=lambda v: v["LastModified"]):
            got = self._s3("get_object", path, VersionId=v["VersionId"])
            data = json.loads(fsspec.asyn.sync(self.fs.loop, got["Body"].read))
            rows.append({"version": v["VersionId"], "at": v["LastModified"].timestamp(),
                         "generation": int(data["generation"]), "host": data.get("host"),
                         "pid": data.get("pid")})
        return rows

    def files(self) -> list[str]:
        """Every object of the run, as paths relative to the run's root."""
        with _counted():
            found = self.fs.find(self.root)
        prefix = self.root.rstrip("/") + "/"
        return sorted(p.removeprefix(prefix) for p in found if p.startswith(prefix))

    def head(self) -> int | None:
        data = self._read(self._path("HEAD"))
        return int(json.loads(data)["generation"]) if data is not None else None

    def commit(self, record: GenerationRecord) -> None:
        """Write the generation's snapshot, then move HEAD to it (never backwards)."""
        record.committed_at = record.committed_at or time.time()
        record.writer = record.writer or writer()
        try:
            self._write_once(self._path("generations", f"{record.generation:04d}.json"),
                             self._json(record))
        except ImmutableConflict:
            raise StoreError(f"generation {record.generation} of run {self.run_id} was already "
                             "committed by another orchestrator working on this run; this one "
                             "stops (its persisted children stay)") from None

        def forward(old: bytes | None) -> bytes:
            current = int(json.loads(old)["generation"]) if old is not None else None
            if current == record.generation:
                # Only this writer got past the snapshot's conditional create: HEAD already
                # points at it because an earlier try's reply was lost (storage retried).
                return old
            if current is not None and current > record.generation:
                raise StoreError(
                    f"generation {record.generation} already committed (HEAD {current}): "
                    "another orchestrator works on this run")
            # Who moved it, and when: `darwin history` lists HEAD's versions (a versioned bucket).
            return json.dumps({"generation": record.generation, **writer()}).encode()

        self.update_pointer("HEAD", forward)

    # -- approved extra datasets (content-addressed, like code) ------------------------------
    def put_dataset(self, text: str) -> str:
        sha = hashlib.sha256(text.encode()).hexdigest()
        self._write_once(self._path("datasets", f"{sha}.txt"), text.encode())
        return sha

    def dataset(self, sha: str) -> str:
        data = self._read(self._path("datasets", f"{sha}.txt"), immutable=True)
        if data is None:
            raise StoreError(f"dataset {sha[:12]} missing from run {self.run_id}")
        return data.decode()

    # -- reviews (humans in the loop) -------------------------------------------------------
    def put_review(self, record: ReviewRecord) -> None:
        self._write_once(self._path("reviews", f"g{record.generation:04d}.json"),
                         self._json(record))

    def review(self, generation: int) -> ReviewRecord | None:
        data = self._read(self._path("reviews", f"g{generation:04d}.json"), immutable=True)
        return ReviewRecord.model_validate_json(data) if data is not None else None

    def reviews(self) -> list[ReviewRecord]:
        """The answered reviews, oldest first."""
        return [ReviewRecord.model_validate_json(d) for d in self._records("reviews")]

    def set_waiting(self, waiting: dict | None) -> None:
        """The REVIEW pointer: what waits for an answer and where to send it (None: nothing)."""
        self.update_pointer("REVIEW", lambda old: json.dumps(waiting or {}).encode())

    def waiting(self) -> dict | None:
        return self.pointer("REVIEW") or None

    # -- final reports (test split) ----------------------------------------------------------
    def put_final(self, cid: str, data: dict) -> None:
        self._write_once(self._path("finals", f"{cid}.json"),
                         json.dumps(data, indent=1, sort_keys=True).encode())

    def final(self, cid: str) -> dict | None:
        data = self._read(self._path("finals", f"{cid}.json"), immutable=True)
        return json.loads(data) if data is not None else None

    def generation(self, n: int) -> GenerationRecord:
        data = self._read(self._path("generations", f"{n:04d}.json"), immutable=True)
        if data is None:
            raise StoreError(f"generation {n} of run {self.run_id} not found")
        return GenerationRecord.model_validate_json(data)

    # -- artifacts: training logs and trained models ------------------------------------------
    LOG_CAP = 2 << 20  # bytes of a log kept: its end (a child may print without limit)

    def put_log(self, cid: str, seed: int, log: Path) -> None:
        try:
            size = log.stat().st_size
        except FileNotFoundError:
            return
        with open(log, "rb") as f:
            if size > self.LOG_CAP:
                f.seek(size - self.LOG_CAP)
                data = (f"[first {size - self.LOG_CAP} bytes of the log dropped]\n".encode()
                        + f.read())
            else:
                data = f.read()
        self._write_once(self._path("logs", f"{cid}-s{seed}.log"), data)

    def log(self, cid: str, seed: int) -> str | None:
        data = self._read(self._path("logs", f"{cid}-s{seed}.log"), immutable=True)
        return data.decode(errors="replace") if data is not None else None

    def put_outputs(self, cid: str, seed: int, folder: Path, names: tuple[str, ...]) -> int:
        """Keep a trained model (the output files ``names`` of ``folder``) in the store; the
        files stay untrusted: whoever reads them back checks them as if the child just wrote
        them. Returns the bytes stored."""
        stored = 0
        for name in names:
            path = folder / name
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                self._write_once(self._path("outputs", f"{cid}-s{seed}", name), data)
                stored += len(data)
        return stored

    def _stored_outputs(self, cid: str, seed: int) -> list[str]:
        try:
            return self._ls(self._path("outputs", f"{cid}-s{seed}"))
        except FileNotFoundError:
            return []

    def fetch_outputs(self, cid: str, seed: int, dest: Path) -> bool:
        """Copy a stored model into ``dest``; False when none was stored."""
        names = self._stored_outputs(cid, seed)
        if not names:
            return False
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            (dest / name.rsplit("/", 1)[-1]).write_bytes(self._cat(name))
        return True

    def has_outputs(self, cid: str, seed: int) -> bool:
        return bool(self._stored_outputs(cid, seed))

    # -- the lease: one orchestrator at a time --------------------------------------------
    def take_lease(self, owner: str, ttl_s: float) -> None:
        """Hold the run for ``ttl_s`` seconds (renewed by calling again). Refused, in one line,
        while another owner's lease runs; an expired one (its holder died) is taken over."""

        def take(old: bytes | None) -> bytes:
            if old is not None:
                held = json.loads(old)
                left = held["until"] - time.time()
                if held["owner"] != owner and left > 0:
                    raise LeaseHeld(
                        f"run {self.run_id} is already running ({held['owner']}, lease renewed "
                        f"until {left:.0f} s from now): wait for it to end, or stop it; a "
                        "stopped orchestrator's lease runs out by itself")
            return json.dumps({"owner": owner, "until": time.time() + ttl_s}).encode()

        self.update_pointer("LEASE", take)

    def drop_lease(self, owner: str) -> None:
        def drop(old: bytes | None) -> bytes:
            if old is not None and json.loads(old)["owner"] != owner:
                raise LeaseHeld("the lease was taken over")
            return json.dumps({"owner": owner, "until": 0}).encode()

        with contextlib.suppress(LeaseHeld):
            self.update_pointer("LEASE", drop)


_TRANSIENT_NAMES = {"EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError",
                    "ConnectionClosedError", "ProxyConnectionError", "ServerDisconnectedError",
                    "ClientConnectorError", "ClientOSError", "ResponseStreamingError"}
_TRANSIENT_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout",
                    "503", "500", "502", "504"}


def _transient(e: BaseException) -> bool:
    """Whether a failure says "the store is down or overloaded" (worth waiting for), as
    opposed to "wrong bucket / no access / absent" (no wait fixes those)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if type(e).__name__ in _TRANSIENT_NAMES or isinstance(e, (ConnectionError, TimeoutError)):
            return True
        response = getattr(e, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500 or response.get("Error", {}).get("Code") in _TRANSIENT_CODES:
            return True
        e = e.__cause__ or e.__context__
    return False


def retry_window_s() -> float:
    raw = os.environ.get("DARWIN_STORAGE_RETRY_S", "120")
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise errors.UserError(f"invalid DARWIN_STORAGE_RETRY_S={raw!r}: give the seconds to "
                               "wait for an unreachable store, for example 120")
    return seconds


_depth = threading.local()


def _storage_errors(fn):
    """The store's public face: an unreachable store is retried with backoff for the retry
    window (each public operation is idempotent: conditional creates and compare-and-swap);
    the remote service's failures (still unreachable, access denied, no such bucket) become
    one StorageError line; "absent" stays the methods' own business. Only the outermost call
    retries, so nested operations don't multiply the wait."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        where = args[0].root if args and isinstance(args[0], RunStore) else args[0]
        outer = not getattr(_depth, "n", 0)
        _depth.n = getattr(_depth, "n", 0) + 1
        try:
            deadline = time.monotonic() + retry_window_s()
            pause = 0.5
            while True:
                try:
                    return fn(*args, **kwargs)
                except StoreError:
                    raise
                except Exception as e:  # noqa: BLE001 - filtered below
                    if not outer:
                        raise
                    left = deadline - time.monotonic()
                    if _transient(e) and left > 0:  # one last try at the deadline
                        time.sleep(min(pause, left))
                        pause = min(2 * pause, 10.0)
                        continue
                    module = type(e).__module__.split(".")[0]
                    if module not in ("botocore", "aiobotocore", "s3fs", "aiohttp") and not (
                            isinstance(e, (PermissionError, ConnectionError, TimeoutError))):
                        raise
                    reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
                    if _transient(e):
                        raise StorageDown(
                            f"storage {where} unreachable for {retry_window_s():.0f} s: {reason}"
                            " (every write is whole or absent: nothing was half-written; check "
                            "DARWIN_STORAGE_URL and AWS_ENDPOINT_URL, or wait longer with "
                            "DARWIN_STORAGE_RETRY_S)"
                        ) from None
                    raise StoreError(f"storage {where}: {reason} (check DARWIN_STORAGE_URL, "
                                     "AWS_ENDPOINT_URL and the credentials)") from None
        finally:
            _depth.n -= 1

    return wrapper


for _name, _fn in list(vars(RunStore).items()):
    if callable(_fn) and not _name.startswith("_"):
        setattr(RunStore, _name, _storage_errors(_fn))


@_storage_errors
def list_runs(url: str | Path) -> list[str]:
    fs, root = open_fs(url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rsplit("/", 1)[-1] for e in entries if fs.exists(f"{e}/run.json"))
