"""The `darwin` command line.

    darwin baseline --budget tiny --seeds 3     train the seed N times in the sandbox, score it
    darwin score PROGRAM --budget tiny          train and score any program that follows the contract
    darwin sandbox check                        what isolates untrusted code on this machine
    darwin sandbox build [--offline]            the Docker sandbox's image
    darwin mutate PROGRAM                       one mutation of PROGRAM (LLM or offline), as a child
    darwin dev llm-server                       a local OpenAI-compatible server with scripted answers

Commands stay thin: they parse flags, call the core package and print (rich tables for people,
``--json`` for machines: JSON only on stdout, progress on stderr). Errors a user can fix are one
line on stderr and exit code 2, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Annotated

from cyclopts import App, Parameter
from rich.console import Console
from rich.table import Table

from darwin.errors import UserError

app = App(
    name="darwin",
    help="DARWIN: an LLM evolves the training code of small GPT models.",
    version_flags=["--version"],
)
sandbox_app = App(name="sandbox",
                  help="Check the sandbox that runs untrusted training code; build its Docker image.")
app.command(sandbox_app)
dev_app = App(name="dev", help="Tools for developing and trying DARWIN locally.")
app.command(dev_app)

# Piped output keeps whole table rows (rich would squeeze them into 80 columns).
out = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 160)

JsonFlag = Annotated[bool, Parameter(name="--json", negative=(), help="print JSON only")]
DEVICES = ("cpu", "cuda")


def _check_device(device: str) -> None:
    if device not in DEVICES:
        raise UserError(f"unknown device {device!r}: use --device cpu|cuda")
    if device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise UserError(
                "--device cuda but no CUDA device is visible to torch here: "
                "use --device cpu, or install a CUDA build of torch on a GPU machine"
            )


def _sandbox(name: str | None):
    from darwin.sandbox import get_sandbox
    from darwin.settings import get_settings

    chosen = name or get_settings().sandbox
    box = get_sandbox(chosen)
    if box.name == "docker":
        from darwin.sandbox.image import describe_runtime

        err.print(f"[dim]sandbox: docker ({box.image_name}, {describe_runtime(box.runtime_kind)})[/]")
    elif box.name == "local":
        err.print("[dim]sandbox: local (bubblewrap)"
                  + (", no Docker daemon answered" if chosen == "auto" else "") + "[/]")
    if not box.isolated:
        err.print(
            "[bold red]UNSAFE:[/] untrusted code runs WITHOUT isolation (--sandbox unsafe); "
            "results are marked isolated=false"
        )
    return box


def _scratch(kind: str) -> Path:
    from darwin.settings import get_settings

    path = get_settings().scratch / f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    path.mkdir(parents=True, exist_ok=True)
    return path


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


def _evaluate_many(program: Path, budget_name: str, seeds: list[int], device: str,
                   sandbox: str | None, quiet: bool) -> list:
    from darwin.engine.slots import run_in_slots, slot_cpus
    from darwin.evaluation.budgets import get_budget
    from darwin.evaluation.data import load_dataset
    from darwin.evaluation.evaluate import evaluate_program

    budget = get_budget(budget_name)
    _check_device(device)
    if not program.is_file():
        raise UserError(f"program not found: {program} (give the path of a training program)")
    load_dataset()  # a missing or altered dataset fails here, before any work
    box = _sandbox(sandbox)
    scratch = _scratch(f"{budget.name}")
    slots = slot_cpus(device, budget.threads)
    with _progress(quiet) as progress:
        tasks = {s: progress.add_task(f"seed {s}: waiting", total=budget.tokens) for s in seeds}

        def work(seed: int, cpus):
            task = tasks[seed]
            progress.update(task, description=f"seed {seed}: training")

            def on_progress(done: int, total: int) -> None:
                progress.update(task, completed=done)
                if done >= total:
                    progress.update(task, description=f"seed {seed}: scoring")

            ev = evaluate_program(program, budget, seed, box, scratch / f"seed-{seed}",
                                  device=device, cpus=cpus, on_progress=on_progress)
            status = f"val loss {ev.loss:.4f}" if ev.ok else f"FAILED ({ev.failure.value})"
            progress.update(task, completed=budget.tokens, description=f"seed {seed}: {status}")
            return ev

        return run_in_slots(seeds, work, slots)


def _summary(rows: list[dict]) -> dict:
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
        if r["status"] != "ok":
            out.print(f"[red]seed {r['seed']}: {r['status']}[/] {r['detail']}")
        for flag in r["flags"]:
            out.print(f"[yellow]seed {r['seed']}: {flag}[/]")
    if rows and rows[0]["peak_label"]:
        out.print(f"[dim]MFU against: {rows[0]['peak_label']}; sandbox: {rows[0]['sandbox']}[/]")


def _quiet_prefect() -> None:
    """Keep Prefect's console noise down without losing what the UI receives (notes/prefect.md).
    Must run before prefect is imported."""
    for key, value in (
        ("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "WARNING"),
        ("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL"),
        ("PREFECT_SERVER_ANALYTICS_ENABLED", "false"),
        ("DO_NOT_TRACK", "1"),  # the client's telemetry notice would break the progress display
        ("PREFECT_LOGGING_EXTRA_LOGGERS", "darwin"),
    ):
        os.environ.setdefault(key, value)


def _experiment(**values):
    from pydantic import ValidationError

    from darwin.engine.experiment import Experiment

    try:
        return Experiment(**values)
    except ValidationError as e:
        first = e.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        field = ".".join(str(p) for p in first["loc"])
        if not field and ": " in message:  # cross-field checks name their field first
            field, message = message.split(": ", 1)
        raise UserError(f"invalid --{(field or 'settings').replace('_', '-')}: {message}") from None


def _mark_stale_runs_crashed(run_id: str) -> int:
    """Flow runs of a process that died (kill -9) stay Running forever: mark them Crashed."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    with get_client(sync_client=True) as client:
        stale = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[f"darwin-run:{run_id}"]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(
                any_=[StateType.RUNNING, StateType.PENDING])),
        ))
        for fr in stale:
            client.set_flow_run_state(fr.id, Crashed(message="its process died; resumed"),
                                      force=True)
    return len(stale)


