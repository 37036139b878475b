"""The mutating LLM: an OpenAI-compatible client with a spending ledger, and a scripted local
server for trying DARWIN without a key.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "LLMClient": "client",
    "LLMFailure": "client",
    "Usage": "client",
    "ScriptedLLMServer": "devserver",
    "StoredLedger": "ledger",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
