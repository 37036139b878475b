"""The run store over fsspec: a local folder by default; S3 slots in behind the same interface.

Layout of one run (every file but HEAD is written once and never changed):

    <root>/<run_id>/run.json                        the experiment settings and versions
    <root>/<run_id>/code/<sha256>.py                programs, content-addressed
    <root>/<run_id>/candidates/<id>.json            written BEFORE the child trains
    <root>/<run_id>/evaluations/<id>-s<seed>.json   one per trained seed
    <root>/<run_id>/generations/<n:04d>.json        a committed generation
    <root>/<run_id>/HEAD                            {"generation": n}, written last

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
credentials from the usual AWS sources, never stored or logged).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import random
import time
import uuid
from pathlib import Path

import fsspec
import fsspec.asyn
from pydantic import BaseModel

from darwin import errors
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    code_hash,
    read_candidate,
)


class StoreError(errors.StorageError):
    """The run store cannot do what was asked (see darwin.errors)."""


class ImmutableConflict(StoreError):
    """An immutable object exists with other bytes."""


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


class RunStore:
    CAS_TRIES = 200

    def __init__(self, url: str | Path, run_id: str):
        self.fs, root = open_fs(url)
        self.root = f"{root.rstrip('/')}/{run_id}"
        self.run_id = run_id
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))

    # -- low level ----------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _s3(self, method: str, path: str, **kwargs):
        bucket, key, _ = self.fs.split_path(path)
        return self.fs.call_s3(method, Bucket=bucket, Key=key, **kwargs)

    def create_object(self, path: str, data: bytes) -> bool:
        """Create the immutable object ``path`` (True), or find it there with the same bytes
        (False, a retry); StoreError when it holds other bytes."""
        if self.local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            try:
                os.link(tmp, target)  # atomic, whole, and only if the name is free
                return True
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        else:
            try:
                self._s3("put_object", path, Body=data, IfNoneMatch="*")
                return True
            except Exception as e:  # noqa: BLE001 - anything but "it exists" is a real failure
                if not _precondition_failed(e):
                    raise
        if self.fs.cat_file(path) != data:
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
                tmp.write_bytes(new)
                os.replace(tmp, path)
                return new
        for attempt in range(self.CAS_TRIES):
            try:  # one GET: the bytes and the ETag of the same version
                got = self._s3("get_object", path)
                etag, old = got["ETag"], fsspec.asyn.sync(self.fs.loop, got["Body"].read)
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

    def _read(self, path: str) -> bytes | None:
        try:
            return self.fs.cat_file(path)
        except FileNotFoundError:
            return None

    @staticmethod
    def _json(model: BaseModel) -> bytes:
        return model.model_dump_json(indent=1).encode()

    def exists(self) -> bool:
        return self.fs.exists(self._path("run.json"))

    # -- run ----------------------------------------------------------------------------------
    def create(self, meta: dict) -> None:
        self._write_once(self._path("run.json"), json.dumps(meta, indent=1, sort_keys=True).encode())

    def meta(self) -> dict:
        data = self._read(self._path("run.json"))
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
        data = self._read(self._path("code", f"{sha}.py"))
        if data is None:
            raise StoreError(f"code {sha[:12]} missing from run {self.run_id}")
        return data.decode()

    def put_candidate(self, record: CandidateRecord) -> None:
        self._write_once(self._path("candidates", f"{record.id}.json"), self._json(record))

    def candidate(self, cid: str) -> CandidateRecord | None:
        data = self._read(self._path("candidates", f"{cid}.json"))
        return read_candidate(json.loads(data)) if data is not None else None

    def candidates(self) -> list[CandidateRecord]:
        try:
            names = self.fs.ls(self._path("candidates"), detail=False)
        except FileNotFoundError:
            return []
        out = []
        for name in sorted(names):
            if name.endswith(".json"):
                out.append(read_candidate(json.loads(self.fs.cat_file(name))))
        return out

    # -- evaluations --------------------------------------------------------------------------
    def put_evaluation(self, record: EvaluationRecord) -> None:
        self._write_once(
            self._path("evaluations", f"{record.candidate_id}-s{record.seed}.json"),
            self._json(record),
        )

    def evaluation(self, cid: str, seed: int) -> EvaluationRecord | None:
        data = self._read(self._path("evaluations", f"{cid}-s{seed}.json"))
        return EvaluationRecord.model_validate_json(data) if data is not None else None

    def evaluations(self) -> list[EvaluationRecord]:
        try:
            names = self.fs.ls(self._path("evaluations"), detail=False)
        except FileNotFoundError:
            return []
        return [EvaluationRecord.model_validate_json(self.fs.cat_file(n))
                for n in sorted(names) if n.endswith(".json")]

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

    def head(self) -> int | None:
        data = self._read(self._path("HEAD"))
        return int(json.loads(data)["generation"]) if data is not None else None

    def commit(self, record: GenerationRecord) -> None:
        """Write the generation's snapshot, then move HEAD to it (never backwards)."""
        record.committed_at = record.committed_at or time.time()
        try:
            self._write_once(self._path("generations", f"{record.generation:04d}.json"),
                             self._json(record))
        except ImmutableConflict:
            raise StoreError(f"generation {record.generation} of run {self.run_id} was already "
                             "committed by another orchestrator working on this run; this one "
                             "stops (its persisted children stay)") from None

        def forward(old: bytes | None) -> bytes:
            current = int(json.loads(old)["generation"]) if old is not None else None
            if current is not None and current >= record.generation:
                raise StoreError(
                    f"generation {record.generation} already committed (HEAD {current}): "
                    "another orchestrator works on this run")
            return json.dumps({"generation": record.generation}).encode()

        self.update_pointer("HEAD", forward)

    # -- final reports (test split) ----------------------------------------------------------
    def put_final(self, cid: str, data: dict) -> None:
        self._write_once(self._path("finals", f"{cid}.json"),
                         json.dumps(data, indent=1, sort_keys=True).encode())

    def final(self, cid: str) -> dict | None:
        data = self._read(self._path("finals", f"{cid}.json"))
        return json.loads(data) if data is not None else None

    def generation(self, n: int) -> GenerationRecord:
        data = self._read(self._path("generations", f"{n:04d}.json"))
        if data is None:
            raise StoreError(f"generation {n} of run {self.run_id} not found")
        return GenerationRecord.model_validate_json(data)


def _storage_errors(fn):
    """The store's public face: the remote service's failures (unreachable, access denied, no
    such bucket) become one StorageError line; "absent" stays the methods' own business."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as e:  # noqa: BLE001 - filtered below
            module = type(e).__module__.split(".")[0]
            if module not in ("botocore", "aiobotocore", "s3fs") and not isinstance(
                    e, (PermissionError, ConnectionError, TimeoutError)):
                raise
            where = args[0].root if args and isinstance(args[0], RunStore) else args[0]
            reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
            raise StoreError(f"storage {where}: {reason} (check DARWIN_STORAGE_URL, "
                             "AWS_ENDPOINT_URL and the credentials)") from None

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
