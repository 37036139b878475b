"""The runs index: one page (index.html beside the reports) listing every run of a store with
its status, best, change in perplexity against the seed with the seed's noise, what mutated it
(the model and endpoint, never the key), its date, and a link to its report.

A run that cannot be read shows as a row saying so: one broken run never hides the others.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from urllib.parse import quote

from darwin.memory import RunStore, StoreError, list_runs

INDEX = "index.html"


def mutators_ran(candidates) -> str:
    """What made the children, counted ("openai 12, offline 3"): `auto` resolved."""
    made = Counter(c.mutator or "?" for c in candidates if c.generation > 0)
    return ", ".join(f"{m} {n}" for m, n in made.most_common()) or "-"


def llm_line(meta: dict) -> str | None:
    """The model and the endpoint a run's LLM mutator used (as recorded; never a key)."""
    llm = (meta.get("environment") or {}).get("llm") or {}
    if not llm.get("model"):
        return None
    return f"{llm['model']} at {llm.get('endpoint') or 'the OpenAI API (default endpoint)'}"


def index_row(store: RunStore, reports: Path) -> dict:
    from darwin.engine import run_status

    row = {"run": store.run_id, "state": "unreadable", "status": "", "best": None,
           "best_loss": None, "change_pct": None, "noise_pct": None, "mutator": "-",
           "model": None, "date": "-", "generations": "-", "report": None, "beyond": False}
    try:
        meta = store.meta()
        exp = meta.get("experiment", {})
        status = run_status(store)
        row.update(state=status.state, status=status.line)
        created = meta.get("created_at")
        if created:
            row["date"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(created))
        mutator = exp.get("mutator") or "-"
        if mutator == "auto":
            mutator = f"auto: {mutators_ran(store.candidates())}"
        # the model only where an LLM made children (an offline run names none)
        llm = llm_line(meta) if "openai" in mutator else None
        row.update(mutator=mutator, model=llm, budget=exp.get("budget"))
        head = store.head()
        if head is not None:
            g0, last = store.generation(0), store.generation(head)
            seed, best = g0.population[0], last.population[0]
            row.update(
                generations=f"{head} of {exp.get('generations', '?')}", best=best.candidate_id,
                best_loss=best.fitness,
                change_pct=100 * (math.exp(min(best.fitness - seed.fitness, 709.0)) - 1),
                # the seed's noise band (2σ of its loss) as a change in perplexity
                noise_pct=100 * (math.exp(g0.noise) - 1),
                beyond=seed.fitness - best.fitness > g0.noise)
    except (StoreError, OSError, ValueError) as e:  # bad JSON, a record that does not validate
        row["status"] = f"cannot be read: {type(e).__name__}: {str(e)[:160]}"
    page = reports / store.run_id / "report.html"
    if page.is_file():
        row["report"] = f"./{quote(store.run_id)}/report.html"  # relative: never a scheme
    return row


def build_index(storage_url: str, reports: Path) -> Path:
    """Write ``reports``/index.html for every run in ``storage_url``, newest first."""
    from darwin.reports.jinja import templates

    reports = Path(reports)
    reports.mkdir(parents=True, exist_ok=True)
    rows = [index_row(RunStore(storage_url, r), reports) for r in reversed(list_runs(storage_url))]
    html = templates().get_template("index.html.j2").render(
        title="DARWIN runs", storage=str(storage_url), rows=rows,
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        running=any(r["state"] == "running" for r in rows))
    path = reports / INDEX
    tmp = path.with_suffix(".tmp")
    tmp.write_text(html)
    tmp.replace(path)
    return path
