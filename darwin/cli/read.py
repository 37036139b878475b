"""`darwin runs`, `darwin leaderboard` and `darwin show`: read runs back from the store."""

from __future__ import annotations

import json
from typing import Annotated

from cyclopts import Parameter
from rich.markup import escape
from rich.table import Table

from darwin.cli.app import JsonFlag, app, out


@app.command
def runs(*, json_: JsonFlag = False) -> None:
    """List the runs in the store ($DARWIN_STORAGE_URL, default $DARWIN_HOME/runs)."""
    from darwin.reports.views import run_rows
    from darwin.settings import get_settings

    rows = run_rows(get_settings().store_url)
    if json_:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no runs yet: start one with `darwin run`")
        return
    table = Table(title="runs")
    for col in ("run", "budget", "mutator", "gens", "seed loss", "best", "best loss", "ppl change"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run_id"], r["budget"], r["mutator"], r["generations"],
                      f"{r['seed_val_loss']:.4f}" if r["seed_val_loss"] else "-", r["best"] or "-",
                      f"{r['best_val_loss']:.4f}" if r["best_val_loss"] else "-",
                      f"{r['change_pct']:+.2f}%" if r["change_pct"] is not None else "-")
    out.print(table)


@app.command
def leaderboard(run_id: str | None = None, *, json_: JsonFlag = False) -> None:
    """Every candidate of RUN (default: the latest), best first.

    Parameters
    ----------
    run_id
        The run (see `darwin runs`).
    """
    from darwin.reports.views import leaderboard_rows, open_run
    from darwin.settings import get_settings

    store = open_run(get_settings().store_url, run_id)
    rows = leaderboard_rows(store)
    if json_:
        print(json.dumps({"run_id": store.run_id, "candidates": rows}, indent=2))
        return
    table = Table(title=f"leaderboard {store.run_id}")
    for col in ("", "candidate", "gen", "parent", "kind", "operator", "val loss", "runs",
                "Δ seed", "status"):
        table.add_column(col)
    for r in rows:
        table.add_row("★" if r["in_population"] else "", r["candidate"], str(r["generation"]),
                      r["parent"] or "-", r["kind"] or "-", r["operator"] or "-",
                      f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-", str(r["runs"]),
                      f"{r['delta_vs_seed']:+.4f}" if r["delta_vs_seed"] is not None else "-",
                      r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]")
    out.print(table)
    out.print("[dim]★ = in the current population; Δ seed = mean val loss minus the seed's[/]")


@app.command
def show(candidate: str, *, run_id: Annotated[str | None, Parameter(name="--run")] = None,
         code: bool = False, json_: JsonFlag = False) -> None:
    """One candidate: its reasoning, kind of change, diff against its parent, metrics, claims
    and failure. CANDIDATE is an id like g002-c01 (in --run, default the latest run) or RUN/ID.

    Parameters
    ----------
    candidate
        g002-c01, or RUN/g002-c01.
    run_id
        The run (default: the latest).
    code
        Also print the whole program.
    """
    from darwin.mutation.untrusted import quote_untrusted
    from darwin.reports.views import candidate_detail, open_run
    from darwin.settings import get_settings

    if "/" in candidate:
        run_id, candidate = candidate.rsplit("/", 1)
    store = open_run(get_settings().store_url, run_id)
    d = candidate_detail(store, candidate)
    if json_:
        print(json.dumps(d, indent=2))
        return
    c = d["candidate"]
    out.print(f"[bold]{c['id']}[/] (run {d['run_id']}, generation {c['generation']}, "
              f"parents {', '.join(c['parents']) or '-'}"
              + (f", repairs {c['repair_of']}" if c["repair_of"] else "") + ")")
    out.print(f"mutator {c['mutator']} / {c['mode'] or '-'}"
              + (f" / {c['operator']}" if c["operator"] else "")
              + f"; kind of change: [bold]{c['kind'] or '-'}[/]")
    if c["reasoning"]:
        out.print(f"reasoning: {c['reasoning']}", markup=False)
    for note in c.get("notes") or []:
        out.print(f"note: {note}", markup=False)
    for r, a in zip(c["requests"], d["request_answers"]):
        fate = "not asked yet" if a is None else (
            f"{a['verdict']}d after generation {a['after_generation']}"
            + (" (nobody answered: defaults)" if a["defaults_applied"] else f" (via {a['via']})")
            + (f": {a['comment']}" if a["comment"] else ""))
        out.print(f"[yellow]request to humans ({r['kind']}):[/] {escape(r['detail'])} "
                  f"[dim]- {escape(fate)}[/]")
    if c["input_tokens"] or c["cost_usd"]:
        out.print(f"LLM: {c['input_tokens']}+{c['output_tokens']} tokens, ${c['cost_usd']:.4f}")
    if c["llm_failure"]:
        out.print(f"[red]mutation failed ({c['llm_failure']}):[/] {c['llm_detail']}")
    for e in d["evaluations"]:
        if e["val_loss"] is not None:
            out.print(f"seed {e['seed']}: val loss {e['val_loss']:.4f}, perplexity "
                      f"{e['perplexity']:.2f}, MFU {100 * (e['mfu'] or 0):.2f}%, "
                      f"train {e['train_wall_s']:.1f}s" + (" (cached)" if e["cached"] else ""))
        else:
            out.print(f"[red]seed {e['seed']}: {e['status']}[/] {e['detail']}", markup=True)
            if e["log_tail"]:
                out.print(quote_untrusted(e["log_tail"], "log", 1500), markup=False)
        if e["claims"]:
            out.print(f"  claims (untrusted): {json.dumps(e['claims'])}", markup=False)
        for flag in e["flags"]:
            out.print(f"  [yellow]{flag}[/]")
    if c["diff"]:
        out.print("[dim]--- diff against its parent ---[/]")
        out.print(c["diff"], markup=False, highlight=False, soft_wrap=True)
    if code and d["code"]:
        out.print("[dim]--- program ---[/]")
        out.print(d["code"], markup=False, highlight=False, soft_wrap=True)


