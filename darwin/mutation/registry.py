"""Choosing a mutator by name: ``auto`` takes the LLM when a key is configured, else the offline
catalogue; ``hpo-tpe`` and ``hpo-random`` are the tuned hyper-parameter baselines (hpo.py)."""

from __future__ import annotations

from darwin.errors import UserError
from darwin.mutation.base import Mutator

MUTATORS = ("auto", "openai", "offline", "random", "hpo-tpe", "hpo-random")


def resolve(name: str, llm_settings) -> str:
    """The mutator ``name`` stands for: ``auto`` is the LLM when a key is configured."""
    if name not in MUTATORS:
        raise UserError(f"unknown mutator {name!r}: use --mutator " + "|".join(MUTATORS))
    if name == "auto":
        return "openai" if llm_settings.key() else "offline"
    return name


def mutator_modes(name: str, settings=None) -> tuple[str, ...]:
    """The modes the mutator ``name`` works in, without building it (no client, no call)."""
    from darwin.mutation.base import MODES
    from darwin.settings import get_settings

    return MODES if resolve(name, settings or get_settings().llm) == "openai" else (
        "search_replace",)


def tunes_seed(name: str) -> bool:
    """Whether the mutator ``name`` is a tuned search: each child edits the seed program, and
    the engine hands it every earlier trial from the run's store."""
    return name.startswith("hpo-")


def make_mutator(name: str, settings=None, rng=0, ledger=None) -> Mutator:
    """``auto``: the LLM when a key is configured, else the offline catalogue (said plainly)."""
    from darwin.llm import LLMClient
    from darwin.mutation.llm_mutator import LLMMutator
    from darwin.mutation.offline import OfflineMutator, RandomMutator
    from darwin.settings import get_settings

    llm_settings = settings or get_settings().llm
    name = resolve(name, llm_settings)
    if name == "openai":
        return LLMMutator(LLMClient(llm_settings, ledger))
    if name == "offline":
        return OfflineMutator(rng)
    if tunes_seed(name):
        from darwin.mutation.hpo import HPOMutator

        return HPOMutator(name.removeprefix("hpo-"), rng)
    return RandomMutator(rng)
