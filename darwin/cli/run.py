"""`darwin run`: evolve a training program (the main job), new or resumed."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from darwin.cli.app import JsonFlag, app, err, open_sandbox, out
from darwin.errors import StorageError


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
    slots: int | None = None,
    review: bool = True,
    review_every: int = 0,
    review_timeout: float = 900.0,
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
    slots
        Children trained at once (default: $DARWIN_SLOTS, or one per core on CPU, 4 on a GPU,
        fewer when memory is short); refused when the machine cannot hold them.
    review
        Pause between generations for the model's requests and the review gates (answer in the
        terminal, the Prefect UI, or with `darwin review`). --no-review applies the defaults at
        once (requests refused, the run continues); so does a run on the embedded Prefect
        whose stdin is not a terminal (nobody could answer).
    review_every
        A review gate every N generations (veto, pin, stop, more generations, a note); 0: none.
    review_timeout
        Seconds a review waits before its defaults apply.
    """
    from darwin.engine import watchdog
    from darwin.engine.experiment import make_experiment
    from darwin.engine.runs import (
        claim_run,
        create_run,
        open_for_resume,
        reap_leftovers,
        run_summary,
    )
    from darwin.engine.slots import slot_count
    from darwin.evaluation.budgets import get_budget
    from darwin.evaluation.data import load_dataset
    from darwin.evaluation.hardware import check_device
    from darwin.flows.admin import quiet_prefect
    from darwin.mutation.registry import make_mutator
    from darwin.settings import get_settings

    quiet_prefect()
    settings = get_settings()
    policy = _review_policy(review, review_every, review_timeout)
    if sandbox:
        os.environ["DARWIN_SANDBOX"] = sandbox
    if slots is not None:
        os.environ["DARWIN_SLOTS"] = str(slots)  # the engine, in this process, reads it
        settings = get_settings()
    url = settings.store_url
    opened = open_for_resume(url, resume) if resume else None
    claim = None
    if opened is not None:
        claim = claim_run(opened.store)  # a second --resume of a live run stops here, in one line
    experiment = opened.experiment if opened else make_experiment(
        budget=budget, generations=generations, population=population, keep=keep,
        children=children, mutator=mutator, seeds=seeds, seed=seed, reruns=reruns,
        repair_tries=repair_tries, memory=memory, device=device,
        seed_program=str(seed_program) if seed_program else None)
    check_device(experiment.device)
    budget_ = get_budget(experiment.budget)
    n_slots = slot_count(experiment.device, budget_.threads, budget_.memory_mb, settings.slots)
    load_dataset()
    box = open_sandbox(sandbox)  # refuse early when nothing isolates
    chosen = make_mutator(experiment.mutator, settings.llm)
    if not chosen.uses_llm:
        err.print(f"mutator: [bold]{chosen.name}[/] (the offline catalogue, no LLM)"
                  + (": no OPENAI_API_KEY is set" if experiment.mutator == "auto" else ""))
    if opened is None:
        from darwin.engine.runs import environment
        from darwin.evaluation.training import seed_program as stock

        opened = create_run(url, experiment, Path(seed_program) if seed_program else stock(),
                            environment(box.name, experiment.device))
        claim = claim_run(opened.store)
    run_id, store = opened.run_id, opened.store
    reaped = {what: n for what, n in reap_leftovers().items() if n}
    if reaped:
        err.print("removed what a crashed run left: "
                  + ", ".join(f"{n} {what}" for what, n in reaped.items()))
    watchdog.start()  # if this process dies, whatever it started dies with it
    head = store.head()
    err.print(f"run [bold]{run_id}[/] ("
              + ("new" if not opened.resumed else "resumed: nothing committed yet" if head is None
                 else f"resumed after generation {head}")
              + f"); resume with: darwin run --resume {run_id}")
    from darwin.cli.review import TerminalReviewer
    from darwin.flows.admin import hide_reported_errors, mark_stale_runs_crashed, run_context
    from darwin.flows.evolve import evolve
    from darwin.flows.review import set_local_reviewer
    from darwin.reports.progress import LiveProgress

    if opened.resumed:
        mark_stale_runs_crashed(run_id)
    hide_reported_errors()
    try:
        with LiveProgress(store, experiment, n_slots, err, enabled=err.is_terminal) as live, \
                run_context(run_id, experiment.budget, url):
            _stop_on_signals(store, run_id, live, claim)
            if policy.mode == "ask":
                set_local_reviewer(TerminalReviewer(run_id, live, sys.stdin.isatty()))
            last = evolve(experiment, run_id, url, review=policy)
    except StorageError as e:  # the store stayed down: what was committed stays committed
        raise StorageError(f"{e}; continue with: darwin run --resume {run_id}") from None
    summary = run_summary(store, last)
    # Redrawn with the test split in it (the last generation's report lacked it).
    from darwin.reports.page import write_run_report

    made = write_run_report(store, lambda words: err.print(words, style="yellow", markup=False))
    summary["report"] = str(made.path) if made else None
    if json_:
        print(json.dumps(summary, indent=2))
        return
    from darwin.cli.read import leaderboard

    leaderboard(run_id)
    verdict = ("[green]beyond the noise[/]" if summary["beyond_noise"]
               else f"[yellow]{summary['verdict']}[/]")
    out.print(
        f"best {summary['best']}: val loss {summary['best_val_loss']:.4f} over "
        f"{summary['best_runs']} seed(s) vs seed {summary['seed_val_loss']:.4f} ± "
        f"{summary['noise']:.4f} (2σ): perplexity "
        f"{100 * summary['perplexity_change']:+.2f}%, {verdict}")
    if summary["test_loss_best"] is not None and summary["test_loss_seed"] is not None:
        change = math.exp(summary["test_loss_best"] - summary["test_loss_seed"]) - 1
        out.print(f"test split (never used for selection): {summary['test_loss_best']:.4f} vs "
                  f"seed {summary['test_loss_seed']:.4f}, perplexity {100 * change:+.2f}%")
    if llm := summary["llm"]:
        cap = f" of a ${llm['max_cost_usd']:.2f} cap" if llm["max_cost_usd"] is not None else ""
        out.print(f"LLM: {llm['calls']} calls, {llm['input_tokens']} + {llm['output_tokens']} "
                  f"tokens, ${llm['cost_usd']:.4f}{cap}"
                  + (f"; failures {llm['failures']}" if llm["failures"] else ""))
    out.print(f"inspect: darwin show {summary['best']} --run {run_id}")
    if summary["report"]:
        out.print(f"report: {summary['report']}")



