"""The experiment settings: one pydantic model, the evolve flow's parameter (a form in the Prefect
UI, recorded with each run). Runtime settings (storage, LLM endpoint, sandbox) are not here:
they come from DARWIN_* variables, and secrets are never flow parameters."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from darwin.errors import UserError

BudgetName = Literal["tiny", "cpu", "paper"]  # the keys of evaluation.budgets.BUDGETS
MutatorName = Literal["auto", "openai", "offline", "random", "hpo-tpe", "hpo-random"]
Device = Literal["cpu", "cuda"]


def _one_of(kind: Any, value: object) -> object:
    """The choice, or the error naming the known ones (before pydantic's own)."""
    if value not in get_args(kind):
        raise ValueError(f"unknown {value!r}; use one of {'|'.join(get_args(kind))}")
    return value


class Experiment(BaseModel):
    # Choices are Literal types, so the Prefect UI's run form offers them as a list.
    budget: BudgetName = Field(default="cpu", description="tiny | cpu | paper")
    generations: int = Field(default=3, ge=1, description="generations after the seed's")
    population: int = Field(default=4, ge=1, description="members kept after each generation")
    keep: int = Field(default=2, ge=1, description="elites that only a clearly better child displaces")
    children: int = Field(default=4, ge=1, description="children per generation")
    mutator: MutatorName = Field(
        default="auto", description="auto | openai | offline | random | hpo-tpe | hpo-random")
    mode_mix: dict[str, float] = Field(
        default_factory=lambda: {"search_replace": 0.6, "chunk": 0.3, "whole": 0.1},
        description="how often the LLM mutator uses each mode",
    )
    chunk_probability: float = Field(default=0.3, gt=0, le=1)
    repair_tries: int = Field(default=2, ge=0, description="repair attempts per failed child")
    seeds: int = Field(default=3, ge=2, description="S: seeds the seed program is measured on")
    reruns: int = Field(default=1, ge=0, description="best children per generation re-run")
    min_runs: int = Field(default=3, ge=1, description="runs a child needs before it may displace")
    memory: bool = Field(default=True, description="feed lessons back (off = the paper's ablation)")
    seed: int = Field(default=0, ge=0, description="the run's seed: same seed, same run")
    device: Device = Field(default="cpu", description="cpu | cuda")
    seed_program: str | None = Field(default=None, description="path of a program to evolve")
    # A Prefect work pool whose workers train the children (darwin worker --pool NAME on each
    # machine); None: this machine trains them. Where they train changes no score.
    pool: str | None = Field(default=None,
                             description="a work pool whose workers train the children")
    # Set by a continuation (a deployment's "N more generations"): the generations committed
    # then. Review gates answered up to there no longer set the run's length.
    continued_after: int | None = Field(default=None, ge=0,
                                        description="set when a run is continued")

    @field_validator("budget", mode="before")
    @classmethod
    def _budget(cls, value: object) -> object:
        return _one_of(BudgetName, value)

    @field_validator("mutator", mode="before")
    @classmethod
    def _mutator(cls, value: object) -> object:
        return _one_of(MutatorName, value)

    @field_validator("device", mode="before")
    @classmethod
    def _device(cls, value: object) -> object:
        return _one_of(Device, value)

    @field_validator("pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", value):
            raise ValueError(f"{value!r} is not a work pool name; use letters, digits, '-', "
                             "'_' or '.', for example gpu-boxes")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Experiment:
        if self.keep >= self.population and self.population > 1:
            raise ValueError(
                f"keep: {self.keep} must be smaller than population ({self.population}), "
                "or nothing could ever be replaced")
        bad = set(self.mode_mix) - {"search_replace", "chunk", "whole"}
        if bad or not self.mode_mix or any(v < 0 for v in self.mode_mix.values()):
            raise ValueError("mode_mix: weights for search_replace|chunk|whole, not negative")
        return self


def make_experiment(**values) -> Experiment:
    """The experiment, or a UserError naming the flag and the fix (``invalid --keep: …``)."""
    try:
        return Experiment(**values)
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in first["loc"])
        if not field and ": " in message:  # cross-field checks name their field first
            field, message = message.split(": ", 1)
        raise UserError(f"invalid --{(field or 'settings').replace('_', '-')}: {message}") from None


def read_experiment(path: str | Path) -> Experiment:
    """An experiment file: JSON with the `darwin run` settings (budget, generations, population,
    keep, children, mutator, seeds, seed, ...); what is left out takes its default."""
    path = Path(path)
    try:
        values = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"experiment file {path} not found (it is read from the checkout the "
                        "deployment's pull step moved to)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"experiment file {path} is not JSON: {e}") from None
    if not isinstance(values, dict):
        raise UserError(f"experiment file {path}: give a JSON object of settings, "
                        'for example {"budget": "tiny", "generations": 1}')
    for key in values:
        if key not in Experiment.model_fields:  # a typo must not fall back to a default
            raise UserError(f"experiment file {path}: unknown setting {key!r}; "
                            + _nearest(key, list(Experiment.model_fields)))
    try:
        return make_experiment(**values)
    except UserError as e:  # it names the `darwin run` flag; here it is the file's field
        raise UserError(f"experiment file {path}: {str(e).replace('--', '', 1)}") from None


def _nearest(word: str, known: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return (f"did you mean {close[0]!r}?" if close
            else f"the settings are: {', '.join(sorted(known))}")


def continued(experiment: Experiment, head: int | None, reviews: list, more: int,
              run_id: str) -> Experiment:
    """``experiment`` with exactly ``more`` generations after the last committed one (a run
    with nothing committed resumes as planned); earlier gates no longer set its length. A gate
    that stopped the run is a person's word: a schedule does not overrule it. ``reviews`` are
    the run's ReviewRecords."""
    if more < 1:
        raise UserError(f"invalid more_generations: {more}; give 1 or more")
    if head is None:
        return experiment
    answered = [r for r in reviews if r.answer is not None and r.gate and not r.defaults_applied
                and r.generation > (experiment.continued_after or -1)]
    last = max(answered, key=lambda r: r.generation, default=None)
    if last is not None and (last.answer.stop or last.answer.remaining == 0):
        raise UserError(f"run {run_id} was stopped by its review gate after generation "
                        f"{last.generation} ({last.answer.via}): a schedule does not overrule "
                        "it; start a new run from its best instead")
    return experiment.model_copy(update={"generations": head + more, "continued_after": head})
