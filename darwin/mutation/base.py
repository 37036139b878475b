"""What every mutator shares: the context it is given, the result it returns, the ``Mutator``
protocol the engine programs against, and the strict applier every answer goes through.

A mutator is the LLM (``llm_mutator.LLMMutator``) or the offline catalogue (``offline``); the
engine never asks which one it holds, only what it can do (``modes``, ``redraws_duplicates``,
``uses_llm``), and repairs through the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Protocol

from darwin.evaluation import Budget
from darwin.llm import Usage
from darwin.mutation.answers import MutationAnswer
from darwin.mutation.edits import EditError, apply_edits, check_program
from darwin.mutation.untrusted import quote_untrusted

Mode = Literal["search_replace", "whole", "chunk"]
MODES: tuple[str, ...] = ("search_replace", "whole", "chunk")
CHUNK_PROBABILITY = 0.3  # the paper's per-chunk rewrite probability (a setting)


@dataclass
class FailureNote:
    """A recent failure shown to the model: our own one-line summary + the quoted log tail."""

    summary: str
    log_tail: str = ""

    @property
    def quoted(self) -> str:
        return quote_untrusted(self.log_tail, label="failure log", limit=2000) if self.log_tail else ""


@dataclass
class MutationContext:
    target_program: str
    budget: Budget
    mode: Mode = "search_replace"
    proposer_program: str | None = None
    proposer_ideas: list[str] = field(default_factory=list)
    target_score: str | None = None
    lessons: list[str] = field(default_factory=list)
    failures: list[FailureNote] = field(default_factory=list)
    human_notes: list[str] = field(default_factory=list)
    # Per kind of change, what the lessons say (steers the offline bandit; empty = memory off).
    kind_stats: dict = field(default_factory=dict)
    task: Literal["improve", "repair"] = "improve"
    repair_summary: str = ""  # our own one-line description of the failure to fix
    chunk_probability: float = CHUNK_PROBABILITY
    seed: int = 0  # for the chunk-wise operator's choice of chunks
    # An approved file layout: the extra files the child may write next to train.py, and the
    # target's current ones (name -> text).
    allowed_files: list[str] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    # For a tuned hyper-parameter search (hpo.py), which edits the seed and not the target:
    # the seed program, and every earlier trial with its result (params, distributions, value;
    # value None: it failed), read from the run's store.
    seed_program: str | None = None
    trials: list[dict] = field(default_factory=list)


@dataclass
class MutationResult:
    mutator: str
    mode: str
    child: str | None = None
    answer: MutationAnswer | None = None
    diff: str = ""
    failure: str | None = None  # an LLMFailure value, "unusable_answer", ...
    detail: str = ""
    attempts: int = 0
    usage: list[Usage] = field(default_factory=list)
    prompt: str = ""  # the first user prompt, kept for the record
    operator: str | None = None  # the catalogue operator (offline mutators)
    notes: list[str] = field(default_factory=list)  # how it was made, for the record
    files: dict[str, str] | None = None  # the child's extra files (None: the target's, unchanged)
    trial: dict | None = None  # a tuned search's trial, stored with the child (hpo.py)

    @property
    def ok(self) -> bool:
        return self.child is not None

    @property
    def input_tokens(self) -> int:
        return sum(u.input_tokens for u in self.usage)

    @property
    def output_tokens(self) -> int:
        return sum(u.output_tokens for u in self.usage)

    @property
    def cost_usd(self) -> float:
        return sum(u.cost_usd for u in self.usage)


@dataclass
class RepairCase:
    """A failed evaluation, as a repair sees it: a class (syntax, import, shape, oom, nan, deadline,
    contract, scoring_check, crash), our own one-line summary, the quoted log tail (untrusted) and
    the program line a traceback names."""

    cls: str
    summary: str
    log_tail: str = ""
    line: int | None = None


class Mutator(Protocol):
    """What the engine needs of a mutator."""

    name: str  # recorded with every candidate it makes
    modes: tuple[str, ...]  # the modes it works in; the engine draws one when there are several
    redraws_duplicates: bool  # cheap and seeded: a child repeating an earlier one is drawn again
    uses_llm: bool  # said to the user (which mutator runs, and whether a key was found)
    edits_seed: bool  # every child is the seed program edited (a tuned search), not the target

    def mutate(self, ctx: MutationContext) -> MutationResult: ...

    def repair(self, broken: str, parent: str | None, case: RepairCase,
               budget: Budget) -> MutationResult: ...


def apply_files(current: dict[str, str], answer: MutationAnswer, allowed: list[str]
                ) -> dict[str, str]:
    """The child's extra files: the target's, with the answer's replacing or adding files.
    The edit guard: only names a human approved, each a module that parses."""
    files = dict(current)
    for f in answer.files:
        if f.name not in allowed:
            approved = ", ".join(allowed) or "none"
            raise EditError(f"file {f.name!r} is not allowed (approved extra files: {approved});"
                            " to use more files, ask with: REQUEST file_layout: <names and why>")
        content = f.content if f.content.endswith("\n") else f.content + "\n"
        check_program(content)
        files[f.name] = content
    return files


def apply_answer(target: str, answer: MutationAnswer, mode: str) -> str:
    """The child program an answer describes, checked to parse; EditError if it cannot be made."""
    if answer.files and not answer.edits and not answer.program:
        return target  # only the extra files change
    if mode == "whole" or (answer.program and not answer.edits):
        if not answer.program:
            raise EditError("whole-program mode: give the complete new program")
        child = answer.program if answer.program.endswith("\n") else answer.program + "\n"
        if child == target:
            raise EditError("the new program is identical to the target")
    else:
        child = apply_edits(target, answer.edits)
    check_program(child)
    return child
