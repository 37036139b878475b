"""Reading runs back: the rows behind `darwin runs`, `darwin leaderboard` and `darwin show`.

Pure functions over the run store (no printing, no Prefect), so the CLI, the Prefect artifacts
and the tests share them.
"""

from __future__ import annotations

import math
import statistics

from darwin.errors import UserError
from darwin.memory import RunStore, StoreError, list_runs, mean_loss


def run_rows(storage_url: str) -> list[dict]:
    from darwin.engine import run_status

    rows = []
    for run_id in list_runs(storage_url):
        store = RunStore(storage_url, run_id)
        meta = store.meta()
        exp = meta.get("experiment", {})
        head = store.head()
        planned = exp.get("generations")
        done = head if head is not None else "-"
        row = {"run_id": run_id, "budget": exp.get("budget"), "mutator": exp.get("mutator"),
               # a continued run (a deployment's "more generations") is past its first plan
               "generations": f"{done} (continued)" if head is not None and planned is not None
               and head > planned else f"{done}/{planned}",
               "seed_val_loss": None, "best": None, "best_val_loss": None, "change_pct": None}
        status = run_status(store)
        row.update(status=status.state, status_line=status.line,
                   answer_command=status.answer_command or None)
        if head is not None:
            seed = store.generation(0).population[0]
            best = store.generation(head).population[0]
            row.update(seed_val_loss=seed.fitness, best=best.candidate_id,
                       best_val_loss=best.fitness,
                       change_pct=100 * (math.exp(min(best.fitness - seed.fitness, 709.0)) - 1))
        rows.append(row)
    return rows


def open_run(storage_url: str, run_id: str | None) -> RunStore:
    runs = list_runs(storage_url)
    if not runs:
        raise UserError(f"no runs in {storage_url} yet: start one with `darwin run`")
    if run_id is None:
        run_id = runs[-1]
    if run_id not in runs:
        raise UserError(f"unknown run {run_id!r}: `darwin runs` lists the runs in {storage_url}")
    return RunStore(storage_url, run_id)


def leaderboard_rows(store: RunStore) -> list[dict]:
    evals: dict[str, list] = {}
    for e in store.evaluations():
        evals.setdefault(e.candidate_id, []).append(e)
    head = store.head()
    members = {m.candidate_id for m in store.generation(head).population} if head is not None else set()
    seed_loss = store.generation(0).population[0].fitness if head is not None else None
    min_runs = int(store.meta().get("experiment", {}).get("min_runs", 1))
    rows = []
    for rec in store.candidates():
        mine = sorted(evals.get(rec.id, []), key=lambda e: e.seed)
        losses = [e.val_loss for e in mine if e.val_loss is not None]
        failed = [e for e in mine if e.val_loss is None]
        mean = mean_loss(losses) if losses else None
        rows.append({
            "candidate": rec.id, "generation": rec.generation,
            "parent": rec.parents[0] if rec.parents else None,
            "kind": rec.kind, "operator": rec.operator or rec.mode, "mutator": rec.mutator,
            "val_loss": mean, "runs": len(losses),
            # A mean over fewer than min_runs seeds is no claim: shown as such, ranked after.
            "measured": len(losses) >= min_runs,
            "delta_vs_seed": (mean - seed_loss) if mean is not None and seed_loss is not None else None,
            "status": "ok" if losses else (failed[0].status if failed else
                                           (rec.llm_failure or "not trained")),
            "in_population": rec.id in members,
            "mfu": statistics.fmean([e.mfu for e in mine if e.mfu is not None])
            if any(e.mfu is not None for e in mine) else None,
        })
    rows.sort(key=lambda r: (r["val_loss"] is None, not r["measured"], r["val_loss"] or 0.0,
                             r["candidate"]))
    return rows


LEADERBOARD_NOTE = ("★ = in the current population; Δ seed = mean val loss minus the seed's; "
                    "* = fewer runs than a claim needs (min_runs), ranked after the measured")


