"""The run memory: schema-versioned records in versioned blob storage over fsspec.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "IOStats": "blobs",
    "ImmutableConflict": "blobs",
    "io_stats": "blobs",
    "export_run": "history",
    "resolve_at": "history",
    "run_history": "history",
    "AskedRequest": "records",
    "CandidateRecord": "records",
    "EvaluationRecord": "records",
    "GenerationRecord": "records",
    "Member": "records",
    "RequestDecision": "records",
    "ReviewAnswer": "records",
    "ReviewRecord": "records",
    "code_hash": "records",
    "mean_loss": "records",
    "rank_key": "records",
    "LeaseHeld": "store",
    "RunStore": "store",
    "StoreError": "store",
    "list_runs": "store",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
