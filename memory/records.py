"""Memory records: schema-versioned pydantic models, immutable once written.

A candidate record is written before its child trains (with its code stored content-addressed);
each evaluation of it (one per seed) is a separate record; a generation snapshot commits the
population after selection. Old schema versions stay readable through ``read_candidate``.
"""

from __future__ import annotations

import hashlib
import statistics
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1


def code_hash(source: str) -> str:
    """Content address of a program: sha256 of its text with normalised line endings and no
    trailing whitespace, so formatting noise does not defeat the cache."""
    normal = "\n".join(line.rstrip() for line in source.replace("\r\n", "\n").split("\n")).strip()
    return hashlib.sha256(normal.encode()).hexdigest()


class CandidateRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION
    id: str
    run_id: str
    generation: int
    parents: list[str] = Field(default_factory=list)  # [target] or [target, proposer]
    repair_of: str | None = None  # the broken candidate this one repairs
    code_sha: str
    # Extra program files next to train.py (an approved file layout): name -> code sha.
    files: dict[str, str] = Field(default_factory=dict)
    diff: str = ""
    mutator: str = ""
    mode: str = ""
    operator: str | None = None
    kind: str | None = None
    reasoning: str = ""
    requests: list[dict[str, Any]] = Field(default_factory=list)
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    llm_failure: str | None = None
    llm_detail: str = ""
    # What reading the answer assumed ("kind not stated"), or how it was made ("the LLM's
    # spending cap was reached: offline mutator").
    notes: list[str] = Field(default_factory=list)
    created_at: float = 0.0
    mutate_s: float = 0.0  # making this candidate: the prompt's answer (LLM calls) or the edit
    llm_latency_s: list[float] = Field(default_factory=list)  # per LLM call, in order


class EvaluationRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION
    candidate_id: str
    code_sha: str
    seed: int
    budget: str
    status: str  # "ok" or a Failure value
    detail: str = ""
    val_loss: float | None = None
    perplexity: float | None = None
    mfu: float | None = None
    # "estimated" (FLOPs shown by perturbation in the candidate's process: reported, never
    # selected on) or "measured" (by a trusted workload the candidate cannot see).
    mfu_basis: str = "estimated"
    train_wall_s: float = 0.0
    eval_wall_s: float | None = None
    tokens_served: int = 0
    claims: dict[str, Any] = Field(default_factory=dict)
    flags: list[str] = Field(default_factory=list)
    log_tail: str = ""  # untrusted, capped
    isolated: bool = True
    cached: bool = False  # answered from the training cache, not trained again
    # The scorer's checks (probes, tolerance, largest gap, edge, verified) and its secret
    # batching/probe seed, revealed after scoring so the evaluation can be audited.
    checks: dict[str, Any] = Field(default_factory=dict)
    audit_seed: str = ""
    # Timing (wall clock, time.time()): when training started, when the evaluation was
    # recorded, and the seconds its tasks waited for a training slot.
    train_started_at: float = 0.0
    scored_at: float = 0.0
    queue_wait_s: float = 0.0
    # Seconds its training sandbox was started ahead of the program (DARWIN_WARM): start-up
    # hidden behind other work, not counted in train_wall_s. 0: started cold.
    warm_s: float = 0.0
    # The losses the program printed, [step, seconds since its start, loss]: its claims, stamped
    # by the trusted side as it read each line (reports draw them, nothing scores with them).
    curve: list[list[float]] = Field(default_factory=list)
    # Where it trained and scored (the host name), and which attempt it was: a later attempt
    # when an earlier one was lost with its worker (darwin run --pool; lost/ has those).
    machine: str = ""
    attempt: int = 1


def mean_loss(losses: list[float]) -> float:
    """Fitness: the mean val loss over a program's seeds (lower is better); infinite with none,
    so a program with no finished run sorts last."""
    return statistics.fmean(losses) if losses else float("inf")


def rank_key(losses: list[float], min_runs: int) -> tuple[bool, float]:
    """How a population is ordered: members measured on ``min_runs`` seeds first, each group by
    mean val loss. A one-seed mean is the winner's curse (the luckiest draw of many children),
    so it never ranks above a measured member, whatever its value."""
    return (len(losses) < min_runs, mean_loss(losses))


class Member(BaseModel):
    candidate_id: str
    losses: list[float]
    mfu: float | None = None

    @property
    def fitness(self) -> float:
        return mean_loss(self.losses)


class GenerationRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    generation: int
    population: list[Member]
    children: list[str] = Field(default_factory=list)
    promoted: list[str] = Field(default_factory=list)  # children that displaced a member
    filled: list[str] = Field(default_factory=list)  # children that took an empty slot
    noise: float = 0.0  # the promotion margin used (2 sigma of the seed)
    # The runs a member needs to count as measured: only such a member is the best, an elite,
    # the favoured parent and the test split's subject (the population is ranked with
    # rank_key, so population[0] is measured whenever any member is). 1 in records written
    # before it was recorded, which ranked by mean loss alone and called slot-fillers promoted.
    min_runs: int = 1
    pareto: list[str] = Field(default_factory=list)  # non-dominated on (val loss, MFU)
    wall_s: float = 0.0
    committed_at: float = 0.0
    # What the generation asked of the run store (memory.blobs.IOStats): calls, bytes, seconds.
    storage: dict = Field(default_factory=dict)
    writer: dict = Field(default_factory=dict)  # the committing process: host, pid

    def measured(self, member: Member, min_runs: int = 1) -> bool:
        """Whether ``member`` has the runs a claim about it needs: the record's min_runs, or the
        caller's when larger (the run's setting, for records from before it was recorded)."""
        return len(member.losses) >= max(self.min_runs, min_runs)

    def best(self, min_runs: int = 1) -> Member | None:
        """The best member measured on enough seeds (see ``measured``); None when none is."""
        return next((m for m in self.population if self.measured(m, min_runs)), None)


def read_candidate(data: dict) -> CandidateRecord:
    """Read any schema version we ever wrote (version 1 is the first)."""
    version = data.get("schema_version", 1)
    if version > SCHEMA_VERSION:
        raise ValueError(f"candidate record schema {version} is newer than this DARWIN ({SCHEMA_VERSION})")
    return CandidateRecord.model_validate(data)


# -- humans in the loop ----------------------------------------------------------------------
# A review is one pause between generations: the model's open requests (merged), a review gate
# (every N generations), or both. It is stored once answered, with who answered, when and what.

Via = Literal["ui", "cli", "api", "terminal", "timeout", "no-review"]


class AskedRequest(BaseModel):
    """One request put to the humans: the same request from several children is asked once."""

    id: str  # r1, r2, ... within its review
    key: str  # kind + normalised detail: the same request asked again is not asked twice
    kind: str
    detail: str  # the model's words (untrusted)
    asked_by: list[str]  # candidate ids
    results: list[str] = Field(default_factory=list)  # "g001-c00: val loss 2.4131", per asker


class RequestDecision(BaseModel):
    request: str
    verdict: Literal["approve", "refuse"] = "refuse"
    comment: str = ""
    value: str = ""  # what was granted: a dataset file, a package requirement, file names


class ReviewAnswer(BaseModel):
    decisions: list[RequestDecision] = Field(default_factory=list)
    veto: list[str] = Field(default_factory=list)
    pin: list[str] = Field(default_factory=list)
    stop: bool = False
    remaining: int | None = None  # generations still to run after this one
    note: str = ""
    via: Via = "api"
    reviewer: str = ""


class ReviewRecord(BaseModel):
    schema_version: int = SCHEMA_VERSION
    run_id: str
    generation: int  # the review comes after this generation committed
    requests: list[AskedRequest] = Field(default_factory=list)
    gate: bool = False
    population: list[str] = Field(default_factory=list)  # who may be vetoed
    pinnable: list[str] = Field(default_factory=list)  # who may be pinned
    # Children kept out of the population by an integrity flag since the previous review, with
    # the flag: the review's page lists them, and pinning one is the only way in.
    flagged: dict[str, str] = Field(default_factory=dict)
    asked_at: float = 0.0
    deadline: float = 0.0
    answered_at: float = 0.0
    answer: ReviewAnswer | None = None
    defaults_applied: bool = False  # nobody answered (timeout, --no-review)
    rejected: list[str] = Field(default_factory=list)  # answers refused, and why
    flow_run_id: str | None = None
    # What each approval granted, by request id: {"kind": "dataset", "name", "sha256", ...},
    # {"kind": "package", "requirement"}, {"kind": "file_layout", "files"}, {"kind": "budget",
    # "command"}; each with the "note" the next prompts read. It takes effect from the next
    # generation on, never retroactively.
    granted: dict[str, dict] = Field(default_factory=dict)
