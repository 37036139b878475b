"""`darwin baseline` and `darwin score`: train and score one program on N seeds, exactly as a
child is."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from darwin.cli.app import JsonFlag, app, err, open_sandbox, out
from darwin.errors import UserError


def _progress(quiet: bool):
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}%"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


def _measure(program: Path, budget_name: str, seeds: list[int], device: str,
                   sandbox: str | None, quiet: bool) -> list:
    from darwin.engine import check_inputs, measure_program, scratch_folder
    from darwin.evaluation import get_budget
    from darwin.settings import get_settings

    budget = get_budget(budget_name)
    check_inputs(program, device)
    box = open_sandbox(sandbox)
    scratch = scratch_folder(get_settings().scratch, budget.name)
    with _progress(quiet) as progress:
        tasks = {s: progress.add_task(f"seed {s}: waiting", total=budget.tokens) for s in seeds}

        def on_progress(seed: int, done: int, total: int) -> None:
            progress.update(tasks[seed], completed=done)
            if done >= total:
                progress.update(tasks[seed], description=f"seed {seed}: scoring")

        def on_done(seed: int, ev) -> None:
            status = f"val loss {ev.loss:.4f}" if ev.ok else f"FAILED ({ev.failure.value})"
            progress.update(tasks[seed], completed=budget.tokens,
                            description=f"seed {seed}: {status}")

        return measure_program(program, budget, seeds, device, box, scratch,
                       on_start=lambda s: progress.update(tasks[s],
                                                          description=f"seed {s}: training"),
                       on_progress=on_progress, on_done=on_done)

def _print_rows(title: str, rows: list[dict], summary: dict | None) -> None:
    table = Table(title=title)
    for col in ("seed", "status", "val loss", "perplexity", "MFU", "train s", "eval s", "tokens"):
        table.add_column(col, justify="right" if col != "status" else "left")
    for r in rows:
        table.add_row(
            str(r["seed"]),
            r["status"] if r["status"] == "ok" else f"[red]{r['status']}[/]",
            f"{r['val_loss']:.4f}" if r["val_loss"] is not None else "-",
            f"{r['perplexity']:.2f}" if r["perplexity"] is not None else "-",
            f"{100 * r['mfu']:.2f}%" if r["mfu"] is not None else "-",
            f"{r['train_wall_s']:.1f}",
            f"{r['eval_wall_s']:.1f}" if r["eval_wall_s"] is not None else "-",
            f"{r['tokens_served']:,}",
        )
    out.print(table)
    if summary and summary.get("ok"):
        out.print(
            f"val loss {summary['val_loss_mean']:.4f} ± {summary['val_loss_std']:.4f} (std over "
            f"{summary['ok']} seeds; range {summary['val_loss_min']:.4f}–"
            f"{summary['val_loss_max']:.4f}), perplexity {summary['perplexity_mean']:.2f}, "
            f"{summary['wall_s_mean']:.1f} s per seed"
        )
    for r in rows:
        c = r["checks"]
        if r["status"] == "ok" and "probes" in c:
            out.print(
                f"[dim]seed {r['seed']}: checks passed: no held-out text in the program or its "
                f"outputs; {c['probes']} probes answered by a fresh process agree (largest gap "
                f"{c['max_diff']:.2g}, tolerance {c['tolerance']:g}; edge {c['edge']:.2g}, at most "
                f"{c['epsilon']:g}); FLOPs from {len(r['unused_tensors']) and 'the used' or 'all'} "
                f"tensors{'' if c['verified'] else '; [red]unverified (no sandbox)[/]'}[/]")
            if r.get("private_loss") is not None:
                out.print(f"[dim]seed {r['seed']}: loss on the private text {r['private_loss']:.4f} "
                          f"(memorisation gap {r['private_loss'] - r['val_loss']:+.4f} nats)[/]")
        if r["status"] != "ok":
            # Details and flags can carry the candidate's words (tensor names): never markup.
            out.print(f"[red]seed {r['seed']}: {r['status']}[/] {escape(r['detail'])}")
        for flag in r["flags"]:
            out.print(f"[yellow]seed {r['seed']}: {escape(flag)}[/]")
    if rows and rows[0]["peak_label"]:
        out.print(f"[dim]MFU against: {rows[0]['peak_label']}; sandbox: {rows[0]['sandbox']}[/]")


@app.command
def baseline(
    *,
    budget: str = "cpu",
    seeds: int = 3,
    seed: int = 0,
    device: str = "cpu",
    sandbox: str | None = None,
    json_: JsonFlag = False,
) -> None:
    """Train the stock seed program --seeds times (seeds --seed, --seed+1, ...) and score each.

    Parameters
    ----------
    budget
        tiny (tests, seconds) | cpu (default, ~75 s per child on one core) | paper (GPU).
    seeds
        How many seeds to run.
    seed
        The first seed.
    device
        cpu | cuda.
    sandbox
        auto | docker | local | unsafe (default: $DARWIN_SANDBOX or auto: Docker when a daemon
        answers, else local).
    """
    if seeds < 1:
        raise UserError(f"--seeds must be at least 1, got {seeds}")
    from darwin.engine import summarize
    from darwin.evaluation import seed_program

    program = seed_program()
    evs = _measure(program, budget, list(range(seed, seed + seeds)), device, sandbox, json_)
    rows = [e.to_dict() for e in evs]
    summary = summarize(rows)
    if json_:
        print(json.dumps({"budget": budget, "runs": rows, "summary": summary}, indent=2))
    else:
        _print_rows(f"seed program, budget {budget}", rows, summary)
    if not summary.get("ok"):
        sys.exit(1)


@app.command
def score(
    program: Path,
    *,
    budget: str = "cpu",
    seed: int = 0,
    device: str = "cpu",
    sandbox: str | None = None,
    json_: JsonFlag = False,
) -> None:
    """Train PROGRAM in the sandbox under the budget and score it with the trusted scorer.

    Parameters
    ----------
    program
        A training program that follows seed/README.md.
    budget
        tiny | cpu | paper.
    seed
        Which seed.
    device
        cpu | cuda.
    sandbox
        auto | docker | local | unsafe (default: $DARWIN_SANDBOX or auto: Docker when a daemon
        answers, else local).
    """
    (ev,) = _measure(Path(program), budget, [seed], device, sandbox, json_)
    row = ev.to_dict()
    if json_:
        print(json.dumps(row, indent=2))
    else:
        _print_rows(f"{program}, budget {budget}", [row], None)
        if not ev.ok:
            tail = ev.train.log_tail(1500) if not ev.train.ok else (ev.score.log_tail if ev.score else "")
            if tail.strip():
                out.print("[dim]--- end of the program's log (untrusted) ---[/]")
                out.print(tail.rstrip(), markup=False)
    if not ev.ok:
        sys.exit(1)


