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
    <root>/<run_id>/trials/<id>.json                a tuned search's trial (--mutator hpo-*)
    <root>/<run_id>/HEAD                            {"generation": n, "host", "pid"}, written last
    <root>/<run_id>/REVIEW                          the review waiting for an answer, if any
    <root>/<run_id>/LEASE                           which orchestrator works on the run, until when

The scratch folder is only a cache: a run resumed on another machine (or with an emptied scratch
folder) finds every program, log, evaluation and the models the final test needs here.

Every object but the pointers (HEAD, REVIEW, LEASE, LEDGER) is created once, whole, and never
changed; a pointer moves by compare-and-swap (memory.blobs holds both primitives, the retries and
the read cache). HEAD moves only after the generation's snapshot is complete and never
backwards, so a crash at any point leaves the last committed generation intact and every
persisted candidate reusable.

``DARWIN_STORAGE_URL=s3://bucket/prefix`` selects S3 (s3fs; endpoint from ``AWS_ENDPOINT_URL``,
credentials from the usual AWS sources, never stored or logged). A store that cannot be reached
(connection refused, timeouts, 5xx) is retried with backoff for ``DARWIN_STORAGE_RETRY_S`` seconds
(default 120); every write is whole or absent, so giving up leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from pathlib import Path

from pydantic import BaseModel

from darwin.memory.blobs import (  # noqa: F401 - the store's errors, re-exported for its users
    Blobs,
    ImmutableConflict,
    StorageDown,
    StoreError,
    guard_public_methods,
    open_fs,
    storage_errors,
)
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    ReviewRecord,
    code_hash,
    read_candidate,
)


class LeaseHeld(StoreError):
    """Another live orchestrator holds the run."""


def writer() -> dict:
    """Who writes: the host and process (a commit records it)."""
    import socket

    return {"host": socket.gethostname(), "pid": os.getpid()}