@app.command
def run(
    *,
    resume: str | None = None,
    seed_program: Path | None = None,
    budget: str = "cpu",
    generations: int = 3,
    population: int = 4,
    keep: int = 2,
    children: int = 4,
    mutator: str = "auto",
    seeds: int = 3,
    seed: int = 0,
    reruns: int = 1,
    repair_tries: int = 2,
    memory: bool = True,
    device: str = "cpu",
    sandbox: str | None = None,
    json_: JsonFlag = False,
) -> None:
    """Evolve a training program: generation 0 is the seed measured over --seeds seeds, then
    --generations generations of --children children each.

    Parameters
    ----------
    resume
        Continue the run with this id from its last committed generation (see `darwin runs`).
    seed_program
        Evolve this program (it must follow seed/README.md) instead of the stock seed.
    budget
        tiny | cpu | paper.
    generations
        Generations after the seed's.
    population
        Members kept after each generation.
    keep
        Elites: only a child that beats them beyond the noise displaces them.
    children
        Children per generation.
    mutator
        auto (the LLM when OPENAI_API_KEY is set, else offline) | openai | offline | random.
    seeds
        S: seeds the seed program is measured on (its spread is the noise band).
    seed
        The run's seed: the same seed and settings give the same run.
    reruns
        Best children per generation re-run on more seeds before they may be promoted.
    repair_tries
        Repair attempts per failed child.
    memory
        Feed lessons back into mutation (--no-memory: the paper's ablation).
    device
        cpu | cuda.
    sandbox
        auto | docker | local | unsafe (default: $DARWIN_SANDBOX or auto: Docker when a daemon
        answers, else local).
    """
    import time as _time

    from darwin.evaluation.data import load_dataset
    from darwin.memory.store import RunStore
    from darwin.settings import get_settings

    _quiet_prefect()
    settings = get_settings()
    if sandbox:
        os.environ["DARWIN_SANDBOX"] = sandbox
    url = settings.store_url
    if resume:
        store = RunStore(url, resume)
        if not store.exists():
            raise UserError(f"unknown run {resume!r} in {url}: `darwin runs` lists the runs")
        experiment = _experiment(**store.meta()["experiment"])
        run_id = resume
    else:
        experiment = _experiment(
            budget=budget, generations=generations, population=population, keep=keep,
            children=children, mutator=mutator, seeds=seeds, seed=seed, reruns=reruns,
            repair_tries=repair_tries, memory=memory, device=device,
            seed_program=str(seed_program) if seed_program else None)
    _check_device(experiment.device)
    load_dataset()
    _sandbox(sandbox)  # refuse early when nothing isolates
    from darwin.mutation.llm_mutator import make_mutator

    chosen = make_mutator(experiment.mutator, settings.llm)
    if chosen.name != "openai":
        err.print(f"mutator: [bold]{chosen.name}[/] (the offline catalogue, no LLM)"
                  + (": no OPENAI_API_KEY is set" if experiment.mutator == "auto" else ""))
    if not resume:
        from darwin.evaluation.training import seed_program as stock

        source_path = Path(seed_program) if seed_program else stock()
        if not source_path.is_file():
            raise UserError(f"--seed-program {source_path} not found")
        run_id = f"{_time.strftime('%Y%m%d-%H%M%S')}-{experiment.budget}-{uuid.uuid4().hex[:4]}"
        store = RunStore(url, run_id)
        sha = store.put_code(source_path.read_text())
        from darwin import __version__

        store.create({"run_id": run_id, "experiment": experiment.model_dump(mode="json"),
                      "seed_code_sha": sha, "created_at": _time.time(), "darwin": __version__})
    from darwin.sandbox.limits import reap_stale_cgroups, reap_stale_output_mounts

    reap_stale_cgroups()  # what a run killed with -9 left behind (containers: when Docker starts)
    reap_stale_output_mounts()
    err.print(f"run [bold]{run_id}[/] ({'resumed at generation ' + str(store.head()) if resume else 'new'}); "
              f"resume with: darwin run --resume {run_id}")
    from prefect import tags

    from darwin.flows.evolve import evolve

    if resume:
        _mark_stale_runs_crashed(run_id)
    from darwin.engine.slots import slot_cpus
    from darwin.evaluation.budgets import get_budget
    from darwin.reports.progress import LiveProgress

    n_slots = len(slot_cpus(experiment.device, get_budget(experiment.budget).threads))
    try:
        with LiveProgress(store, experiment, n_slots, err, enabled=err.is_terminal), \
                tags(f"darwin-run:{run_id}", f"budget:{experiment.budget}"):
            last = evolve(experiment, run_id, url)
    except KeyboardInterrupt:
        err.print(f"interrupted: generation {store.head()} is committed; "
                  f"continue with: darwin run --resume {run_id}")
        sys.exit(130)
    seed_gen = store.generation(0)
    seed_loss = seed_gen.population[0].fitness
    best = last.population[0]
    finals = {}
    for cid in {best.candidate_id, "seed"}:
        finals[cid] = store.final(cid) or {}
    summary = {
        "run_id": run_id,
        "generations": last.generation,
        "seed_val_loss": seed_loss,
        "noise": seed_gen.noise,
        "best": best.candidate_id,
        "best_val_loss": best.fitness,
        "best_runs": len(best.losses),
        "improvement": seed_loss - best.fitness,
        "perplexity_change": math.exp(best.fitness - seed_loss) - 1,
        "beyond_noise": seed_loss - best.fitness > seed_gen.noise,
        "test_loss_best": finals[best.candidate_id].get("test_loss"),
        "test_loss_seed": finals["seed"].get("test_loss"),
        "population": [m.model_dump() for m in last.population],
    }
    if json_:
        print(json.dumps(summary, indent=2))
    else:
        leaderboard(run_id)
        verdict = ("[green]beyond the noise[/]" if summary["beyond_noise"]
                   else "[yellow]within the noise[/]")
        out.print(
            f"best {best.candidate_id}: val loss {best.fitness:.4f} over {len(best.losses)} seed(s) "
            f"vs seed {seed_loss:.4f} ± {seed_gen.noise:.4f} (2σ): perplexity "
            f"{100 * summary['perplexity_change']:+.2f}%, {verdict}")
        if summary["test_loss_best"] is not None and summary["test_loss_seed"] is not None:
            change = math.exp(summary["test_loss_best"] - summary["test_loss_seed"]) - 1
            out.print(f"test split (never used for selection): {summary['test_loss_best']:.4f} vs "
                      f"seed {summary['test_loss_seed']:.4f}, perplexity {100 * change:+.2f}%")
        out.print(f"inspect: darwin show {best.candidate_id} --run {run_id}")


