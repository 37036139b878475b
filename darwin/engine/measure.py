"""Measuring one program outside a run (``darwin baseline`` / ``darwin score``): train and score
it on several seeds in parallel slots, exactly as a child is, and sum the results up."""

from __future__ import annotations

import statistics
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from darwin.engine.slots import run_in_slots, slot_cpus
from darwin.errors import UserError
from darwin.evaluation import Budget, Evaluation, check_device, load_dataset, train_then_score
from darwin.sandbox import Sandbox


def scratch_folder(root: Path, kind: str) -> Path:
    """A fresh folder for one command's work, named so that a person can find it."""
    path = root / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def check_inputs(program: Path, device: str) -> None:
    """Refuse early (before any sandbox starts) what cannot work."""
    check_device(device)
    if not program.is_file():
        raise UserError(f"program not found: {program} (give the path of a training program)")
    load_dataset()  # a missing or altered dataset fails here, before any work


def measure_program(program: Path, budget: Budget, seeds: list[int], device: str, box: Sandbox,
            scratch: Path, *, on_start: Callable[[int], None] = lambda seed: None,
            on_progress: Callable[[int, int, int], None] = lambda seed, done, total: None,
            on_done: Callable[[int, Evaluation], None] = lambda seed, ev: None,
            ) -> list[Evaluation]:
    """Train and score ``program`` once per seed, one slot per core (or several per GPU)."""

    def work(seed: int, cpus):
        on_start(seed)
        ev = train_then_score(program, budget, seed, box, scratch / f"seed-{seed}", device=device,
                              cpus=cpus, on_progress=lambda d, t: on_progress(seed, d, t))
        on_done(seed, ev)
        return ev

    return run_in_slots(seeds, work, slot_cpus(device, budget.threads))


def summarize(rows: list[dict]) -> dict:
    """Mean, spread and range of the val losses of ``Evaluation.to_dict()`` rows."""
    losses = [r["val_loss"] for r in rows if r["val_loss"] is not None]
    walls = [r["train_wall_s"] + (r["eval_wall_s"] or 0) for r in rows]
    s: dict = {"runs": len(rows), "ok": len(losses)}
    if losses:
        s["val_loss_mean"] = statistics.fmean(losses)
        s["val_loss_std"] = statistics.stdev(losses) if len(losses) > 1 else 0.0
        s["val_loss_min"], s["val_loss_max"] = min(losses), max(losses)
        s["perplexity_mean"] = statistics.fmean(r["perplexity"] for r in rows if r["perplexity"])
    s["wall_s_mean"] = statistics.fmean(walls) if walls else None
    return s
