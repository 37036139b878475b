"""`darwin runs`, `leaderboard`, `show`, `history` and `export`: read runs back from the store,
as they are or as they were (--at VERSION, --at-generation N), from this store or another
(--storage-url URL), and copy them between stores."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter
from rich.markup import escape
from rich.table import Table

from darwin.cli.app import JsonFlag, app, err, out
from darwin.errors import UserError

# --storage is the flag's older, shorter name.
StorageFlag = Annotated[str | None, Parameter(
    name=["--storage-url", "--storage"],
    help="read this store (a folder or s3://bucket/prefix) instead of $DARWIN_STORAGE_URL")]
AtFlag = Annotated[str | None, Parameter(
    name="--at", help="the run as it was at this version of its HEAD (`darwin history` lists "
                      "them; a versioned bucket)")]
AtGenerationFlag = Annotated[int | None, Parameter(
    name="--at-generation", help="the run as it was right after generation N was committed")]


def chosen_storage_url(given: str | None) -> str:
    """--storage-url, else $DARWIN_STORAGE_URL (default $DARWIN_HOME/runs). A folder named on
    the command line must exist (a typo is not an empty store); the default one may not yet."""
    from darwin.settings import get_settings

    if given and not _folder(given).is_dir() and _local(given):
        raise UserError(f"--storage-url {given}: no such folder; give the folder that holds the "
                        "runs (DARWIN_STORAGE_URL's, default $DARWIN_HOME/runs) or "
                        "s3://bucket/prefix")
    return given or get_settings().storage_url


def _local(url: str) -> bool:
    return "://" not in url or url.startswith("file://")


def _folder(url: str) -> Path:
    return Path(url.removeprefix("file://")).expanduser()


def open_as_of(run_id: str | None, storage_url: str | None, at: str | None = None,
               at_generation: int | None = None):
    """The run (default: the latest) from ``storage_url``, as of ``at`` / ``at_generation``."""
    from darwin.memory import resolve_at
    from darwin.reports import open_run

    return resolve_at(open_run(chosen_storage_url(storage_url), run_id), at, at_generation)


@app.command
def runs(*, storage_url: StorageFlag = None, json_: JsonFlag = False) -> None:
    """List the runs in the store ($DARWIN_STORAGE_URL, default $DARWIN_HOME/runs)."""
    from darwin.reports import run_rows

    rows = run_rows(chosen_storage_url(storage_url))
    if json_:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        out.print("no runs yet: start one with `darwin run`")
        return
    table = Table(title="runs")
    for col in ("run", "budget", "mutator", "gens", "seed loss", "best", "best loss", "ppl change",
                "status"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["run_id"], r["budget"], r["mutator"], r["generations"],
                      f"{r['seed_val_loss']:.4f}" if r["seed_val_loss"] else "-", r["best"] or "-",
                      f"{r['best_val_loss']:.4f}" if r["best_val_loss"] else "-",
                      f"{r['change_pct']:+.2f}%" if r["change_pct"] is not None else "-",
                      escape(r["status_line"]))
    out.print(table)
    for r in rows:  # who waits for a person, said where the eye lands last
        if r["status"] == "paused":
            out.print(f"[yellow]{r['run_id']} waits for a review:[/] {r['answer_command']}")


@app.command
def leaderboard(run_id: str | None = None, *, at: AtFlag = None,
                at_generation: AtGenerationFlag = None, storage_url: StorageFlag = None,
                json_: JsonFlag = False) -> None:
    """Every candidate of RUN (default: the latest), best first.

    Parameters
    ----------
    run_id
        The run (see `darwin runs`).
    """
    from darwin.reports import LEADERBOARD_NOTE, leaderboard_rows, leaderboard_table

    store = open_as_of(run_id, storage_url, at, at_generation)
    rows = leaderboard_rows(store)
    if json_:
        print(json.dumps({"run_id": store.run_id, "head": store.head(), "candidates": rows},
                         indent=2))
        return
    table = Table(title=f"leaderboard {store.run_id}" + (
        f" as of generation {store.head()}" if getattr(store, "at", None) is not None else ""))
    shown = leaderboard_table(rows)  # the same table the Prefect UI shows
    for col in (shown[0] if shown else ("★", "candidate")):
        table.add_column("" if col == "★" else col)
    for r in shown:
        table.add_row(*(f"[red]{escape(v)}[/]" if k == "status" and v != "ok" else escape(v)
                        for k, v in r.items()))
    out.print(table)
    out.print(f"[dim]{LEADERBOARD_NOTE}[/]")


@app.command
def show(candidate: str, *, run_id: Annotated[str | None, Parameter(name="--run")] = None,
         code: bool = False, at: AtFlag = None, at_generation: AtGenerationFlag = None,
         storage_url: StorageFlag = None, json_: JsonFlag = False) -> None:
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
    from darwin.mutation import quote_untrusted
    from darwin.reports import candidate_detail

    if "/" in candidate:
        run_id, candidate = candidate.rsplit("/", 1)
    store = open_as_of(run_id, storage_url, at, at_generation)
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
        out.print(f"[red]mutation failed ({escape(c['llm_failure'])}):[/] "
                  f"{escape(c['llm_detail'])}")
    for e in d["evaluations"]:
        if e["val_loss"] is not None:
            out.print(f"seed {e['seed']}: val loss {e['val_loss']:.4f}, perplexity "
                      f"{e['perplexity']:.2f}, MFU {100 * (e['mfu'] or 0):.2f}%, "
                      f"train {e['train_wall_s']:.1f}s" + (" (cached)" if e["cached"] else ""))
        else:
            # Details and flags can carry the candidate's words (tensor names): never markup.
            out.print(f"[red]seed {e['seed']}: {escape(e['status'])}[/] {escape(e['detail'])}")
            if e["log_tail"]:
                out.print(quote_untrusted(e["log_tail"], "log", 1500), markup=False)
        if e["claims"]:
            out.print(f"  claims (untrusted): {json.dumps(e['claims'])}", markup=False)
        for flag in e["flags"]:
            out.print(f"  [yellow]{escape(flag)}[/]")
    if c["diff"]:
        out.print("[dim]--- diff against its parent ---[/]")
        out.print(c["diff"], markup=False, highlight=False, soft_wrap=True)
    if code and d["code"]:
        out.print("[dim]--- program ---[/]")
        out.print(d["code"], markup=False, highlight=False, soft_wrap=True)




@app.command
def history(run_id: str | None = None, *, storage_url: StorageFlag = None,
            json_: JsonFlag = False) -> None:
    """RUN's past: every committed generation (when, by which host and process, its children,
    promotions, who joined and left the population) and, on a versioned bucket, every version
    of its HEAD (give one to --at of leaderboard, show and report).

    Parameters
    ----------
    run_id
        The run (default: the latest).
    """
    from darwin.memory import run_history
    from darwin.reports import open_run

    store = open_run(chosen_storage_url(storage_url), run_id)
    found = run_history(store)
    if json_:
        print(json.dumps(found, indent=2))
        return
    table = Table(title=f"history {store.run_id}")
    for col in ("gen", "committed (UTC)", "by", "wall", "children", "promoted", "filled",
                "left", "best", "review after it"):
        table.add_column(col)
    reviews = {r["generation"]: r for r in found["reviews"]}
    for c in found["commits"]:
        table.add_row(str(c["generation"]), _when(c["committed_at"]),
                      f"{c['host'] or '?'}:{c['pid'] or '?'}", f"{c['wall_s']:.0f} s",
                      str(len(c["children"])), ", ".join(c["promoted"]) or "-",
                      ", ".join(c.get("filled", [])) or "-",
                      ", ".join(c["left"]) or "-",
                      f"{c['best']} {c['best_val_loss']:.4f}" if c["best"] else "-",
                      escape(_review_cell(reviews[c["generation"]]))
                      if c["generation"] in reviews else "-")
    out.print(table)
    versions = found["head_versions"]
    if versions is None:
        err.print("[dim]this store keeps no versions of HEAD (a local folder or a bucket "
                  "without versioning): read the past with --at-generation N[/]")
        return
    table = Table(title="versions of HEAD")
    for col in ("version", "written (UTC)", "generation", "by"):
        table.add_column(col)
    for v in versions:
        table.add_row(v["version"], _when(v["at"]), str(v["generation"]),
                      f"{v['host'] or '?'}:{v['pid'] or '?'}")
    out.print(table)
    out.print("[dim]read the run as it was: darwin leaderboard RUN --at VERSION[/]")


def _review_cell(review: dict) -> str:
    return f"{_who(review)}, {_when(review['answered_at'])}: {_decided(review)}"


def _who(review: dict) -> str:
    if review["defaults_applied"]:
        return "nobody (defaults)" if review["via"] != "no-review" else "--no-review"
    return f"{review['reviewer']} via {review['via']}" if review["reviewer"] else review["via"]


def _decided(review: dict) -> str:
    """What a review decided, in a few words."""
    parts = [f"approved {', '.join(review['approved'])}" if review["approved"] else "",
             f"refused {', '.join(review['refused'])}" if review["refused"] else "",
             f"vetoed {', '.join(review['veto'])}" if review["veto"] else "",
             f"pinned {', '.join(review['pin'])}" if review["pin"] else "",
             "stopped the run" if review["stop"] else "",
             f"{review['remaining']} more generation(s)" if review["remaining"] is not None
             and not review["stop"] else "",
             "a note" if review["note"].strip() else ""]
    return "; ".join(p for p in parts if p) or "no change"


def _when(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


@app.command
def export(run_id: str, dest: str, *, storage_url: StorageFlag = None,
           json_: JsonFlag = False) -> None:
    """Copy RUN to the store DEST (a folder or s3://bucket/prefix), byte for byte: every record,
    program, log, model and pointer. What is already there with the same bytes is skipped (an
    interrupted export resumes), every object is read back and compared, and a destination
    holding another run with this id is refused.

    Parameters
    ----------
    run_id
        The run to copy.
    dest
        The destination store.
    """
    from darwin.memory import RunStore, export_run
    from darwin.reports import open_run

    if _local(dest):  # the first part of the path that exists must be a folder
        existing = next(p for p in [_folder(dest), *_folder(dest).parents] if p.exists())
        if not existing.is_dir():
            raise UserError(f"export to {dest}: {existing} is a file; give a folder (made if "
                            "missing) or s3://bucket/prefix")
    source = open_run(chosen_storage_url(storage_url), run_id)
    done = export_run(source, RunStore(dest, source.run_id),
                      progress=None if json_ or not err.is_terminal else
                      lambda i, n: err.print(f"\r{i}/{n} objects", end=""))
    if json_:
        print(json.dumps({**done, "dest": dest}, indent=2))
        return
    out.print(f"exported {done['run_id']} to {dest}: {done['copied']} objects copied, "
              f"{done['skipped']} already there, {done['verified']} verified")
