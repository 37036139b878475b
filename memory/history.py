"""Reading a run's past: its history (every commit, and HEAD's versions on a versioned bucket),
the run as it stood after generation N, and copying a run between stores.

A run's records are immutable and stamped (a candidate's generation, an evaluation's
``scored_at``, a generation's ``committed_at``), so "the run after generation N" is a view that
hides what came later; on a versioned bucket, a HEAD version id names the generation it pointed
at.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from darwin.errors import UserError
from darwin.memory.records import CandidateRecord, EvaluationRecord, GenerationRecord, ReviewRecord
from darwin.memory.store import RunStore, StoreError


class RunAsOf(RunStore):
    """``store``'s run as it was right after generation ``generation`` was committed (what
    `darwin leaderboard` printed then): later candidates, evaluations scored after the commit,
    later reviews and generations are not there."""

    def __init__(self, store: RunStore, generation: int):
        self.__dict__.update(store.__dict__)
        self.at = generation
        self._committed_at = RunStore.generation(store, generation).committed_at

    def head(self) -> int | None:
        return self.at

    def generation(self, n: int) -> GenerationRecord:
        if n > self.at:
            raise StoreError(f"generation {n} of run {self.run_id} came after generation {self.at}")
        return super().generation(n)

    def candidates(self) -> list[CandidateRecord]:
        return [c for c in super().candidates() if c.generation <= self.at]

    def candidate(self, cid: str) -> CandidateRecord | None:
        found = super().candidate(cid)
        return found if found is not None and found.generation <= self.at else None

    def _then(self, e: EvaluationRecord) -> bool:
        # Older records have no scored_at (0): their candidate's generation decides alone.
        return not e.scored_at or e.scored_at <= self._committed_at

    def evaluations(self) -> list[EvaluationRecord]:
        known = {c.id for c in self.candidates()}
        return [e for e in super().evaluations() if e.candidate_id in known and self._then(e)]

    def evaluation(self, cid: str, seed: int) -> EvaluationRecord | None:
        found = super().evaluation(cid, seed)
        return found if found is not None and self.candidate(cid) and self._then(found) else None

    def reviews(self) -> list[ReviewRecord]:
        return [r for r in super().reviews() if r.generation < self.at]  # asked after a commit

    def review(self, generation: int) -> ReviewRecord | None:
        return super().review(generation) if generation < self.at else None

    def final(self, cid: str) -> dict | None:
        return None  # the test split is scored when a run ends


def resolve_at(store: RunStore, at: str | None, at_generation: int | None) -> RunStore:
    """``store``, or its run as of a HEAD version (``--at``) or a generation (``--at-generation``);
    a one-line UserError for what does not exist."""
    if at is not None and at_generation is not None:
        raise UserError("give --at VERSION or --at-generation N, not both")
    head = store.head()
    if at is not None:
        versions = store.head_versions()
        if versions is None:
            raise UserError(f"--at {at}: this store keeps no versions (a local folder or an "
                            "unversioned bucket); use --at-generation N")
        match = [v for v in versions if v["version"] == at]
        if not match:
            raise UserError(f"--at {at}: no such version of run {store.run_id}'s HEAD "
                            f"(`darwin history {store.run_id}` lists them)")
        at_generation = match[0]["generation"]
    if at_generation is None:
        return store
    if head is None or not 0 <= at_generation <= head:
        raise UserError(f"--at-generation {at_generation}: run {store.run_id} has generations "
                        + (f"0 to {head}" if head is not None else "none committed yet"))
    return RunAsOf(store, at_generation)


def run_history(store: RunStore) -> dict:
    """Every commit (from the generation records: always there) and HEAD's versions (a
    versioned bucket only; None otherwise)."""
    head = store.head()
    commits = []
    previous: set[str] = set()
    for n in range(head + 1 if head is not None else 0):
        try:
            g = store.generation(n)
        except StoreError:
            continue
        members = [m.candidate_id for m in g.population]
        commits.append({
            "generation": n, "committed_at": g.committed_at, "wall_s": g.wall_s,
            "host": g.writer.get("host"), "pid": g.writer.get("pid"),
            "children": g.children, "promoted": g.promoted, "filled": g.filled,
            "joined": [c for c in members if c not in previous and n > 0],
            "left": sorted(previous - set(members)),
            "best": members[0] if members else None,
            "best_val_loss": g.population[0].fitness if g.population else None})
        previous = set(members)
    return {"run_id": store.run_id, "commits": commits, "reviews": _reviews(store),
            "head_versions": store.head_versions()}


def _reviews(store: RunStore) -> list[dict]:
    """Every answered review: after which generation, when, who, and what it decided."""
    out = []
    for r in store.reviews():
        a = r.answer
        if a is None:
            continue
        out.append({
            "generation": r.generation, "answered_at": r.answered_at, "via": a.via,
            "reviewer": a.reviewer, "defaults_applied": r.defaults_applied, "gate": r.gate,
            "approved": [d.request for d in a.decisions if d.verdict == "approve"],
            "refused": [d.request for d in a.decisions if d.verdict == "refuse"],
            "veto": a.veto, "pin": a.pin, "stop": a.stop, "remaining": a.remaining,
            "note": a.note, "rejected": len(r.rejected)})
    return out


# -- moving runs between stores ----------------------------------------------------------------
SKIP = ("LEASE", "run.lock")  # who works on the run here: meaningless in another store
LAST = ("HEAD", "REVIEW")  # pointers go last: a copy cut short never claims what it lacks


def export_run(source: RunStore, dest: RunStore, progress: Callable[[int, int], None] | None = None
               ) -> dict:
    """Copy ``source``'s run into ``dest`` byte for byte; objects already there with the same
    bytes are skipped (an interrupted export resumes), a destination holding another run with
    this id is refused, and every object is read back and compared. Returns counts."""
    if not source.exists():
        raise UserError(f"run {source.run_id} is not in the source store")
    names = [n for n in source.files() if n.split("/")[-1] not in SKIP
             and not n.split("/")[-1].startswith(".")]
    meta = source.read_object("run.json")
    there = dest.read_object("run.json")
    if there is not None and there != meta:
        raise UserError(f"the destination already holds another run named {source.run_id}; "
                        "nothing was copied")
    ordered = [n for n in names if n not in LAST] + [n for n in names if n in LAST]
    copied = skipped = 0
    sent: dict[str, str] = {}  # what was copied, by its digest: the copy is checked against it
    for i, name in enumerate(ordered):
        data = source.read_object(name)
        if data is None:
            continue
        sent[name] = hashlib.sha256(data).hexdigest()
        if name in LAST:
            if dest.read_object(name) == data:
                skipped += 1
            else:
                dest.update_pointer(name, lambda _old, data=data: data)
                copied += 1
        elif dest.create_object(name, data):
            copied += 1
        else:
            skipped += 1  # already there, same bytes (create_object refuses other bytes)
        if progress is not None:
            progress(i + 1, len(ordered))
    mismatched = [n for n, digest in sent.items() if _digest(dest, n) != digest]
    if mismatched:
        raise StoreError(f"the copy differs from the source in {len(mismatched)} object(s), "
                         f"first {mismatched[0]}; run the export again")
    return {"run_id": source.run_id, "objects": len(ordered), "copied": copied,
            "skipped": skipped, "verified": len(sent)}


def _digest(store: RunStore, name: str) -> str | None:
    data = store.read_object(name)
    return hashlib.sha256(data).hexdigest() if data is not None else None
