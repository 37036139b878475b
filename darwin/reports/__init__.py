"""What a person reads: the leaderboard's views, the report page and its figures, live progress
and review pages.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "build_comparison": "page",
    "build_index": "index",
    "build_report": "page",
    "report_dir": "page",
    "write_run_report": "page",
    "LiveProgress": "progress",
    "answer_line": "review",
    "asked": "review",
    "cell": "review",
    "form_page": "review",
    "review_markdown": "review",
    "artifact_key": "views",
    "candidate_detail": "views",
    "generation_markdown": "views",
    "LEADERBOARD_NOTE": "views",
    "leaderboard_rows": "views",
    "leaderboard_table": "views",
    "open_run": "views",
    "run_rows": "views",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
