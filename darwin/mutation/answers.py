"""What a mutator answers, and how an LLM's text becomes that answer.

One structure for every mutator (LLM or offline catalogue): reasoning, a declared kind of change
from one shared taxonomy, the edits (search/replace blocks) or a whole new program, and optional
typed requests to humans. JSON (schema-constrained where the server supports it) is tried first;
a plain-text protocol works with any server:

    REASONING: why this should help ...
    KIND: learning_rate
    <<<<<<< SEARCH
    learning_rate = 1e-3
    =======
    learning_rate = 2e-3
    >>>>>>> REPLACE
    REQUEST package: please install einops

or, for a whole-program rewrite, the new program in one ```python fenced block.
"""

from __future__ import annotations

import enum
import json
import re

from pydantic import BaseModel, Field, ValidationError
from pydantic.json_schema import SkipJsonSchema


class ChangeKind(str, enum.Enum):
    """Kinds of change to a training program, shared by the LLM prompt and the offline catalogue."""

    learning_rate = "learning_rate"
    schedule = "schedule"  # warmup, decay shape
    regularisation = "regularisation"  # dropout, weight decay, clipping
    optimizer = "optimizer"
    architecture = "architecture"  # block structure, weight tying, attention variants
    normalisation = "normalisation"
    activation = "activation"
    initialisation = "initialisation"
    width_depth = "width_depth"  # layers, heads, embedding width
    batch_block = "batch_block"  # how the token budget is spent
    efficiency = "efficiency"  # same maths, faster
    hyperparameter = "hyperparameter"  # several constants at once (a tuned search's trial)
    other = "other"


class RequestKind(str, enum.Enum):
    dataset = "dataset"
    package = "package"
    file_layout = "file_layout"
    budget = "budget"
    other = "other"


class Edit(BaseModel):
    search: str = Field(description="exact text of the current program to replace, unique in it")
    replace: str = Field(description="the new text")


class ProgramFile(BaseModel):
    name: str = Field(description="an approved extra file next to train.py, e.g. model.py")
    content: str = Field(description="the file's whole new content")


class HumanRequest(BaseModel):
    kind: RequestKind
    detail: str = Field(max_length=2000)


class MutationAnswer(BaseModel):
    reasoning: str = Field(description="what to change and why it should lower validation loss")
    kind: ChangeKind
    edits: list[Edit] = Field(default_factory=list, description="search/replace edits")
    program: str | None = Field(default=None, description="the whole new program (rewrite mode)")
    requests: list[HumanRequest] = Field(default_factory=list)
    files: list[ProgramFile] = Field(
        default_factory=list, description="extra program files (only names a human approved)")
    # What reading the answer had to assume (a kind not stated, an unknown kind): recorded with
    # the candidate, never sent as the model's own words.
    notes: SkipJsonSchema[list[str]] = Field(default_factory=list, exclude=True)


class AnswerError(ValueError):
    """The answer could not be read; the message is written for the model to fix it."""


def answer_schema() -> dict:
    return MutationAnswer.model_json_schema()


KIND_NOT_STATED = "kind not stated"


def _kind(value: str, notes: list[str]) -> ChangeKind:
    """The kind a model named, leniently: aliases and spellings map to the taxonomy; an unknown
    kind becomes ``other`` with a note (a usable program is never refused over its label)."""
    key = re.sub(r"[^a-z]+", "_", value.strip().lower()).strip("_")
    aliases = {"lr": "learning_rate", "regularization": "regularisation",
               "normalization": "normalisation", "initialization": "initialisation",
               "init": "initialisation", "width": "width_depth", "depth": "width_depth",
               "batch": "batch_block", "block": "batch_block"}
    key = aliases.get(key, key)
    try:
        return ChangeKind(key)
    except ValueError:
        notes.append(f"unknown kind {value.strip()[:60]!r} read as other")
        return ChangeKind.other


def _from_json(text: str) -> MutationAnswer | None:
    notes: list[str] = []
    body = text.strip()
    fenced = re.fullmatch(r"```(?:json)?\s*(.*?)\s*```", body, flags=re.S)
    if fenced:
        body = fenced.group(1)
    if not body.startswith("{"):
        return None
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if isinstance(data, dict):
        if isinstance(data.get("kind"), str) and data["kind"].strip():
            data["kind"] = _kind(data["kind"], notes).value
        else:
            data["kind"] = ChangeKind.other.value
            notes.append(KIND_NOT_STATED)
    try:
        return MutationAnswer.model_validate(data).model_copy(update={"notes": notes})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise AnswerError(f"the JSON answer is invalid at {where!r}: {first['msg']}") from None


BLOCK = re.compile(
    r"<{5,9} ?SEARCH[^\n]*\n(?P<search>.*?)\n?={5,9}[^\n]*\n(?P<replace>.*?)\n?>{5,9} ?REPLACE",
    flags=re.S,
)


FILE_BLOCK = re.compile(r"^FILE[ \t]+(?P<name>\S+)[ \t]*\n```(?:python|py)?[ \t]*\n"
                        r"(?P<content>.*?)```", flags=re.S | re.M)


def _from_text(text: str) -> MutationAnswer:
    notes: list[str] = []
    files = [ProgramFile(name=m.group("name"), content=m.group("content"))
             for m in FILE_BLOCK.finditer(text)]
    text = FILE_BLOCK.sub("", text)  # the rest is about train.py
    reasoning = re.search(r"^REASONING:\s*(.*?)(?=^KIND:|^<{5,9}|^```|\Z)", text, flags=re.S | re.M)
    kind = re.search(r"^KIND:\s*([A-Za-z _-]+)\s*$", text, flags=re.M)
    edits = [Edit(search=m.group("search"), replace=m.group("replace")) for m in BLOCK.finditer(text)]
    program = None
    if not edits:
        fences = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text, flags=re.S)
        if fences:
            program = max(fences, key=len)
    if not edits and program is None and not files:
        raise AnswerError(
            "no edits found: give SEARCH/REPLACE blocks (<<<<<<< SEARCH ... ======= ... "
            ">>>>>>> REPLACE) or the whole program in one ```python block"
        )
    requests = []
    for m in re.finditer(r"^REQUEST\s+([a-z_]+)\s*:\s*(.+)$", text, flags=re.M):
        try:
            requests.append(HumanRequest(kind=RequestKind(m.group(1)), detail=m.group(2)[:2000]))
        except ValueError:
            requests.append(HumanRequest(kind=RequestKind.other, detail=m.group(0)[:2000]))
    if reasoning:
        said = reasoning.group(1).strip()
    else:  # a server that just talks: its words before the first edit or fence
        said = re.split(r"^<{5,9}|^```", text, maxsplit=1, flags=re.M)[0].strip()
        said = "\n".join(line for line in said.splitlines()
                         if not line.startswith(("KIND:", "REQUEST ")))[:4000]
    if kind is None:
        notes.append(KIND_NOT_STATED)
    return MutationAnswer(
        reasoning=said,
        kind=_kind(kind.group(1), notes) if kind else ChangeKind.other,
        edits=edits,
        program=program,
        requests=requests,
        files=files,
        notes=notes,
    )


def parse_answer(text: str) -> MutationAnswer:
    """Read a model's answer (JSON or the text protocol). Raises AnswerError with a fix hint."""
    if not text.strip():
        raise AnswerError("the answer was empty")
    answer = _from_json(text)
    if answer is None:
        answer = _from_text(text)
    if not answer.edits and not answer.program and not answer.files:
        raise AnswerError("the answer has neither edits nor a program")
    return answer
