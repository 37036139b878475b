"""Prefect tasks: one side effect each (llm, sandbox, score, store, publish).
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "pool": None,
    "publish": None,
    "steps": None,
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
