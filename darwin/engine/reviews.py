"""Humans in the loop, as plain functions of records (no Prefect, no I/O): what a review between
generations asks (the model's open requests, merged; a review gate every N generations), its
stated defaults, which answers make sense, and what an answer changes: the population the next
generation starts from (vetoes, pins), how many generations the run still has, and the notes
the next prompts quote.

The flow pauses with what ``due`` returns and stores the answer; everything here reads the
stored reviews, so a resumed run (even one that crashed while paused) sees the same state.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, Field

from darwin.errors import UserError
from darwin.memory import (
    AskedRequest,
    CandidateRecord,
    EvaluationRecord,
    RequestDecision,
    ReviewAnswer,
    ReviewRecord,
)

MAX_REMAINING = 1000  # generations a gate may add (a typo's ceiling, not a policy)
NOTES_IN_PROMPT = 8  # the most recent human notes the next prompts quote
NOTE_CHARS = 600
MAX_ASKED = 12  # requests one review asks; the rest wait for the next one


class ReviewPolicy(BaseModel):
    """How this invocation of the run asks people (a flow parameter, not part of the experiment:
    a resumed run may be reviewed differently)."""

    mode: Literal["ask", "defaults"] = Field(
        default="ask", description="ask: pause for an answer; defaults: apply the defaults at once")
    every: int = Field(default=0, ge=0, description="a review gate every N generations; 0: none")
    timeout_s: float = Field(default=900.0, gt=0,
                             description="seconds a pause waits before its defaults apply")
    poll_s: float = Field(default=2.0, gt=0, description="how often a paused run looks for an answer")



def make_policy(asks: bool, every: int, timeout_s: float) -> ReviewPolicy:
    """How a run asks people, or one line naming the setting and the fix (as `darwin run`'s
    flags: ``invalid --review-every: ...``). ``asks``: False applies the defaults at once."""
    if every < 0:
        raise UserError(f"invalid --review-every: {every}; give N >= 1, or 0 for no gates")
    if not timeout_s > 0 or timeout_s == float("inf"):
        raise UserError(f"invalid --review-timeout: {timeout_s}; give the seconds a review "
                        "waits, for example 900")
    return ReviewPolicy(mode="ask" if asks else "defaults", every=every, timeout_s=timeout_s)

# -- what to ask --------------------------------------------------------------------------------
def request_key(kind: str, detail: str) -> str:
    """The same request in other words of case, spacing or final punctuation is one request."""
    words = re.sub(r"\s+", " ", detail.lower()).strip().rstrip(".!;:, ")
    return f"{kind}: {words}"


def _result(cid: str, evaluation: EvaluationRecord | None) -> str:
    if evaluation is None:
        return f"{cid}: not evaluated"
    if evaluation.val_loss is not None:
        return f"{cid}: val loss {evaluation.val_loss:.4f}"
    return f"{cid}: failed ({evaluation.status})"


def open_requests(candidates: Iterable[CandidateRecord], first_runs: dict[str, EvaluationRecord],
                  reviews: Sequence[ReviewRecord], upto: int) -> list[AskedRequest]:
    """The requests of generations <= ``upto`` that no earlier review asked, merged by key, in
    the order they were first made; ``first_runs`` maps a candidate to its first evaluation."""
    asked = {r.key for review in reviews for r in review.requests}
    merged: dict[str, AskedRequest] = {}
    for cand in sorted(candidates, key=lambda c: (c.generation, c.id)):
        if cand.generation > upto:
            continue
        for req in cand.requests:
            kind, detail = str(req.get("kind", "other")), str(req.get("detail", ""))
            key = request_key(kind, detail)
            if key in asked or not detail.strip():
                continue
            item = merged.setdefault(key, AskedRequest(id=f"r{len(merged) + 1}", key=key,
                                                       kind=kind, detail=detail, asked_by=[]))
            if cand.id not in item.asked_by:
                item.asked_by.append(cand.id)
                item.results.append(_result(cand.id, first_runs.get(cand.id)))
    # A model that asks for everything at once gets a form a person can still read.
    return list(merged.values())[:MAX_ASKED]


def gate_due(generation: int, policy: ReviewPolicy) -> bool:
    return policy.every > 0 and generation >= 1 and generation % policy.every == 0


def due(run_id: str, generation: int, planned: int, policy: ReviewPolicy,
        requests: list[AskedRequest], population: list[str], pinnable: list[str],
        flagged: dict[str, str] | None = None) -> ReviewRecord | None:
    """The review to hold after ``generation`` committed, or None. Requests are asked when a
    next generation could act on them, or when a gate pauses anyway."""
    gate = gate_due(generation, policy)
    asking = bool(requests) and (generation < planned or gate)
    if not gate and not asking:
        return None
    return ReviewRecord(run_id=run_id, generation=generation, gate=gate,
                        requests=requests if asking else [], population=population,
                        pinnable=pinnable, flagged=flagged or {})


def default_answer(review: ReviewRecord, via: str = "timeout") -> ReviewAnswer:
    """The stated defaults: every request refused, the run continues unchanged."""
    return ReviewAnswer(decisions=[RequestDecision(request=r.id) for r in review.requests],
                        via=via)  # type: ignore[arg-type]


def complete(review: ReviewRecord, answer: ReviewAnswer) -> ReviewAnswer:
    """The answer with a decision for every request (the default, refuse, where none was
    given), in the requests' order."""
    given = {d.request: d for d in answer.decisions}
    decisions = [given.get(r.id, RequestDecision(request=r.id)) for r in review.requests]
    return answer.model_copy(update={"decisions": decisions})


