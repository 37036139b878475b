"""The evolution engine's steps, free of Prefect: the flows call these through thin tasks.

Every step is idempotent, so a run resumed after a crash (or kill -9) redoes nothing that was
persisted: a candidate's code and record are written before it trains and reused if present;
an evaluation is looked up in the run store, then in the training cache (keyed on the normalised
code's hash + budget + seed + device + scorer / data / torch versions), and only then trained.
Candidate ids are deterministic (``g002-c01``, repairs ``g002-c01-r1``) and each mutation's
randomness is derived from (run seed, generation, child), so regenerating gives the same answer
for offline mutators, and persisted LLM answers are simply reused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from darwin.engine import reviews as hitl
from darwin.engine.experiment import Experiment
from darwin.engine.faults import checkpoint, note_training
from darwin.engine.ids import SEED_ID, candidate_id, parse
from darwin.engine.selection import Scored, pareto, select
from darwin.engine.slots import slot_count, warm_pays
from darwin.evaluation.budgets import Budget, get_budget
from darwin.evaluation.data import load_dataset
from darwin.evaluation.evaluate import Evaluation, evaluate_program
from darwin.evaluation.failures import Failure
from darwin.evaluation.outputs import OUTPUT_LIMITS
from darwin.evaluation.scoring import PrestartedScorer, prestart_scorer
from darwin.evaluation.token_server import DEFAULT_SOURCE
from darwin.evaluation.training import NO_EXTRAS, Extras, Prestarted, TrainResult, prestart
from darwin.evaluation.training import train as train_program
from darwin.llm.client import LLMFailure
from darwin.llm.ledger import StoredLedger
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    Member,
    ReviewRecord,
    code_hash,
    rank_key,
)
from darwin.memory.store import RunStore
from darwin.mutation.answers import ChangeKind
from darwin.mutation.base import FailureNote, MutationContext, MutationResult
from darwin.mutation.lessons import aggregate, first_run_outcomes, lesson_lines
from darwin.mutation.registry import make_mutator, mutator_modes
from darwin.mutation.repair import repair_case
from darwin.sandbox import Sandbox
from darwin.sandbox.base import may_renice
from darwin.settings import Settings

log = logging.getLogger(__name__)

DUPLICATE_REDRAWS = 4
CAP_NOTE = "the LLM's spending cap was reached: made by the offline mutator"
_CAP_SAID: set[str] = set()  # runs whose cap this process has announced
_CAP_SAID_LOCK = threading.Lock()
_SOURCES: dict = {}  # approved datasets' tokens, by sha256, read once per process
_SOURCES_LOCK = threading.Lock()
OUTPUT_FILES = tuple(OUTPUT_LIMITS)
TRUSTED_FILES = ("scoring.py", "outputs.py", "heldout.py", "hardware.py", "token_server.py",
                 "evaluate.py", "training.py", "runtime/eval_server.py", "runtime/darwin_io.py",
                 "runtime/warm.py")


@dataclass
class Engine:
    store: RunStore
    experiment: Experiment
    settings: Settings
    sandbox: Sandbox

    @cached_property
    def budget(self) -> Budget:
        return get_budget(self.experiment.budget)

    @cached_property
    def scorer_version(self) -> str:
        h = hashlib.sha256()
        pkg = resources.files("darwin.evaluation")
        for name in TRUSTED_FILES:
            h.update((pkg / name).read_bytes())
        import torch

        h.update(load_dataset().sha256.encode() + torch.__version__.encode())
        return h.hexdigest()[:16]

    @cached_property
    def waits(self) -> dict[tuple[str, int], float]:
        """Seconds each (candidate, seed) waited for a training slot in this process (the tasks
        add to it; its evaluation record takes it)."""
        return {}

    def note_wait(self, cid: str, seed: int, seconds: float) -> None:
        self.waits[(cid, seed)] = self.waits.get((cid, seed), 0.0) + seconds

    def seeds(self) -> list[int]:
        """The seeds every program is measured on, first run first."""
        return [self.experiment.seed + k for k in range(max(self.experiment.seeds,
                                                             self.experiment.min_runs))]

    # -- the LLM: one ledger for the run, the offline catalogue once its cap is reached ----
    @cached_property
    def ledger(self) -> StoredLedger:
        return StoredLedger(self.store, self.settings.llm.max_cost_usd)

    def _mutator(self, rng):
        mutator = make_mutator(self.experiment.mutator, self.settings.llm, rng=rng,
                               ledger=self.ledger)
        if mutator.uses_llm and self.ledger.capped():
            return self._offline(rng)
        return mutator, []

    def _run_mutator(self, rng, use):
        """(mutator, use(mutator)) with the run's mutator, or the offline one once the cap is
        reached, also when another child reached it during this call (the calls made before
        the refusal stay on the result, so on the candidate's record)."""
        mutator, notes = self._mutator(rng)
        result = use(mutator)
        if result.failure == LLMFailure.cost_cap.value:
            spent = result.usage
            mutator, notes = self._offline(rng)
            result = use(mutator)
            result.usage = spent + result.usage
        result.notes += notes
        return mutator, result

    def _offline(self, rng):
        spent = self.ledger.summary()
        with _CAP_SAID_LOCK:
            if self.store.run_id not in _CAP_SAID:
                _CAP_SAID.add(self.store.run_id)
                log.warning("the LLM's spending cap is reached ($%.4f of $%.4f, %d calls): the "
                            "rest of this run uses the offline mutator (raise "
                            "DARWIN_LLM__MAX_COST_USD and --resume to go on with the LLM)",
                            spent["cost_usd"], spent["max_cost_usd"], spent["calls"])
        return make_mutator("offline", rng=rng), [CAP_NOTE]

    # -- candidates -------------------------------------------------------------------------
    def add_seed_program(self, source: str) -> CandidateRecord:
        existing = self.store.candidate(SEED_ID)
        if existing is not None:
            return existing
        record = CandidateRecord(id=SEED_ID, run_id=self.store.run_id, generation=0,
                                 code_sha=self.store.put_code(source), mutator="seed",
                                 reasoning="generation 0: the seed program", created_at=time.time())
        self.store.put_candidate(record)
        return record

    def code(self, cid: str) -> str:
        record = self.store.candidate(cid)
        assert record is not None, cid
        return self.store.code(record.code_sha)

    def _record(self, cid: str, gen: int, parents: list[str], result: MutationResult,
                started: float, repair_of: str | None = None) -> CandidateRecord:
        answer = result.answer
        if result.files is not None:  # the answer wrote extra files (an approved file layout)
            files = {name: self.store.put_code(text) for name, text in result.files.items()}
        else:  # the parent's extra files, unchanged
            parent = self.store.candidate(parents[0]) if parents else None
            files = dict(parent.files) if parent is not None else {}
        record = CandidateRecord(
            id=cid, run_id=self.store.run_id, generation=gen, parents=parents, repair_of=repair_of,
            code_sha=self.store.put_code(result.child) if result.child else "",
            files=files if result.child else {},
            diff=result.diff, mutator=result.mutator, mode=result.mode, operator=result.operator,
            kind=answer.kind.value if answer else None,
            reasoning=answer.reasoning if answer else "",
            requests=[r.model_dump(mode="json") for r in answer.requests] if answer else [],
            input_tokens=result.input_tokens, output_tokens=result.output_tokens,
            cost_usd=result.cost_usd, llm_failure=result.failure if not result.ok else None,
            llm_detail=result.detail if not result.ok else "",
            notes=[*(answer.notes if answer else []), *result.notes], created_at=time.time(),
            mutate_s=round(time.time() - started, 3),
            llm_latency_s=[round(u.latency_s, 3) for u in result.usage],
        )
        self.store.put_candidate(record)  # persisted BEFORE it trains
        return record

    def _mutation_context(self, target: str, proposer: str | None, gen: int = 0
                          ) -> MutationContext:
        kind_stats, lines, failures = self.lessons()
        target_rec = self.store.candidate(target)
        return MutationContext(
            target_program=self.code(target),
            budget=self.budget,
            proposer_program=self.code(proposer) if proposer else None,
            target_score=self._score_line(target) if target_rec else None,
            lessons=lines, failures=failures, kind_stats=kind_stats,
            human_notes=hitl.human_notes(self.store.reviews()),
            chunk_probability=self.experiment.chunk_probability,
            allowed_files=self.grants(gen).files,
            files={name: self.store.code(sha)
                   for name, sha in (target_rec.files if target_rec else {}).items()},
        )  # the LLM's mode is a seeded draw from the mode mix, made in propose()

    def propose(self, gen: int, index: int, target: str, proposer: str | None) -> CandidateRecord:
        """Make (or reuse) child ``index`` of generation ``gen``: its prompt, then its mutation."""
        return self.mutate(gen, index, target, proposer, self.prompt(gen, index, target, proposer))

    def prompt(self, gen: int, index: int, target: str, proposer: str | None
               ) -> MutationContext | None:
        """What the mutator of child ``index`` is told (None when the child exists already):
        the programs, the lessons of the run so far, and for the LLM a seeded draw of its mode."""
        if self.store.candidate(candidate_id(gen, index)) is not None:
            return None
        ctx = self._mutation_context(target, proposer, gen)
        modes = [m for m in self.experiment.mode_mix if m in mutator_modes(
            self.experiment.mutator, self.settings.llm)]
        if len(modes) > 1:
            rng = np.random.default_rng([self.experiment.seed, gen, index])
            weights = np.array([self.experiment.mode_mix[m] for m in modes], dtype=float)
            ctx.mode = modes[int(rng.choice(len(modes), p=weights / weights.sum()))]  # type: ignore[assignment]
            ctx.seed = int(rng.integers(1 << 31))
        if not self.experiment.memory:
            ctx.lessons, ctx.kind_stats = [], {}
        return ctx

    def mutate(self, gen: int, index: int, target: str, proposer: str | None,
               ctx: MutationContext | None) -> CandidateRecord:
        """Child ``index`` of generation ``gen``, made by the mutator from ``ctx`` (or reused)."""
        cid = candidate_id(gen, index)
        existing = self.store.candidate(cid)
        if existing is not None:
            return existing
        if ctx is None:  # it was there when the prompt was built, and is gone: build it again
            ctx = self.prompt(gen, index, target, proposer)
            assert ctx is not None
        rng = np.random.default_rng([self.experiment.seed, gen, index])
        started = time.time()
        mutator, result = self._run_mutator(rng, lambda m: m.mutate(ctx))
        checkpoint("mutate")
        if mutator.redraws_duplicates:
            # The catalogue can draw an edit an earlier generation already tried (its score is
            # known): draw again, a few times. Only earlier generations count, so the outcome
            # does not depend on which sibling was proposed first (resume stays reproducible).
            seen = {c.code_sha for c in self.store.candidates() if c.generation < gen}
            for redraw in range(1, DUPLICATE_REDRAWS + 1):
                if not result.child or code_hash(result.child) not in seen:
                    break
                again = make_mutator(self.experiment.mutator, self.settings.llm,
                                     rng=np.random.default_rng([self.experiment.seed, gen, index,
                                                                redraw]))
                result = again.mutate(ctx)
        return self._record(cid, gen, [target] + ([proposer] if proposer else []), result, started)

    def repair_by_id(self, cid: str, attempt: int) -> CandidateRecord:
        """Repair try ``attempt`` of candidate ``cid``, from its failed first run."""
        broken = self.store.candidate(cid)
        evaluation = self.store.evaluation(cid, self.seeds()[0])
        assert broken is not None and evaluation is not None, cid
        return self.repair(broken, evaluation, attempt)

    def repair(self, broken: CandidateRecord, evaluation: EvaluationRecord, attempt: int
               ) -> CandidateRecord:
        """A new candidate that tries to fix ``broken``; its parent is the broken one."""
        cid = str(parse(broken.id).repaired(attempt))
        existing = self.store.candidate(cid)
        if existing is not None:
            return existing
        failure = Failure(evaluation.status)
        case = repair_case(failure, evaluation.detail, evaluation.log_tail)
        parent_src = self.code(broken.parents[0]) if broken.parents else None
        started = time.time()
        _, result = self._run_mutator(attempt, lambda m: m.repair(
            self.code(broken.id), parent_src, case, self.budget))
        checkpoint("repair")
        if result.answer is not None and broken.kind:
            # A repair keeps the broken child's intent; its lesson counts for that kind.
            result.answer = result.answer.model_copy(update={"kind": ChangeKind(broken.kind)})
        return self._record(cid, broken.generation, [broken.id], result, started,
                            repair_of=broken.id)

    # -- evaluation -------------------------------------------------------------------------
    def _cache_path(self, code_sha: str, seed: int, extras: str = "") -> Path:
        parts = [code_sha, self.budget.model_dump(), seed, self.experiment.device,
                 self.scorer_version] + ([extras] if extras else [])
        key = hashlib.sha256(json.dumps(parts).encode())
        return self.settings.home / "cache" / "train" / f"{key.hexdigest()[:32]}.json"

    def _work(self, cid: str, seed: int) -> Path:
        return self.settings.scratch / self.store.run_id / f"{cid}-s{seed}"

    def needs_training(self, cid: str, seed: int) -> str | None:
        """None when (cid, seed) must be trained; else why not: its evaluation is in the
        store, the mutation made no program, the training cache knows it, or a training that
        finished before the orchestrator died waits to be scored."""
        if self.store.evaluation(cid, seed) is not None:
            return "evaluated"
        record = self.store.candidate(cid)
        assert record is not None, cid
        if not record.code_sha:
            return "no program"
        if self._cache_path(record.code_sha, seed, self._extras_key(cid)).exists():
            return "cached"
        if (self._work(cid, seed) / "trained.json").exists():
            return "trained"
        return None

    def _prepare(self, cid: str, seed: int) -> tuple[Path, Path]:
        record = self.store.candidate(cid)
        assert record is not None, cid
        work = self._work(cid, seed)
        work.mkdir(parents=True, exist_ok=True)
        program = work / "train.py"
        program.write_text(self.store.code(record.code_sha))
        return program, work / "trained.json"

    def _on_trained(self, marker: Path, cid: str, seed: int):
        def on_trained(result: TrainResult) -> None:
            tmp = marker.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_text(result.to_json())
            tmp.replace(marker)
            note_training(self.store.run_id, cid, seed)
            checkpoint("score")

        return on_trained

    @cached_property
    def slots(self) -> int:
        """Children trained at once in this process (--slots, checked against the machine)."""
        return slot_count(self.experiment.device, self.budget.threads, self.budget.memory_mb,
                          self.settings.slots)

    @property
    def warming(self) -> bool:
        """Pre-start sandboxes while waiting for a slot (DARWIN_WARM; see README, "Speed")."""
        free = len(os.sched_getaffinity(0)) - self.slots * self.budget.threads
        return warm_pays(self.settings.warm, self.experiment.device, free, may_renice())

    def prestart_training(self, cid: str, seed: int) -> Prestarted | None:
        """(cid, seed)'s training sandbox, started now and waiting for its slot; None when
        there is nothing to train."""
        if self.needs_training(cid, seed) is not None:
            return None
        program, marker = self._prepare(cid, seed)
        return prestart(program, self.budget, seed, marker.parent / "run", self.sandbox,
                        device=self.experiment.device, extras=self.extras(cid))

    def prestart_scoring(self, cid: str, seed: int) -> PrestartedScorer | None:
        """(cid, seed)'s two evaluation sandboxes, started now (trusted code only) and given
        the model once they have a slot and the training sandbox is gone; None when its score
        needs no sandbox."""
        if self.store.evaluation(cid, seed) is not None:
            return None
        record = self.store.candidate(cid)
        if record is None or not record.code_sha:
            return None
        marker = self._work(cid, seed) / "trained.json"
        if self._cache_path(record.code_sha, seed, self._extras_key(cid)).exists() \
                or not marker.exists():
            return None
        return prestart_scorer(marker.parent / "run", self.budget, self.sandbox,
                               device=self.experiment.device,
                               packages=self.extras(cid).packages)

    def train(self, cid: str, seed: int, cpus: list[int] | None = None,
              prestarted: Prestarted | None = None) -> str:
        """Train (cid, seed) in the sandbox (``prestarted``'s, when given); its result waits in
        the scratch folder for the scorer (a marker: a training that finished before the
        orchestrator died is scored, not run again)."""
        if (known := self.needs_training(cid, seed)) is not None:
            return known
        program, marker = self._prepare(cid, seed)
        result = train_program(program, self.budget, seed, marker.parent / "run", self.sandbox,
                               device=self.experiment.device, cpus=cpus,
                               on_progress=lambda done, total: checkpoint("train"),
                               extras=self.extras(cid), prestarted=prestarted)
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
        existing = self.store.evaluation(cid, seed)
        if existing is not None:
            return existing
        record = self.store.candidate(cid)
        assert record is not None, cid
        if not record.code_sha:  # the mutation itself failed: nothing to train
            ev = EvaluationRecord(candidate_id=cid, code_sha="", seed=seed, budget=self.budget.name,
                                  status="no_child", detail=record.llm_detail or "no child")
            self.store.put_evaluation(ev)
            return ev
        cache = self._cache_path(record.code_sha, seed, self._extras_key(cid))
        if cache.exists():
            data = json.loads(cache.read_text())
            ev = EvaluationRecord(**{**data, "candidate_id": cid, "cached": True})
            self.store.put_evaluation(ev)
            return ev
        program, marker = self._prepare(cid, seed)
        trained = TrainResult.from_json(marker.read_text()) if marker.exists() else None
        result = evaluate_program(program, self.budget, seed, self.sandbox, marker.parent / "run",
                                  device=self.experiment.device, cpus=cpus, trained=trained,
                                  on_trained=self._on_trained(marker, cid, seed),
                                  on_progress=lambda done, total: checkpoint("train"),
                                  extras=self.extras(cid), prestarted_scorer=prestarted)
        ev = self._evaluation_record(cid, record.code_sha, seed, result)
        self.store.put_log(cid, seed, result.train.log_path)
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")  # writers race
        tmp.write_text(ev.model_dump_json())
        tmp.replace(cache)
        self.store.put_evaluation(ev)
        return ev

    def _evaluation_record(self, cid: str, sha: str, seed: int, e: Evaluation) -> EvaluationRecord:
        d = e.to_dict()
        tail = e.train.log_tail(3000) if not e.train.ok else (e.score.log_tail if e.score else "")
        return EvaluationRecord(
            candidate_id=cid, code_sha=sha, seed=seed, budget=self.budget.name, status=d["status"],
            detail=d["detail"], val_loss=d["val_loss"], perplexity=d["perplexity"], mfu=d["mfu"],
            train_wall_s=d["train_wall_s"], eval_wall_s=d["eval_wall_s"],
            tokens_served=d["tokens_served"], claims=d["claims"], flags=d["flags"],
            log_tail=tail[-3000:], isolated=d["isolated"], checks=d["checks"],
            audit_seed=d["audit_seed"], train_started_at=d["train_started_at"] or 0.0,
            scored_at=time.time(), curve=d["curve"],
            queue_wait_s=round(self.waits.pop((cid, seed), 0.0), 3), warm_s=d["warm_s"],
        )

    def keep_models(self, cids: list[str]) -> int:
        """Put the trained models (first seed) of ``cids`` into the store, so the final test
        and later readers need no scratch folder. Only population members: children that did
        not survive would fill the bucket with models nobody reads. Returns bytes stored."""
        seed = self.seeds()[0]
        stored = 0
        for cid in cids:
            # The scorer's checked copy (regular files, allowed names, sane sizes), not the
            # folder the child wrote.
            checked = self._work(cid, seed) / "run" / "model-val"
            if (checked / "model.safetensors").is_file() and not self.store.has_outputs(cid, seed):
                stored += self.store.put_outputs(cid, seed, checked, OUTPUT_FILES)
        return stored

    def select(self, gen: int, children: list[str], started_at: float) -> GenerationRecord:
        """Generation ``gen``'s survivors among the previous population and ``children`` (the
        final version of each child, after repairs): the record to commit."""
        previous = self.store.generation(gen - 1)
        population = [self.scored(c) for c in self.population_ids(gen - 1)]
        scored = [s for s in (self.scored(c) for c in children) if s.losses]
        pinned, _ = hitl.pins_and_vetoes(self.store.reviews(), gen - 1)
        chosen = select(population, scored, self.experiment.population, self.experiment.keep,
                        previous.noise, self.experiment.min_runs, pinned=frozenset(pinned))
        new_pop = chosen.population
        return GenerationRecord(
            run_id=self.store.run_id, generation=gen, min_runs=self.experiment.min_runs,
            population=[Member(candidate_id=m.id, losses=m.losses, mfu=m.mfu) for m in new_pop],
            children=children, promoted=chosen.promoted, filled=chosen.filled,
            noise=previous.noise,
            # A promoted child is in both lists: each candidate once.
            pareto=pareto(list({s.id: s for s in new_pop + scored}.values()),
                          self.seed_fitness(), previous.noise),
            wall_s=time.time() - started_at,
        )

    # -- humans in the loop: what a review asks, what its answer changes ---------------------
    def population_ids(self, gen: int) -> list[str]:
        """Generation ``gen``'s population as the next generation starts from it: the
        committed members, less the vetoed, plus the pinned."""
        members = [m.candidate_id for m in self.store.generation(gen).population]
        return hitl.amended_population(members, self.store.reviews(), gen)

    def amended(self, record: GenerationRecord) -> GenerationRecord:
        """``record`` with the reviews' vetoes and pins applied (best first)."""
        ids = self.population_ids(record.generation)
        if ids == [m.candidate_id for m in record.population]:
            return record
        known = {m.candidate_id: m for m in record.population}
        members = [known.get(c) or Member(candidate_id=c, losses=(s := self.scored(c)).losses,
                                          mfu=s.mfu) for c in ids]
        return record.model_copy(update={"population": sorted(
            members, key=lambda m: rank_key(m.losses, record.min_runs))})

    def grants(self, gen: int) -> hitl.Grants:
        return hitl.grants_for(self.store.reviews(), gen)

    def extras(self, cid: str) -> Extras:
        """What approvals give candidate ``cid`` (those of reviews before its generation)."""
        record = self.store.candidate(cid)
        assert record is not None, cid
        grants = self.grants(record.generation)
        if not grants.sources and not grants.packages and not record.files:
            return NO_EXTRAS
        layer = None
        if grants.packages:
            from darwin.sandbox.packages import PackageRefused, build_layer

            try:  # built when approved; rebuilt here after a resume on another machine
                layer = build_layer(grants.packages, self.settings.home / "layers")
            except PackageRefused as e:
                from darwin.errors import UserError

                raise UserError(f"the run's approved packages cannot be installed here: {e}"
                                ) from None
        return Extras(
            sources={name: self._source_tokens(sha) for name, sha in grants.sources.items()},
            packages=layer,
            files={name: self.store.code(sha) for name, sha in record.files.items()})

    def _source_tokens(self, sha: str):
        from darwin.evaluation.extra_data import encode

        with _SOURCES_LOCK:
            if sha not in _SOURCES:
                _SOURCES[sha] = encode(self.store.dataset(sha))
            return _SOURCES[sha]

    def _extras_key(self, cid: str) -> str:
        """What the training cache must tell apart: the grants and the program's extra files
        (empty without either, so older cache entries stay valid)."""
        record = self.store.candidate(cid)
        assert record is not None, cid
        grants = self.grants(record.generation)
        if grants == hitl.Grants() and not record.files:
            return ""
        return json.dumps([grants.key(), sorted(record.files.items())])

    def apply_approvals(self, review: ReviewRecord) -> list[str]:
        """Carry out the approvals of ``review``'s answer (store an approved dataset, install an
        approved package, ...), recording each in ``review.granted``; the problems that leave
        the review paused (a contaminated dataset, a package without a wheel)."""
        from darwin.evaluation.extra_data import DatasetRefused, check_dataset, source_name
        from darwin.sandbox.packages import PackageRefused, build_layer, check_requirement

        assert review.answer is not None
        asked = {r.id: r for r in review.requests}
        granted: dict[str, dict] = {}
        problems: list[str] = []
        grants = self.grants(review.generation + 1)
        next_gen = review.generation + 1
        for d in review.answer.decisions:
            req = asked.get(d.request)
            if req is None or d.verdict != "approve":
                continue
            value = d.value.strip()
            try:
                if req.kind == "dataset":
                    name = source_name(value)
                    taken = set(grants.sources) | {DEFAULT_SOURCE}
                    base, n = name, 2
                    while name in taken:
                        name, n = f"{base}_{n}", n + 1
                    clean = check_dataset(value, name)
                    sha = self.store.put_dataset(clean.text)
                    grants.sources[name] = sha
                    granted[d.request] = {
                        "kind": "dataset", "name": name, "sha256": sha, "file": value,
                        "chars": len(clean.text), "dropped": clean.dropped,
                        "note": f"from generation {next_gen} on, read it with darwin_io."
                                f"get_batch(batch, block, source={name!r}) ({len(clean.text)} "
                                "characters, same vocabulary, within the same token budget)"}
                elif req.kind == "package":
                    requirement = check_requirement(value)
                    # Built now, with what is already approved: what cannot be installed
                    # together is refused while a person is there to hear it.
                    build_layer([*grants.packages, requirement], self.settings.home / "layers")
                    grants.packages.append(requirement)
                    granted[d.request] = {
                        "kind": "package", "requirement": requirement,
                        "note": f"{requirement} is importable from generation {next_gen} on"}
                elif req.kind == "file_layout":
                    files = hitl.file_names(value)
                    granted[d.request] = {
                        "kind": "file_layout", "files": files,
                        "note": f"from generation {next_gen} on you may put code in "
                                f"{', '.join(files)} next to train.py (a FILE block per file)"}
                elif req.kind == "budget":
                    granted[d.request] = {"kind": "budget", "budget": value,
                                          "command": self._budget_command(value),
                                          "note": f"a person may start a new run at the {value}"
                                                  " budget; this run keeps its own"}
                else:
                    granted[d.request] = {"kind": req.kind, "note": ""}
            except (DatasetRefused, PackageRefused, ValueError) as e:
                problems.append(f"{d.request}: {e}")
        review.granted = granted
        return problems

    def _budget_command(self, budget: str) -> str:
        """The command that starts a new run at ``budget`` from the current best program
        (written where a person can read it)."""
        best = self.population_ids(self.store.head() or 0)[0]
        path = self.settings.home / "seeds" / f"{self.store.run_id}-{best}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.code(best))
        return f"darwin run --budget {budget} --seed-program {path}"

    def planned_generations(self) -> int:
        reviews = self.store.reviews()
        if self.experiment.continued_after is not None:  # a continuation's plan supersedes
            reviews = [r for r in reviews if r.generation > self.experiment.continued_after]
        return hitl.planned_generations(self.experiment.generations, reviews)

    def review_due(self, gen: int, policy: hitl.ReviewPolicy) -> ReviewRecord | None:
        """The review to hold after generation ``gen`` (None: none, or already answered)."""
        if self.store.review(gen) is not None:
            return None
        reviews = self.store.reviews()
        first = self.seeds()[0]
        first_runs = {e.candidate_id: e for e in self.store.evaluations() if e.seed == first}
        requests = hitl.open_requests(self.store.candidates(), first_runs, reviews, gen)
        population = self.population_ids(gen)
        record = self.store.generation(gen)
        scored_children = [c for c in record.children if self.scored(c).losses]
        pinnable = population + [c for c in scored_children if c not in population]
        return hitl.due(self.store.run_id, gen, self.planned_generations(), policy, requests,
                        population, pinnable)

    # -- what we know -----------------------------------------------------------------------
    def scored(self, cid: str) -> Scored:
        evals = [e for e in self.store.evaluations() if e.candidate_id == cid]
        losses = [e.val_loss for e in sorted(evals, key=lambda e: e.seed) if e.val_loss is not None]
        mfus = [e.mfu for e in evals if e.mfu is not None]
        return Scored(cid, losses, mfu=sum(mfus) / len(mfus) if mfus else None,
                      verified=all(e.isolated for e in evals))

    def seed_fitness(self) -> float:
        """The seed program's mean val loss (generation 0)."""
        return self.store.generation(0).population[0].fitness

    def _score_line(self, cid: str) -> str | None:
        s = self.scored(cid)
        if not s.losses:
            return None
        return f"{s.fitness:.4f} (mean of {len(s.losses)} seed(s))"

    def lessons(self) -> tuple[dict, list[str], list[FailureNote]]:
        """Per kind of change: effects of children against their parents (first runs), and the
        most recent failures, for the next prompts and the offline bandit."""
        if not self.experiment.memory:
            return {}, [], []
        found = first_run_outcomes(self.store.candidates(), self.store.evaluations(),
                                   self.seeds()[0])
        outcomes = [o for _, _, o in found]
        failures = [(rec.created_at, rec, ev) for rec, ev, o in found if o.effect is None]
        stats = aggregate(outcomes)
        notes = [
            FailureNote(f"{rec.id} ({rec.kind}, {rec.operator or rec.mode}) failed: {ev.status}"
                        f" - {ev.detail[:200]}", ev.log_tail[-1500:])
            for _, rec, ev in sorted(failures, key=lambda x: x[0])[-3:]
        ]
        return stats, lesson_lines(stats), notes


def _out_dir(engine: Engine, cid: str, seed: int) -> Path:
    return engine._work(cid, seed) / "run" / "out"


def final_test(engine: Engine, cid: str) -> dict:
    """Score ``cid`` on the TEST split (reports only; never used by selection). Reuses the
    weights of its first training run (on disk, else from the store), else trains it again."""
    import shutil

    from darwin.evaluation.scoring import score
    from darwin.evaluation.training import train

    cached = engine.store.final(cid)
    if cached is not None:
        return cached
    seed = engine.seeds()[0]
    out = _out_dir(engine, cid, seed)
    work = engine.settings.scratch / engine.store.run_id / f"{cid}-test"
    if not (out / "model.safetensors").exists():
        shutil.rmtree(work / "stored-out", ignore_errors=True)
        if engine.store.fetch_outputs(cid, seed, work / "stored-out"):
            out = work / "stored-out"  # checked by the scorer like any child's output
    if not (out / "model.safetensors").exists():
        program = work / "train.py"
        work.mkdir(parents=True, exist_ok=True)
        program.write_text(engine.code(cid))
        trained = train(program, engine.budget, seed, work / "run", engine.sandbox,
                        device=engine.experiment.device, extras=engine.extras(cid))
        note_training(engine.store.run_id, cid, seed, "again-for-the-test-split")
        out = trained.out_dir
    checkpoint("final_test")
    s = score(out, engine.budget, engine.sandbox, work, split="test",
              device=engine.experiment.device, packages=engine.extras(cid).packages)
    result = {"candidate": cid, "split": "test", "seed": seed, "val_loss": None,
              "test_loss": s.loss, "test_perplexity": s.perplexity,
              "status": "ok" if s.ok else s.failure.value, "detail": s.detail}
    engine.store.put_final(cid, result)
    shutil.rmtree(work / "model-test", ignore_errors=True)
    return result


class RunRef(BaseModel):
    """What a task needs to find its run: ids and settings, never live objects (a task may run
    in another process; the Prefect UI shows these as its parameters)."""

    run_id: str
    store_url: str
    experiment: Experiment


_ENGINES: dict[str, Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(ref: RunRef) -> Engine:
    """The engine of a run in this process, built once from the run's ids and the DARWIN_*
    settings (the store's caches and the ledger are then shared by the process's tasks)."""
    key = ref.model_dump_json()
    with _ENGINES_LOCK:
        if key not in _ENGINES:
            _ENGINES[key] = build_engine(ref.run_id, ref.store_url, ref.experiment)
        return _ENGINES[key]


def build_engine(run_id: str, store_url: str, experiment: Experiment) -> Engine:
    """The engine for a run, from what a flow parameter can carry (ids, a URL, the settings)."""
    from darwin.sandbox import get_sandbox
    from darwin.settings import get_settings

    settings = get_settings()
    return Engine(RunStore(store_url, run_id), experiment, settings, get_sandbox(settings.sandbox))