@app.command
def runs(*, json_: JsonFlag = False) -> None:
    """List the runs in the store ($DARWIN_STORE, default $DARWIN_HOME/runs)."""
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
    for r in c["requests"]:
        out.print(f"[yellow]request to humans ({r['kind']}):[/] {r['detail']}")
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
    from darwin.evaluation.training import seed_program

    program = seed_program()
    evs = _evaluate_many(program, budget, list(range(seed, seed + seeds)), device, sandbox, json_)
    rows = [e.to_dict() for e in evs]
    summary = _summary(rows)
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
    (ev,) = _evaluate_many(Path(program), budget, [seed], device, sandbox, json_)
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


@app.command
def mutate(
    program: Path,
    *,
    proposer: Path | None = None,
    mutator: str = "auto",
    mode: str = "search_replace",
    budget: str = "cpu",
    seed: int = 0,
    out_path: Annotated[Path | None, Parameter(name="--out")] = None,
    note: list[str] | None = None,
    json_: JsonFlag = False,
) -> None:
    """Make one mutation of PROGRAM and write the child (then `darwin score` it).

    Parameters
    ----------
    program
        The target program to improve.
    proposer
        The proposing agent's own program (the paper's agents modify one another's code).
    mutator
        auto (the LLM when a key is set, else offline) | openai | offline | random.
    mode
        search_replace | whole | chunk (LLM only; offline mutators edit).
    budget
        The budget the child will be trained under.
    seed
        Seed of the offline mutators' choices and of the chunk-wise operator.
    out_path
        Where to write the child (default: PROGRAM's name with .child.py).
    note
        A human note for the prompt (repeatable).
    """
    from darwin.evaluation.budgets import get_budget
    from darwin.mutation.llm_mutator import MODES, MutationContext, make_mutator

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use --mode " + "|".join(MODES))
    b = get_budget(budget)
    for p in (program, proposer):
        if p is not None and not Path(p).is_file():
            raise UserError(f"program not found: {p}")
    chosen = make_mutator(mutator, rng=seed)
    if chosen.name != "openai":
        err.print(f"mutator: {chosen.name} (offline catalogue, no LLM)"
                  + (" - no API key is configured" if mutator == "auto" else ""))
    ctx = MutationContext(
        target_program=Path(program).read_text(),
        budget=b,
        mode=mode,  # type: ignore[arg-type]
        proposer_program=Path(proposer).read_text() if proposer else None,
        human_notes=list(note or []),
        seed=seed,
    )
    result = chosen.mutate(ctx)
    target = Path(out_path) if out_path else Path(program).with_suffix(".child.py")
    if result.ok:
        assert result.child is not None
        target.write_text(result.child)
    report = {
        "ok": result.ok,
        "child": str(target) if result.ok else None,
        "mutator": result.mutator,
        "mode": result.mode,
        "operator": result.operator,
        "kind": result.answer.kind.value if result.answer else None,
        "reasoning": result.answer.reasoning if result.answer else None,
        "requests": [r.model_dump(mode="json") for r in result.answer.requests] if result.answer else [],
        "failure": result.failure,
        "detail": result.detail,
        "attempts": result.attempts,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cost_usd": round(result.cost_usd, 6),
        "diff": result.diff,
    }
    if json_:
        print(json.dumps(report, indent=2))
    elif result.ok:
        out.print(f"[bold]{report['kind']}[/]: {report['reasoning']}", markup=True)
        out.print(result.diff, markup=False, highlight=False, soft_wrap=True)
        for r in report["requests"]:
            out.print(f"[yellow]request ({r['kind']}):[/] {r['detail']}")
        out.print(f"child written to {target}; {report['input_tokens']}+{report['output_tokens']} "
                  f"tokens, ${report['cost_usd']:.4f}, {result.attempts} attempt(s). "
                  f"Next: darwin score {target}")
    else:
        out.print(f"[red]mutation failed ({result.failure}):[/] {result.detail}")
    if not result.ok:
        sys.exit(1)