def check_answer(review: ReviewRecord, answer: ReviewAnswer) -> list[str]:
    """What is wrong with an answer the form's schema let through, each said with the fix
    (empty: the answer stands)."""
    problems: list[str] = []
    ids = {r.id: r for r in review.requests}
    seen: set[str] = set()
    for d in answer.decisions:
        if d.request not in ids:
            problems.append(f"request {d.request!r} is not asked here: answer {', '.join(ids)}")
        elif d.request in seen:
            problems.append(f"request {d.request} is answered twice: keep one decision")
        seen.add(d.request)
        req = ids.get(d.request)
        if req is not None and d.verdict == "approve":
            problems += _value_problems(req.kind, d)
    if (answer.veto or answer.pin or answer.stop or answer.remaining is not None) and not review.gate:
        problems.append("veto, pin, stop and remaining belong to a review gate; this review only "
                        "asks about requests")
    for cid in answer.veto:
        if cid not in review.population:
            problems.append(f"veto {cid}: not in the population ({', '.join(review.population)})")
    for cid in answer.pin:
        if cid not in review.pinnable:
            problems.append(f"pin {cid}: not a scored candidate of this run's latest generations")
    both = sorted(set(answer.veto) & set(answer.pin))
    if both:
        problems.append(f"{', '.join(both)}: both vetoed and pinned; choose one")
    survivors = (set(review.population) - set(answer.veto)) | set(answer.pin)
    if review.population and not survivors:
        problems.append("the veto removes every member: keep at least one, or stop the run")
    if answer.stop and answer.remaining not in (None, 0):
        problems.append(f"stop ends the run after this generation, remaining "
                        f"{answer.remaining} runs {answer.remaining} more: give one of them")
    if answer.remaining is not None and not 0 <= answer.remaining <= MAX_REMAINING:
        problems.append(f"remaining: {answer.remaining} is not between 0 and {MAX_REMAINING}")
    return problems


def _value_problems(kind: str, decision: RequestDecision) -> list[str]:
    """What an approval must say it grants (its value), checked without side effects."""
    from darwin.evaluation import BUDGETS
    from darwin.sandbox import PackageRefused, check_requirement

    value = decision.value.strip()
    if kind == "dataset":
        return _dataset_problems(decision)
    if kind == "package":
        try:
            check_requirement(value)
        except PackageRefused as e:
            return [f"approving {decision.request} (a package): {e}"]
    if kind == "file_layout":
        try:
            file_names(value)
        except ValueError as e:
            return [f"approving {decision.request} (a file layout): {e}"]
    if kind == "budget" and value not in BUDGETS:
        return [f"approving {decision.request} (a budget): name it in value: "
                f"{'|'.join(BUDGETS)} (a new run starts at that budget; scores of different "
                "budgets are never compared)"]
    return []


def _dataset_problems(decision: RequestDecision) -> list[str]:
    from darwin.evaluation import DatasetRefused, local_file

    value = decision.value.strip()
    if not value:
        return [f"approving {decision.request} (a dataset): name the local text file in its value"]
    try:
        local_file(value)
    except DatasetRefused as e:
        return [f"{decision.request}: {e}"]
    return []


# -- what the answers change ---------------------------------------------------------------------
def planned_generations(generations: int, reviews: Sequence[ReviewRecord]) -> int:
    """The run's last generation: the experiment's, unless a gate stopped the run or changed
    how many generations remain (the latest gate that said so wins)."""
    planned = generations
    for review in sorted(reviews, key=lambda r: r.generation):
        answer = review.answer
        if answer is None:
            continue
        if answer.stop:
            planned = review.generation
        elif answer.remaining is not None:
            planned = review.generation + answer.remaining
    return planned


