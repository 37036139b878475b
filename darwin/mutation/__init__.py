"""Mutations: the LLM and offline mutators, edits and their strict application, repairs, and
the lessons fed back into prompts.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "ChangeKind": "answers",
    "FailureNote": "base",
    "MODES": "base",
    "MutationContext": "base",
    "MutationResult": "base",
    "aggregate": "lessons",
    "first_run_outcomes": "lessons",
    "lesson_lines": "lessons",
    "make_mutator": "registry",
    "mutator_modes": "registry",
    "tunes_seed": "registry",
    "trial_records": "hpo",
    "tunable": "hpo",
    "repair_case": "repair",
    "quote_untrusted": "untrusted",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
