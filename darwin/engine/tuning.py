"""The state of a tuned hyper-parameter search (``--mutator hpo-tpe|hpo-random``), kept in the
run's store: each trial, written as ``trials/<child>.json`` before the child trains (the params
the sampler asked for, their distributions, and the proposals it rejected as out of bounds), and
its result, the child's first-seed evaluation. Nothing lives in memory: a resumed run, on this
machine or another, replays the same history into a fresh sampler and proposes the same
children."""

from __future__ import annotations

import json
import math

from darwin.memory import RunStore
from darwin.mutation import trial_records


def trial_name(cid: str) -> str:
    return f"trials/{cid}.json"


def put_trial(store: RunStore, cid: str, trial: dict) -> None:
    """Store ``cid``'s trial (again: the same bytes, as a deterministic retry writes them)."""
    store.create_object(trial_name(cid), json.dumps(trial, indent=1, sort_keys=True).encode())


def trial(store: RunStore, cid: str) -> dict | None:
    data = store.read_object(trial_name(cid))
    return json.loads(data) if data is not None else None


def history(store: RunStore, generation: int, first_seed: int) -> list[dict]:
    """Every trial of the generations before ``generation``, with its result (value None: it
    crashed or was out of bounds), in candidate order. Only earlier generations count, so a
    child's proposal does not depend on which sibling was proposed first."""
    entries: list[dict] = []
    for rec in sorted(store.candidates(), key=lambda c: c.id):
        if rec.generation >= generation or (found := trial(store, rec.id)) is None:
            continue
        ev = store.evaluation(rec.id, first_seed)
        value = (ev.val_loss if ev is not None and ev.status == "ok" and ev.val_loss is not None
                 and math.isfinite(ev.val_loss) else None)
        told = trial_records(found, value)
        entries += told if ev is not None else told[:-1]  # never trained: nothing to tell
    return entries