def _review_policy(review: bool, every: int, timeout_s: float):
    """How this invocation asks people: nobody can answer a run on the embedded Prefect whose
    stdin is not a terminal, so it applies the defaults at once, as --no-review does."""
    from darwin.engine.reviews import ReviewPolicy
    from darwin.errors import UserError

    if every < 0:
        raise UserError(f"invalid --review-every: {every}; give N >= 1, or 0 for no gates")
    if not timeout_s > 0:
        raise UserError(f"invalid --review-timeout: {timeout_s}; give the seconds a review "
                        "waits, for example 900")
    asks = review and (bool(os.environ.get("PREFECT_API_URL")) or sys.stdin.isatty())
    return ReviewPolicy(mode="ask" if asks else "defaults", every=every, timeout_s=timeout_s)


def _stop_on_signals(store, run_id: str, live, claim) -> None:
    """SIGINT and SIGTERM stop a run the same way: what is persisted stays (every write is
    atomic), the line says how to resume, and the process ends at once (exit 130 / 143), as if
    killed: the watchdog then stops the children and the run resumes like after a crash.
    Waiting for the training threads instead made SIGTERM look ignored for minutes."""
    import signal
    import threading

    def stop(signum, _frame) -> None:
        live.stop()
        word = "interrupted" if signum == signal.SIGINT else "terminated"
        heads: list = []

        def tidy() -> None:  # best effort, bounded: a store or server that is down must not
            from darwin.flows.admin import mark_stale_runs_crashed  # hold the stop

            try:
                heads.append(store.head())
                claim.release()  # on S3, another machine may resume at once
                mark_stale_runs_crashed(run_id)  # else the resumed run marks them
            except Exception:  # noqa: BLE001
                pass

        helper = threading.Thread(target=tidy, daemon=True)
        helper.start()
        helper.join(timeout=5)
        kept = ("the store did not answer" if not heads else "nothing was committed yet"
                if heads[0] is None else f"generation {heads[0]} is committed")
        err.print(f"{word}: {kept}; continue with: darwin run --resume {run_id}")
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