@dev_app.command(name="llm-server")
def llm_server(
    *,
    port: int = 8001,
    script: Path | None = None,
    api_key: str | None = None,
) -> None:
    """Serve an OpenAI-compatible chat API on 127.0.0.1 with scripted (or demo) answers.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1.
    script
        A JSON file with a list of answers (see darwin/llm/devserver.py); demo answers otherwise.
    api_key
        Accept only this key (default: any).
    """
    from darwin.llm.devserver import ScriptedLLMServer

    items = []
    if script is not None:
        try:
            items = json.loads(Path(script).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read --script {script}: {e}") from None
        if not isinstance(items, list):
            raise UserError(f"--script {script} must hold a JSON list of answers")
    try:
        server = ScriptedLLMServer(items, api_key=api_key, port=port)
    except OSError as e:
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}; try --port") from None
    err.print(f"scripted OpenAI-compatible server on {server.url} "
              f"({len(items)} scripted answers, then demo answers). Use it with:\n"
              f"  export OPENAI_BASE_URL={server.url} OPENAI_API_KEY={api_key or 'anything'}\n"
              "Ctrl-C stops it.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


@sandbox_app.command
def check(*, json_: JsonFlag = False) -> None:
    """Probe each sandbox backend for real and say what isolates here, and why not."""
    from darwin.sandbox import check as run_check

    rows = run_check()
    if json_:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="sandbox backends")
        for col in ("backend", "works", "isolates", "details"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["backend"], "yes" if r["works"] else "no",
                          "[green]yes[/]" if r["isolates"] else "[red]no[/]", r["why"])
        out.print(table)
    if not any(r["isolates"] for r in rows):
        if not json_:
            out.print("[red]No isolating backend: untrusted code will be refused "
                      "(start Docker or install bubblewrap, or choose --sandbox unsafe "
                      "knowingly).[/]")
        sys.exit(1)


