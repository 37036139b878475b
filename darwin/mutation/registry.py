"""Choosing a mutator by name: ``auto`` takes the LLM when a key is configured, else the offline
catalogue."""

from __future__ import annotations

from darwin.errors import UserError
from darwin.mutation.base import Mutator

MUTATORS = ("auto", "openai", "offline", "random")


def make_mutator(name: str, settings=None, rng=0, ledger=None) -> Mutator:
    """``auto``: the LLM when a key is configured, else the offline catalogue (said plainly)."""
    from darwin.llm.client import LLMClient
    from darwin.mutation.llm_mutator import LLMMutator
    from darwin.mutation.offline import OfflineMutator, RandomMutator
    from darwin.settings import get_settings

    if name not in MUTATORS:
        raise UserError(f"unknown mutator {name!r}: use --mutator " + "|".join(MUTATORS))
    llm_settings = settings or get_settings().llm
    if name == "auto":
        name = "openai" if llm_settings.key() else "offline"
    if name == "openai":
        return LLMMutator(LLMClient(llm_settings, ledger))
    if name == "offline":
        return OfflineMutator(rng)
    return RandomMutator(rng)
