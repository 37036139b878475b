"""The evaluations of one run: each (candidate, seed) trained in the sandbox, then scored by the
trusted scorer, and the final score on the test split.

Every step is idempotent, so a run resumed after a crash (or kill -9) redoes nothing that was
persisted: an evaluation is looked up in the run store, then in the training cache (keyed on the
normalised code's hash + budget + seed + device + scorer / data / torch versions, and what
approvals give the candidate), and only then trained; a training that finished before the
orchestrator died waits in the scratch folder to be scored.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from functools import cached_property
from importlib import resources
from pathlib import Path

from darwin.engine.faults import checkpoint, note_training
from darwin.engine.human_loop import HumanLoop
from darwin.engine.run_context import RunContext
from darwin.evaluation import (
    OUTPUT_LIMITS,
    Evaluation,
    Prestarted,
    PrestartedScorer,
    TrainResult,
    load_dataset,
    prestart,
    prestart_scorer,
    train_then_score,
)
from darwin.evaluation import train as train_program
from darwin.memory import EvaluationRecord

OUTPUT_FILES = tuple(OUTPUT_LIMITS)


class Evaluations:
    def __init__(self, run: RunContext, humans: HumanLoop):
        self.run = run
        self.humans = humans
        # Seconds each (candidate, seed) waited for a training slot in this process (the tasks
        # add to it; its evaluation record takes it).
        self.waits: dict[tuple[str, int], float] = {}
        # Which attempt of (candidate, seed) this process makes (a worker's second try after
        # the first was lost with its machine); its evaluation record says so.
        self.attempts: dict[tuple[str, int], int] = {}

    @cached_property
    def scorer_version(self) -> str:
        # Every module of the trusted side (training, scoring, data, budgets, the sandbox-side
        # runtime): a change to any of them may change a score, so cached scores are not reused.
        h = hashlib.sha256()
        root = Path(str(resources.files("darwin.evaluation")))
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        import torch

        h.update(load_dataset().sha256.encode() + torch.__version__.encode())
        return h.hexdigest()[:16]

    def note_wait(self, cid: str, seed: int, seconds: float) -> None:
        self.waits[(cid, seed)] = self.waits.get((cid, seed), 0.0) + seconds

    def _cache_path(self, code_sha: str, seed: int, extras: str = "") -> Path:
        parts = [code_sha, self.run.budget.model_dump(), seed, self.run.experiment.device,
                 self.scorer_version] + ([extras] if extras else [])
        key = hashlib.sha256(json.dumps(parts).encode())
        return self.run.settings.home / "cache" / "train" / f"{key.hexdigest()[:32]}.json"

    def work_dir(self, cid: str, seed: int) -> Path:
        return self.run.settings.scratch / self.run.store.run_id / f"{cid}-s{seed}"

    def needs_training(self, cid: str, seed: int) -> str | None:
        """None when (cid, seed) must be trained; else why not: its evaluation is in the
        store, the mutation made no program, the training cache knows it, or a training that
        finished before the orchestrator died waits to be scored."""
        if self.run.store.evaluation(cid, seed) is not None:
            return "evaluated"
        record = self.run.store.candidate(cid)
        assert record is not None, cid
        if not record.code_sha:
            return "no program"
        if self._cache_path(record.code_sha, seed, self.humans.extras_key(cid)).exists():
            return "cached"
        if (self.work_dir(cid, seed) / "trained.json").exists():
            return "trained"
        return None

    def _prepare(self, cid: str, seed: int) -> tuple[Path, Path]:
        record = self.run.store.candidate(cid)
        assert record is not None, cid
        work = self.work_dir(cid, seed)
        work.mkdir(parents=True, exist_ok=True)
        program = work / "train.py"
        program.write_text(self.run.store.code(record.code_sha))
        return program, work / "trained.json"

    def _on_trained(self, marker: Path, cid: str, seed: int):
        def on_trained(result: TrainResult) -> None:
            tmp = marker.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(result.to_json())
            tmp.replace(marker)
            note_training(self.run.store.run_id, cid, seed)
            checkpoint("score")

        return on_trained

    def prestart_training(self, cid: str, seed: int) -> Prestarted | None:
        """(cid, seed)'s training sandbox, started now and waiting for its slot; None when
        there is nothing to train."""
        if self.needs_training(cid, seed) is not None:
            return None
        program, marker = self._prepare(cid, seed)
        return prestart(program, self.run.budget, seed, marker.parent / "run", self.run.sandbox,
                        device=self.run.experiment.device, extras=self.humans.extras(cid))

    def prestart_scoring(self, cid: str, seed: int) -> PrestartedScorer | None:
        """(cid, seed)'s two evaluation sandboxes, started now (trusted code only) and given
        the model once they have a slot and the training sandbox is gone; None when its score
        needs no sandbox."""
        if self.run.store.evaluation(cid, seed) is not None:
            return None
        record = self.run.store.candidate(cid)
        if record is None or not record.code_sha:
            return None
        marker = self.work_dir(cid, seed) / "trained.json"
        if self._cache_path(record.code_sha, seed, self.humans.extras_key(cid)).exists() \
                or not marker.exists():
            return None
        return prestart_scorer(marker.parent / "run", self.run.budget, self.run.sandbox,
                               device=self.run.experiment.device,
                               packages=self.humans.extras(cid).packages)

    def train(self, cid: str, seed: int, cpus: list[int] | None = None,
              prestarted: Prestarted | None = None) -> str:
        """Train (cid, seed) in the sandbox (``prestarted``'s, when given); its result waits in
        the scratch folder for the scorer (a marker: a training that finished before the
        orchestrator died is scored, not run again)."""
        if (known := self.needs_training(cid, seed)) is not None:
            return known
        program, marker = self._prepare(cid, seed)
        result = train_program(program, self.run.budget, seed, marker.parent / "run",
                               self.run.sandbox, device=self.run.experiment.device, cpus=cpus,
                               on_progress=lambda done, total: checkpoint("train"),
                               extras=self.humans.extras(cid), prestarted=prestarted)
        self._on_trained(marker, cid, seed)(result)
        return "trained"

    def evaluate(self, cid: str, seed: int, cpus: list[int] | None = None) -> EvaluationRecord:
        """Train and score (cid, seed): the two steps in one call."""
        self.train(cid, seed, cpus)
        return self.score(cid, seed, cpus)

    def score(self, cid: str, seed: int, cpus: list[int] | None = None,
              prestarted: PrestartedScorer | None = None) -> EvaluationRecord:
        """The trusted evaluation of (cid, seed), from the store, the training cache, or the
        training waiting in the scratch folder (trained again if that folder was emptied)."""
        existing = self.run.store.evaluation(cid, seed)
        if existing is not None:
            return existing
        record = self.run.store.candidate(cid)
        assert record is not None, cid
        if not record.code_sha:  # the mutation itself failed: nothing to train
            ev = EvaluationRecord(candidate_id=cid, code_sha="", seed=seed,
                                  budget=self.run.budget.name, status="no_child",
                                  detail=record.llm_detail or "no child")
            self.run.store.put_evaluation(ev)
            return ev
        cache = self._cache_path(record.code_sha, seed, self.humans.extras_key(cid))
        if cache.exists():
            data = json.loads(cache.read_text())
            ev = EvaluationRecord(**{**data, "candidate_id": cid, "cached": True})
            self.run.store.put_evaluation(ev)
            return ev
        program, marker = self._prepare(cid, seed)
        trained = TrainResult.from_json(marker.read_text()) if marker.exists() else None
        result = train_then_score(program, self.run.budget, seed, self.run.sandbox,
                                  marker.parent / "run", device=self.run.experiment.device,
                                  cpus=cpus, trained=trained,
                                  on_trained=self._on_trained(marker, cid, seed),
                                  on_progress=lambda done, total: checkpoint("train"),
                                  extras=self.humans.extras(cid), prestarted_scorer=prestarted)
        ev = self._evaluation_record(cid, record.code_sha, seed, result)
        self.run.store.put_log(cid, seed, result.train.log_path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # writers race
        tmp.write_text(ev.model_dump_json())
        tmp.replace(cache)
        shared = not self.run.store.local or self.run.experiment.pool
        if shared and ev.status == "ok" and seed == self.run.seeds()[0]:
            # On a shared store the machine that trained a child may die before the commit that
            # would keep its model (kill -9, a lost worker), and with a pool it is not the
            # machine that commits: the model goes with the record, so whoever commits or runs
            # the final test reads it instead of training it again.
            self.keep_models([cid])
        self.run.store.put_evaluation(ev)
        return ev

    def _evaluation_record(self, cid: str, sha: str, seed: int, e: Evaluation) -> EvaluationRecord:
        d = e.to_dict()
        tail = e.train.log_tail(3000) if not e.train.ok else (e.score.log_tail if e.score else "")
        return EvaluationRecord(
            candidate_id=cid, code_sha=sha, seed=seed, budget=self.run.budget.name,
            status=d["status"],
            detail=d["detail"], val_loss=d["val_loss"], perplexity=d["perplexity"], mfu=d["mfu"],
            mfu_basis=d["mfu_basis"],
            train_wall_s=d["train_wall_s"], eval_wall_s=d["eval_wall_s"],
            tokens_served=d["tokens_served"], claims=d["claims"], flags=d["flags"],
            log_tail=tail[-3000:], isolated=d["isolated"], checks=d["checks"],
            audit_seed=d["audit_seed"], train_started_at=d["train_started_at"] or 0.0,
            scored_at=time.time(), curve=d["curve"],
            queue_wait_s=round(self.waits.pop((cid, seed), 0.0), 3), warm_s=d["warm_s"],
            machine=socket.gethostname(), attempt=self.attempts.get((cid, seed), 1),
        )

    def keep_models(self, cids: list[str]) -> int:
        """Put the trained models (first seed) of ``cids`` into the store, so the final test
        and later readers need no scratch folder. On a local store only population members
        (children that did not survive would fill it with models nobody reads); on a shared one
        every child's, when it is scored (``score``). Returns bytes stored."""
        seed = self.run.seeds()[0]
        stored = 0
        for cid in cids:
            # The scorer's checked copy (regular files, allowed names, sane sizes), not the
            # folder the child wrote.
            checked = self.work_dir(cid, seed) / "run" / "model-val"
            store = self.run.store
            if (checked / "model.safetensors").is_file() and not store.has_outputs(cid, seed):
                stored += store.put_outputs(cid, seed, checked, OUTPUT_FILES)
        return stored

    def final_test(self, cid: str) -> dict:
        """Score ``cid`` on the TEST split (reports only; never used by selection). Reuses the
        weights of its first training run (on disk, else from the store), else trains it again."""
        from darwin.evaluation import score

        store, budget, sandbox, device = (self.run.store, self.run.budget, self.run.sandbox,
                                          self.run.experiment.device)
        cached = store.final(cid)
        if cached is not None:
            return cached
        seed = self.run.seeds()[0]
        out = self.work_dir(cid, seed) / "run" / "out"
        work = self.run.settings.scratch / store.run_id / f"{cid}-test"
        if not (out / "model.safetensors").exists():
            shutil.rmtree(work / "stored-out", ignore_errors=True)
            if store.fetch_outputs(cid, seed, work / "stored-out"):
                out = work / "stored-out"  # checked by the scorer like any child's output
        if not (out / "model.safetensors").exists():
            program = work / "train.py"
            work.mkdir(parents=True, exist_ok=True)
            program.write_text(self.run.code(cid))
            trained = train_program(program, budget, seed, work / "run", sandbox, device=device,
                                    extras=self.humans.extras(cid))
            note_training(store.run_id, cid, seed, "again-for-the-test-split")
            out = trained.out_dir
        checkpoint("final_test")
        s = score(out, budget, sandbox, work, split="test", device=device,
                  packages=self.humans.extras(cid).packages)
        result = {"candidate": cid, "split": "test", "seed": seed, "val_loss": None,
                  "test_loss": s.loss, "test_perplexity": s.perplexity,
                  "status": "ok" if s.ok else s.failure.value, "detail": s.detail}
        store.put_final(cid, result)
        shutil.rmtree(work / "model-test", ignore_errors=True)
        return result
