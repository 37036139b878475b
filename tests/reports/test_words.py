"""Small words of the report and the live display: never "generation 3 of 2", no raw JSON or
Python None where a person reads."""

from __future__ import annotations

import time

from rich.console import Console

from darwin.engine import Experiment
from darwin.reports.page import _environment, _granted, _settings
from darwin.reports.progress import Snapshot, render
from tests.reports import synthetic


def _shown(committed: int | None, working: int) -> str:
    exp = Experiment(generations=2)
    s = Snapshot(generation=working, committed=committed, trained=0, failed=0, best_id=None,
                 best_loss=None, seed_loss=None, noise=None, median_train_s=None,
                 trainings_left=0)
    console = Console(width=120, record=True)
    console.print(render(s, exp, time.monotonic()))
    return console.export_text()


def test_the_live_display_never_counts_past_the_plan():
    assert "seed program" in _shown(None, 0)
    assert "generation 2 of 2" in _shown(1, 2)
    after = _shown(2, 3)
    assert "3 of 2" not in after and "all 2 generations committed: finishing" in after


def test_settings_and_grants_read_as_words():
    data = synthetic.run(generations=1)
    data.meta["experiment"].update(generations=None, memory=False, kinds=["a", "b"])
    rows = dict(_settings(data))
    assert rows["generations"] == "-" and rows["memory"] == "no" and rows["kinds"] == "a, b"
    assert "None" not in " ".join(rows.values())
    assert _granted({"dataset": "tinystories", "files": ["a.txt"], "gpu": True}) == \
        "dataset: tinystories, files: a.txt, gpu: yes"
    data.meta["environment"] = {"device": "cpu", "cpus": None, "packages": {"s3fs": None},
                                "llm": {"model": "m", "endpoint": "http://h:1/v1"}}
    env = dict(_environment(data))
    assert env["cpus"] == "-" and env["package s3fs"] == "not installed"
    assert env["LLM set (model at endpoint)"] == "m at http://h:1/v1"