def pins_and_vetoes(reviews: Sequence[ReviewRecord], upto: int) -> tuple[list[str], set[str]]:
    """(pinned, vetoed) by the reviews held after generations <= ``upto``; a later veto unpins."""
    pinned: list[str] = []
    vetoed: set[str] = set()
    for review in sorted(reviews, key=lambda r: r.generation):
        if review.generation > upto or review.answer is None:
            continue
        for cid in review.answer.veto:
            vetoed.add(cid)
            if cid in pinned:
                pinned.remove(cid)
        for cid in review.answer.pin:
            if cid not in pinned:
                pinned.append(cid)
            vetoed.discard(cid)
    return pinned, vetoed


def amended_population(members: Sequence[str], reviews: Sequence[ReviewRecord], upto: int
                       ) -> list[str]:
    """The population the generation after ``upto`` starts from: the committed members less the
    vetoed ones, plus pinned candidates selection had dropped."""
    pinned, vetoed = pins_and_vetoes(reviews, upto)
    kept = [m for m in members if m not in vetoed]
    return kept + [p for p in pinned if p not in kept]


def human_notes(reviews: Sequence[ReviewRecord], limit: int = NOTES_IN_PROMPT) -> list[str]:
    """What the humans said, for the next prompts: refusals and comments on the model's requests
    and the gates' notes, most recent last."""
    notes: list[str] = []
    for review in sorted(reviews, key=lambda r: r.generation):
        answer = review.answer
        if answer is None:
            continue
        asked = {r.id: r for r in review.requests}
        when = f"after generation {review.generation}"
        for d in answer.decisions:
            req = asked.get(d.request)
            if req is None:
                continue
            said = f'; they said: "{_clip(d.comment)}"' if d.comment.strip() else ""
            if d.verdict == "refuse":
                why = " (nobody answered in time)" if review.defaults_applied else ""
                notes.append(f"{when}: your request ({req.kind}: {_clip(req.detail, 200)}) was "
                             f"refused{why}{said}")
            else:
                granted = review.granted.get(d.request, {}).get("note", "")
                notes.append(f"{when}: your request ({req.kind}: {_clip(req.detail, 200)}) was "
                             f"approved{said}" + (f". {granted}" if granted else ""))
        if answer.note.strip():
            notes.append(f'{when}: "{_clip(answer.note)}"')
    return notes[-limit:]


def _clip(text: str, limit: int = NOTE_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- what approvals grant ---------------------------------------------------------------------
class Grants(BaseModel):
    """What the approvals of earlier reviews give a generation's children."""

    sources: dict[str, str] = Field(default_factory=dict)  # source name -> dataset sha256
    packages: list[str] = Field(default_factory=list)  # pip requirements
    files: list[str] = Field(default_factory=list)  # extra program files allowed

    def key(self) -> str:
        return self.model_dump_json()


FILE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}\.py$")
MAX_FILES = 6


def grants_for(reviews: Sequence[ReviewRecord], generation: int) -> Grants:
    """The grants children of ``generation`` have: approvals of reviews held after earlier
    generations (a review after generation g counts from g + 1 on, never before)."""
    grants = Grants()
    for review in sorted(reviews, key=lambda r: r.generation):
        if review.generation >= generation:
            break
        for granted in review.granted.values():
            kind = granted.get("kind")
            if kind == "dataset":
                grants.sources[granted["name"]] = granted["sha256"]
            elif kind == "package" and granted["requirement"] not in grants.packages:
                grants.packages.append(granted["requirement"])
            elif kind == "file_layout":
                grants.files += [f for f in granted["files"] if f not in grants.files]
    return grants


def file_names(value: str) -> list[str]:
    """The file names an approved file layout allows, or ValueError saying what is wrong."""
    names = [n for n in re.split(r"[\s,]+", value.strip()) if n]
    if not names:
        raise ValueError("name the files in value, for example: model.py data.py")
    bad = [n for n in names if not FILE_NAME.match(n) or n == "train.py"]
    if bad:
        raise ValueError(f"{', '.join(bad)}: a file is a Python module name next to train.py "
                         "(letters, digits, _; ends in .py; not train.py)")
    if len(names) > MAX_FILES:
        raise ValueError(f"{len(names)} files; at most {MAX_FILES}")
    return sorted(set(names))
