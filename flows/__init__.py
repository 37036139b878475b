"""Prefect flows: the evolution run and one generation (thin; logic lives in darwin).
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "ensure_work_pool": "child",
    "hide_reported_errors": "admin",
    "mark_stale_runs_crashed": "admin",
    "notify_on_reviews": "admin",
    "quiet_prefect": "admin",
    "darwin_run": "deployed",
    "Start": "launch",
    "launch_run": "launch",
    "form_input": "review",
    "set_local_reviewer": "review",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