@guard_public_methods
class RunStore:
    """One run's typed records, code, logs, models, reviews and pointers, as blobs under
    ``<root>/<run_id>``."""

    def __init__(self, storage_url: str | Path, run_id: str):
        fs, root = open_fs(storage_url)
        self.blobs = Blobs(fs, f"{root.rstrip('/')}/{run_id}")
        self.run_id = run_id

    @property
    def fs(self):
        return self.blobs.fs

    @property
    def root(self) -> str:
        return self.blobs.root

    @property
    def local(self) -> bool:
        return self.blobs.local

    # -- any object by name (what copies a run whole: darwin export) ------------------------------
    def read_object(self, name: str) -> bytes | None:
        """The bytes of the run's object ``name`` (as ``files()`` lists it); None when absent."""
        return self.blobs.read(name)

    def create_object(self, name: str, data: bytes) -> bool:
        """Create the immutable object ``name`` (True), or find it there with the same bytes
        (False, a retry); StoreError when it holds other bytes."""
        return self.blobs.create(name, data)

    def update_pointer(self, name: str, change) -> bytes:
        """Move the mutable pointer ``name`` from its bytes (None when absent) to
        ``change(old)`` by compare-and-swap; ``change`` may raise to refuse the move."""
        return self.blobs.update_pointer(name, change)

    def pointer(self, name: str) -> dict | None:
        """A mutable pointer's current JSON (None when absent)."""
        data = self.blobs.read(name)
        return json.loads(data) if data is not None else None

    def files(self) -> list[str]:
        """Every object of the run, as paths relative to the run's root."""
        return self.blobs.find()

    @staticmethod
    def _json(model: BaseModel) -> bytes:
        return model.model_dump_json(indent=1).encode()

    def exists(self) -> bool:
        return self.blobs.read("run.json", immutable=True) is not None

    # -- run ----------------------------------------------------------------------------------
    def create(self, meta: dict) -> None:
        self.blobs.create("run.json", json.dumps(meta, indent=1, sort_keys=True).encode())

    def meta(self) -> dict:
        data = self.blobs.read("run.json", immutable=True)
        if data is None:
            raise StoreError(f"run {self.run_id} not found")
        return json.loads(data)

    # -- code and candidates ------------------------------------------------------------------
    def put_code(self, source: str) -> str:
        sha = code_hash(source)
        try:
            self.blobs.create(f"code/{sha}.py", source.encode())
        except ImmutableConflict:
            pass  # same hash = same program up to whitespace: the first one stays
        return sha

    def code(self, sha: str) -> str:
        data = self.blobs.read(f"code/{sha}.py", immutable=True)
        if data is None:
            raise StoreError(f"code {sha[:12]} missing from run {self.run_id}")
        return data.decode()

    def put_candidate(self, record: CandidateRecord) -> None:
        self.blobs.create(f"candidates/{record.id}.json", self._json(record))

    def candidate(self, cid: str) -> CandidateRecord | None:
        data = self.blobs.read(f"candidates/{cid}.json", immutable=True)
        return read_candidate(json.loads(data)) if data is not None else None

    def candidates(self) -> list[CandidateRecord]:
        return [read_candidate(json.loads(d)) for d in self._records("candidates")]

    def _records(self, folder: str) -> list[bytes]:
        """The bytes of every JSON record in ``folder``, in name order (none: empty)."""
        return self.blobs.read_many([n for n in self.blobs.names(folder) if n.endswith(".json")])

    # -- evaluations --------------------------------------------------------------------------
    def put_evaluation(self, record: EvaluationRecord) -> None:
        self.blobs.create(f"evaluations/{record.candidate_id}-s{record.seed}.json",
                          self._json(record))

    def evaluation(self, cid: str, seed: int) -> EvaluationRecord | None:
        data = self.blobs.read(f"evaluations/{cid}-s{seed}.json", immutable=True)
        return EvaluationRecord.model_validate_json(data) if data is not None else None

    def evaluations(self) -> list[EvaluationRecord]:
        return [EvaluationRecord.model_validate_json(d) for d in self._records("evaluations")]

    # -- children training on other machines (darwin run --pool) ---------------------------
    def beat(self, cid: str, seed: int, info: dict) -> None:
        """The heartbeat of (cid, seed)'s training on a worker: ``info`` and a counter that
        moves with every beat (the orchestrator watches it move, never compares clocks)."""

        def forward(old: bytes | None) -> bytes:
            n = json.loads(old).get("beat", 0) + 1 if old else 1
            return json.dumps({**info, "beat": n}).encode()

        self.update_pointer(f"beats/{cid}-s{seed}.json", forward)

    def last_beat(self, cid: str, seed: int) -> dict | None:
        return self.pointer(f"beats/{cid}-s{seed}.json")

    def beat_stamps(self) -> dict[tuple[str, int], str]:
        """Every child's heartbeat as one listing: (cid, seed) -> a stamp that changes with
        each beat (the orchestrator watches many children with one request)."""
        return {_cid_seed(name): stamp for name, stamp in self.blobs.stamps("beats").items()
                if name.endswith(".json")}

    def evaluated(self) -> set[tuple[str, int]]:
        """The (cid, seed) pairs with an evaluation record, from one listing."""
        return {_cid_seed(n) for n in self.blobs.names("evaluations") if n.endswith(".json")}

    def put_lost(self, cid: str, seed: int, attempt: int, what: dict) -> None:
        """Attempt ``attempt`` of (cid, seed) was lost with its worker: an infrastructure
        failure, never the child's (its evaluation comes from a later attempt)."""
        self.blobs.create(f"lost/{cid}-s{seed}-a{attempt}.json",
                          json.dumps(what, sort_keys=True).encode())

    def lost(self, cid: str | None = None, seed: int | None = None) -> list[dict]:
        """The lost attempts (of (cid, seed), or all), oldest attempt first."""
        prefix = f"{cid}-s{seed}-a" if cid is not None else ""
        names = [n for n in self.blobs.names("lost")
                 if n.rsplit("/", 1)[-1].startswith(prefix) and n.endswith(".json")]
        return [json.loads(d) for d in self.blobs.read_many(sorted(names))]

    # -- generations and HEAD -----------------------------------------------------------------
    def head_versions(self) -> list[dict] | None:
        """Every version of HEAD, oldest first: {version, at, generation, host, pid}; None when
        the store keeps no versions (a local folder, a bucket without versioning)."""
        versions = self.blobs.versions("HEAD")
        if versions is None:
            return None
        rows = []
        for version, at, data in versions:
            head = json.loads(data)
            rows.append({"version": version, "at": at, "generation": int(head["generation"]),
                         "host": head.get("host"), "pid": head.get("pid")})
        return rows

    def head(self) -> int | None:
        data = self.blobs.read("HEAD")
        return int(json.loads(data)["generation"]) if data is not None else None

    def commit(self, record: GenerationRecord) -> None:
        """Write the generation's snapshot, then move HEAD to it (never backwards)."""
        record.committed_at = record.committed_at or time.time()
        record.writer = record.writer or writer()
        try:
            self.blobs.create(f"generations/{record.generation:04d}.json", self._json(record))
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
        self.blobs.create(f"datasets/{sha}.txt", text.encode())
        return sha

    def dataset(self, sha: str) -> str:
        data = self.blobs.read(f"datasets/{sha}.txt", immutable=True)
        if data is None:
            raise StoreError(f"dataset {sha[:12]} missing from run {self.run_id}")
        return data.decode()

    # -- reviews (humans in the loop) -------------------------------------------------------
    def put_review(self, record: ReviewRecord) -> None:
        self.blobs.create(f"reviews/g{record.generation:04d}.json",
                         self._json(record))

    def review(self, generation: int) -> ReviewRecord | None:
        data = self.blobs.read(f"reviews/g{generation:04d}.json", immutable=True)
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
        self.blobs.create(f"finals/{cid}.json",
                         json.dumps(data, indent=1, sort_keys=True).encode())

    def final(self, cid: str) -> dict | None:
        data = self.blobs.read(f"finals/{cid}.json", immutable=True)
        return json.loads(data) if data is not None else None

    def generation(self, n: int) -> GenerationRecord:
        data = self.blobs.read(f"generations/{n:04d}.json", immutable=True)
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
        self.blobs.create(f"logs/{cid}-s{seed}.log", data)

    def log(self, cid: str, seed: int) -> str | None:
        data = self.blobs.read(f"logs/{cid}-s{seed}.log", immutable=True)
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
                self.blobs.create(f"outputs/{cid}-s{seed}/{name}", data)
                stored += len(data)
        return stored

    def _stored_outputs(self, cid: str, seed: int) -> list[str]:
        return self.blobs.names(f"outputs/{cid}-s{seed}")

    def fetch_outputs(self, cid: str, seed: int, dest: Path) -> bool:
        """Copy a stored model into ``dest``; False when none was stored."""
        names = self._stored_outputs(cid, seed)
        if not names:
            return False
        dest.mkdir(parents=True, exist_ok=True)
        for name in names:
            data = self.blobs.read(name)
            if data is None:
                raise StoreError(f"{name} of run {self.run_id} vanished while it was read")
            (dest / name.rsplit("/", 1)[-1]).write_bytes(data)
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


def _cid_seed(name: str) -> tuple[str, int]:
    """``evaluations/g001-c02-s3.json`` -> ("g001-c02", 3)."""
    cid, seed = name.rsplit("/", 1)[-1].removesuffix(".json").rsplit("-s", 1)
    return cid, int(seed)


@storage_errors
def list_runs(storage_url: str | Path) -> list[str]:
    fs, root = open_fs(storage_url)
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rsplit("/", 1)[-1] for e in entries if fs.exists(f"{e}/run.json"))
