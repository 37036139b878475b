"""One section of the report per candidate, where a click on a point or a row lands: what it
is and where it came from (parents, children, repair), its change against its parent, the
model's reasoning and requests, each seed's metrics and claims, and why it failed.

Everything a model or a child wrote stays a plain string here; the template escapes it.
"""

from __future__ import annotations

import json
import math

from darwin.engine import SEED_ID
from darwin.reports.data import RunData
from darwin.reports.interactive import anchor, fate_words

MAX_PROGRAMS = 60  # whole programs inlined (the best first); the rest: `darwin show`


def _claims(claims: dict) -> str:
    """The program's claims (untrusted) as one line of text per key."""
    return "\n".join(f"{k}: {json.dumps(v, default=str)[:300]}" for k, v in sorted(claims.items()))


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}"


def candidate_sections(data: RunData, order: list[str], code_of, highlight) -> list[dict]:
    """Sections in ``order`` (the leaderboard's); ``code_of(cid)`` reads a program (or None),
    ``highlight(text, lexer)`` marks code up safely."""
    children: dict[str, list[str]] = {}
    repairs: dict[str, str] = {}
    for c in data.candidates:
        for p in c.parents[:1]:
            children.setdefault(p, []).append(c.id)
        if c.repair_of:
            repairs[c.repair_of] = c.id
    ancestry = set(data.lineage(data.best))
    sections = []
    for n, cid in enumerate(order):
        rec = data.by_id.get(cid)
        if rec is None:
            continue
        runs = data.runs.get(cid, [])
        code = code_of(cid) if n < MAX_PROGRAMS else None
        loss = data.fitness(cid)
        parent = rec.parents[0] if rec.parents else None
        before = data.fitness(parent) if parent else None
        sections.append({
            "id": cid, "anchor": anchor(cid), "generation": rec.generation,
            "fate": fate_words(data, cid), "on_best_path": cid in ancestry, "best": cid == data.best,
            "kind": rec.kind, "mutator": rec.mutator, "mode": rec.mode, "operator": rec.operator,
            "parents": [(p, anchor(p), "target" if i == 0 else "proposer")
                        for i, p in enumerate(rec.parents)],
            "children": [(c, anchor(c)) for c in children.get(cid, [])],
            "repair_of": (rec.repair_of, anchor(rec.repair_of)) if rec.repair_of else None,
            "repaired_by": (repairs[cid], anchor(repairs[cid])) if cid in repairs else None,
            "loss": loss, "runs": len(data.losses(cid)),
            "effect": loss - before if loss is not None and before is not None else None,
            "reasoning": rec.reasoning, "notes": rec.notes,
            "requests": [f"{r.get('kind', '?')}: {r.get('detail', '')}" for r in rec.requests],
            "llm_failure": rec.llm_failure, "llm_detail": rec.llm_detail,
            "diff": highlight(rec.diff, "diff") if rec.diff else None,
            "code": highlight(code, "python") if code else None,
            "code_left_out": n >= MAX_PROGRAMS and cid != SEED_ID,
            "seeds": [{"seed": e.seed, "status": e.status, "val_loss": _num(e.val_loss),
                       "perplexity": _num(e.perplexity, 2),
                       "mfu": f"{100 * e.mfu:.2f} % ({e.mfu_basis})" if e.mfu is not None else "-",
                       "train_s": f"{e.train_wall_s:.1f}", "tokens": e.tokens_served,
                       "flags": ", ".join(e.flags), "cached": e.cached,
                       "claims": _claims(e.claims), "detail": e.detail, "log_tail": e.log_tail}
                      for e in runs],
        })
    return sections