def leaderboard_table(rows: list[dict]) -> list[dict[str, str]]:
    """The leaderboard as people read it (`darwin leaderboard`, the Prefect table): labelled
    columns, losses to 4 decimals, ★ for the population, * for an unmeasured mean."""
    return [{"★": "★" if r["in_population"] else "", "candidate": r["candidate"],
             "gen": str(r["generation"]), "parent": r["parent"] or "-", "kind": r["kind"] or "-",
             "operator": r["operator"] or "-",
             "val loss": f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-",
             "runs": str(r["runs"]) + ("" if r["measured"] or not r["runs"] else "*"),
             "Δ seed": f"{r['delta_vs_seed']:+.4f}" if r["delta_vs_seed"] is not None else "-",
             "status": r["status"]} for r in rows]


def stored_code(store: RunStore, cid: str | None) -> str | None:
    """Candidate ``cid``'s program (None: no such candidate, no program, or lost from the
    store)."""
    return record_code(store, store.candidate(cid) if cid else None)


def record_code(store: RunStore, rec) -> str | None:
    """The program of candidate record ``rec`` (None: no record, no program, or lost)."""
    if rec is None or not rec.code_sha:
        return None
    try:
        return store.code(rec.code_sha)
    except StoreError:
        return None


def candidate_detail(store: RunStore, cid: str) -> dict:
    rec = store.candidate(cid)
    if rec is None:
        known = ", ".join(r.id for r in store.candidates()[:8])
        raise UserError(f"no candidate {cid!r} in run {store.run_id} (some: {known})")
    code = stored_code(store, cid) or ""
    evals = [e for e in store.evaluations() if e.candidate_id == cid]
    return {
        "run_id": store.run_id, "candidate": rec.model_dump(mode="json"), "code": code,
        "evaluations": [e.model_dump(mode="json") for e in sorted(evals, key=lambda e: e.seed)],
        "request_answers": request_answers(store, rec.requests),
    }


def request_answers(store: RunStore, requests: list[dict]) -> list[dict | None]:
    """What the humans answered to each of these requests (None: not asked yet)."""
    from darwin.engine import request_key

    answers: dict[str, dict] = {}
    for review in store.reviews():
        verdicts = {d.request: d for d in (review.answer.decisions if review.answer else [])}
        for asked in review.requests:
            d = verdicts.get(asked.id)
            if d is not None and review.answer is not None:
                answers[asked.key] = {"after_generation": review.generation, "id": asked.id,
                                      "verdict": d.verdict, "comment": d.comment,
                                      "via": review.answer.via,
                                      "defaults_applied": review.defaults_applied}
    return [answers.get(request_key(str(r.get("kind")), str(r.get("detail", ""))))
            for r in requests]


def artifact_key(run_id: str, what: str) -> str:
    """Prefect artifact keys: lowercase letters, digits and dashes only."""
    import re

    return re.sub(r"[^a-z0-9-]+", "-", f"{run_id}-{what}".lower()).strip("-")


def generation_markdown(store: RunStore, gen: int) -> str:
    record = store.generation(gen)
    g0 = store.generation(0)
    seed = g0.population[0].fitness
    rows = {r["candidate"]: r for r in leaderboard_rows(store)}
    lines = [f"# {store.run_id}: generation {gen}", "",
             f"Seed val loss {seed:.4f}, noise band ± {g0.noise:.4f} (2σ over "
             f"{len(g0.population[0].losses)} seeds). Wall time {record.wall_s:.0f} s.", "",
             "## Population", "", "| member | val loss | runs | vs seed |", "|---|---|---|---|"]
    for m in record.population:
        lines.append(f"| {m.candidate_id} | {m.fitness:.4f} | {len(m.losses)} | "
                     f"{100 * (math.exp(min(m.fitness - seed, 709.0)) - 1):+.2f}% ppl |")
    if record.children:
        lines += ["", "## Children", "", "| child | kind | operator | val loss | status |",
                  "|---|---|---|---|---|"]
        for cid in record.children:
            r = rows.get(cid, {})
            loss = f"{r['val_loss']:.4f}" if r.get("val_loss") is not None else "-"
            lines.append(f"| {cid} | {r.get('kind') or '-'} | {r.get('operator') or '-'} | "
                         f"{loss} | {r.get('status', '-')} |")
    lines += ["", f"Promoted (displaced a member): {', '.join(record.promoted) or 'none'}. "
              f"Filled an empty slot: {', '.join(record.filled) or 'none'}. "
              f"Pareto set (val loss, MFU): {', '.join(record.pareto) or '-'}."]
    return "\n".join(lines)
