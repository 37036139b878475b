"""Blobs over fsspec: bytes under a root, named by paths relative to it, with the two primitives
that keep concurrent writers (two orchestrators, two machines) from losing anything, the retries
of an unreachable store, the count of what was asked of it and a cache of immutable reads.
The typed run store (memory.store) is built on this; nothing here knows what a record is.

- ``Blobs.create``: an immutable object is created only if absent, atomically and whole (local:
  a hard link of a complete temporary file, which fails if the name exists; S3: ``PutObject``
  with ``If-None-Match: *``). A second create with the same bytes is a retry and fine; other
  bytes are refused.
- ``Blobs.update_pointer``: a mutable pointer moves by compare-and-swap (local: read and rename
  under a lock; S3: ``PutObject`` with ``If-Match`` of the ETag read, re-read and retried on 412).

An unreachable store (connection refused, timeouts, 5xx) is retried with backoff for
``DARWIN_STORAGE_RETRY_S`` seconds (default 120) by ``storage_errors``; every write is whole or
absent, so giving up leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
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

from darwin import errors


class StoreError(errors.StorageError):
    """The run store cannot do what was asked (see darwin.errors)."""


class ImmutableConflict(StoreError):
    """An immutable object exists with other bytes."""


class StorageDown(StoreError):
    """The store stayed unreachable for the whole retry window."""


# -- what this process asked of its stores ------------------------------------------------------
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


def _count_read(n: int, calls: int = 0) -> None:
    with _IO_LOCK:
        _IO.calls += calls
        _IO.bytes_read += n


# -- the read cache of immutable objects --------------------------------------------------------
# Immutable objects never change once written, so a copy read (or written) once serves every
# later read in this process: selection, lessons and reports re-read every record of the run
# each time, which on S3 was one request per record per read (1.5x the run's wall time on
# moto). Only reads that ask for it are cached (never a pointer), and no large object (models).
_CACHE_MAX_OBJECT = 1 << 20
_CACHE_MAX_TOTAL = 256 << 20
_cache: dict[tuple[str, str], bytes] = {}
_cache_bytes = 0


def _remember(key: tuple[str, str], data: bytes) -> None:
    global _cache_bytes
    if len(data) > _CACHE_MAX_OBJECT:
        return
    with _IO_LOCK:
        if key in _cache or _cache_bytes + len(data) > _CACHE_MAX_TOTAL:
            return
        _cache[key] = data
        _cache_bytes += len(data)


# -- the file system ----------------------------------------------------------------------------
def open_fs(url: str | Path):
    """(file system, root path) for a store URL. S3 listings are never cached: other processes
    and machines write to the same bucket."""
    url = str(url)
    scheme = url.split("://", 1)[0].lower() if "://" in url else "file"
    if scheme not in ("file", "local", "s3", "s3a"):  # what DARWIN is built and tested on
        raise errors.UserError(f"storage {url}: {scheme}:// is not supported; give a local folder or "
                        "s3://bucket/prefix (--storage-url or DARWIN_STORAGE_URL; other S3-"
                        "compatible stores through AWS_ENDPOINT_URL)")
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


class Blobs:
    """The objects under ``root`` of ``fs``, named by paths relative to ``root``."""

    CAS_TRIES = 200

    def __init__(self, fs, root: str):
        self.fs = fs
        self.root = root.rstrip("/")
        self.local = "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))
        # Which store this is, for the cache of immutable objects (same path, other endpoint).
        self._fs_key = json.dumps([fs.protocol, fs.storage_options], sort_keys=True, default=str)

    def path(self, *parts: str) -> str:
        """The file system's path of the object named ``parts`` (joined by '/')."""
        return "/".join([self.root, *parts])

    def _name(self, path: str) -> str:
        return path.removeprefix(self.root + "/")

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
        _count_read(len(data))
        if immutable:
            _remember(key, data)
        return data

    # -- reading --------------------------------------------------------------------------------
    def read(self, name: str, immutable: bool = False) -> bytes | None:
        """The bytes of ``name`` (None when absent); ``immutable``: it never changes, so a copy
        this process holds will do."""
        try:
            return self._cat(self.path(name), immutable)
        except FileNotFoundError:
            return None

    def read_many(self, names: list[str]) -> list[bytes]:
        """Many immutable objects: cached ones from memory, the rest in one concurrent batch
        (s3fs sends the GETs at once)."""
        paths = [self.path(n) for n in names]
        missing = [p for p in paths if (self._fs_key, p) not in _cache]
        if len(missing) > 1:
            with _counted():
                got = self.fs.cat(missing)
            _count_read(sum(len(d) for d in got.values()), calls=len(missing) - 1)
            for p, data in got.items():
                _remember((self._fs_key, p), data)
            return [_cache.get((self._fs_key, p)) or got.get(p) or self._cat(p, immutable=True)
                    for p in paths]
        return [self._cat(p, immutable=True) for p in paths]

    def names(self, folder: str) -> list[str]:
        """The names directly in ``folder``, sorted (none when it is absent)."""
        try:
            with _counted():
                found = self.fs.ls(self.path(folder), detail=False)
        except FileNotFoundError:
            return []
        return sorted(self._name(p) for p in found)

    def stamps(self, folder: str) -> dict[str, str]:
        """The names directly in ``folder`` with a stamp that changes whenever the object is
        written again (S3's ETag; a local file's inode and mtime): one listing tells which of
        many mutable objects moved since the last one."""
        try:
            with _counted():
                found = self.fs.ls(self.path(folder), detail=True)
        except FileNotFoundError:
            return {}
        return {self._name(d["name"]): str(d.get("ETag") or (d.get("ino"), d.get("mtime")))
                for d in found}

    def find(self) -> list[str]:
        """Every object under the root, by name, sorted."""
        with _counted():
            found = self.fs.find(self.root)
        prefix = self.root + "/"
        return sorted(p.removeprefix(prefix) for p in found if p.startswith(prefix))

    def versions(self, name: str) -> list[tuple[str, float, bytes]] | None:
        """Every version of ``name``, oldest first: (version id, when, bytes); None when the
        store keeps no versions (a local folder, a bucket without versioning)."""
        if self.local:
            return None
        path = self.path(name)
        bucket, key, _ = self.fs.split_path(path)
        with _counted():
            listed = self.fs.call_s3("list_object_versions", Bucket=bucket, Prefix=key)
        infos = [v for v in listed.get("Versions", []) if v["Key"] == key]
        if not any(v.get("VersionId") not in (None, "null") for v in infos):
            return None if infos else []  # an unversioned bucket: one "null" version
        found = []
        # S3 lists versions newest first; LastModified has whole seconds, so ties keep that order.
        for v in sorted(reversed(infos), key=lambda v: v["LastModified"]):
            got = self._s3("get_object", path, VersionId=v["VersionId"])
            found.append((v["VersionId"], v["LastModified"].timestamp(),
                          fsspec.asyn.sync(self.fs.loop, got["Body"].read)))
        return found

    # -- writing: create once, compare-and-swap -------------------------------------------------
    def create(self, name: str, data: bytes) -> bool:
        """Create the immutable object ``name`` (True), or find it there with the same bytes
        (False, a retry); ImmutableConflict when it holds other bytes."""
        path = self.path(name)
        if self.local:
            target = Path(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            with _counted(written=len(data)):
                tmp.write_bytes(data)
            try:
                os.link(tmp, target)  # atomic, whole, and only if the name is free
                _remember((self._fs_key, path), data)
                return True
            except FileExistsError:
                pass
            finally:
                tmp.unlink()
        else:
            try:
                self._s3("put_object", path, Body=data, IfNoneMatch="*")
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
        path = self.path(name)
        if self.local:
            with self._lock():
                new = change(self.read(name))
                tmp = Path(self.path(f".{name}.{uuid.uuid4().hex[:8]}.tmp"))
                with _counted(written=len(new)):
                    tmp.write_bytes(new)
                os.replace(tmp, path)
                return new
        for attempt in range(self.CAS_TRIES):
            try:  # one GET: the bytes and the ETag of the same version
                got = self._s3("get_object", path)
                etag, old = got["ETag"], fsspec.asyn.sync(self.fs.loop, got["Body"].read)
                _count_read(len(old))
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

    @contextlib.contextmanager
    def _lock(self):
        Path(self.root).mkdir(parents=True, exist_ok=True)
        with open(Path(self.root) / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


# -- an unreachable store: retried, then one line -----------------------------------------------
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


def storage_errors(fn):
    """A store's public face: an unreachable store is retried with backoff for the retry
    window (each public operation is idempotent: conditional creates and compare-and-swap);
    the remote service's failures (still unreachable, access denied, no such bucket) become
    one StorageError line; "absent" stays the methods' own business. Only the outermost call
    retries, so nested operations don't multiply the wait. Wraps a method of an object with a
    ``root``, or a function whose first argument is the store's URL."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        where = getattr(args[0], "root", args[0]) if args else "?"
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


def guard_public_methods(cls: type) -> type:
    """``cls`` with ``storage_errors`` around each of its public methods (a class decorator)."""
    for name, fn in list(vars(cls).items()):
        if callable(fn) and not name.startswith("_"):
            setattr(cls, name, storage_errors(fn))
    return cls


guard_public_methods(Blobs)
