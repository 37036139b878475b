"""The run store over fsspec: a local folder by default; S3 slots in behind the same interface.

Layout of one run (every file but HEAD is written once and never changed):

    <root>/<run_id>/run.json                        the experiment settings and versions
    <root>/<run_id>/code/<sha256>.py                programs, content-addressed
    <root>/<run_id>/candidates/<id>.json            written BEFORE the child trains
    <root>/<run_id>/evaluations/<id>-s<seed>.json   one per trained seed
    <root>/<run_id>/generations/<n:04d>.json        a committed generation
    <root>/<run_id>/HEAD                            {"generation": n}, written last

HEAD moves only after the generation's snapshot is complete, with an atomic rename under a lock
on local disks (compare-and-swap with If-Match is the S3 backend's job), so a crash at any point
leaves the last committed generation intact and every persisted candidate reusable.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from pathlib import Path

import fsspec
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


class RunStore:
    def __init__(self, url: str | Path, run_id: str):
        self.fs, root = fsspec.core.url_to_fs(str(url))
        self.root = f"{root.rstrip('/')}/{run_id}"
        self.run_id = run_id
        self.local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple)
                                else (self.fs.protocol,))

    # -- low level ----------------------------------------------------------------------------
    def _path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def _write_once(self, path: str, data: bytes) -> None:
        """Immutable write: a second write must carry the same bytes (a retry), never others."""
        if self.fs.exists(path):
            if self.fs.cat_file(path) != data:
                raise StoreError(f"refusing to overwrite immutable record {path}")
            return
        self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
        self.fs.pipe_file(tmp, data)
        self.fs.mv(tmp, path)

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
        path = self._path("code", f"{sha}.py")
        if not self.fs.exists(path):  # same hash = same program up to whitespace: first one stays
            self._write_once(path, source.encode())
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
        self._write_once(self._path("generations", f"{record.generation:04d}.json"),
                         self._json(record))
        with self._lock():
            current = self.head()
            if current is not None and current >= record.generation:
                raise StoreError(
                    f"generation {record.generation} already committed (HEAD {current})")
            payload = json.dumps({"generation": record.generation}).encode()
            if self.local:
                tmp = Path(self._path(f"HEAD.tmp-{uuid.uuid4().hex[:8]}"))
                tmp.write_bytes(payload)
                os.replace(tmp, self._path("HEAD"))
            else:
                self.fs.pipe_file(self._path("HEAD"), payload)

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


def list_runs(url: str | Path) -> list[str]:
    fs, root = fsspec.core.url_to_fs(str(url))
    try:
        entries = fs.ls(root, detail=False)
    except FileNotFoundError:
        return []
    return sorted(e.rsplit("/", 1)[-1] for e in entries if fs.exists(f"{e}/run.json"))