@sandbox_app.command
def build(*, offline: bool = False, image: str | None = None, torch_version: str = "2.13.0",
          torch_index: str = "https://download.pytorch.org/whl/cpu", json_: JsonFlag = False) -> None:
    """Build the Docker sandbox's image.

    By default from the project's Dockerfile (slim Python + the pinned torch; needs a registry).
    --offline needs no registry or download: a mount-point-only image, with this host's OS tree,
    Python and torch mounted read-only at run time (what `auto` builds by itself when no image
    exists).

    Parameters
    ----------
    offline
        Build without a registry (the host's runtime, mounted read-only).
    image
        The tag (default: $DARWIN_DOCKER_IMAGE or darwin-sandbox:latest).
    torch_version
        The torch the Dockerfile installs.
    torch_index
        The wheel index for torch (a CUDA one on GPU machines, e.g. .../whl/cu126).
    """
    from darwin.sandbox.docker_backend import connect
    from darwin.sandbox.image import (
        build_from_dockerfile,
        build_offline,
        describe_runtime,
        image_runtime,
    )
    from darwin.settings import get_settings

    name = image or get_settings().docker_image
    client = connect()
    started = time.monotonic()
    try:
        if offline:
            img = build_offline(client, name)
        else:
            img = build_from_dockerfile(
                client, name, torch_version=torch_version, torch_index=torch_index,
                on_line=None if json_ else (lambda line: err.print(line, markup=False,
                                                                   highlight=False)))
    finally:
        client.close()
    row = {"image": name, "id": img.id, "runtime": image_runtime(img),
           "size_mb": round((img.attrs.get("Size") or 0) / 1e6, 1),
           "seconds": round(time.monotonic() - started, 2)}
    if json_:
        print(json.dumps(row))
    else:
        out.print(f"built {name} ({describe_runtime(row['runtime'])}) in {row['seconds']} s; "
                  "`darwin sandbox check` tries it")


def main(argv: list[str] | None = None) -> None:
    try:
        app(argv if argv is not None else sys.argv[1:])
    except UserError as e:
        err.print(f"darwin: error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("darwin: interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
