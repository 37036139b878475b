"""`darwin run`: evolve a training program (the main job), new or resumed."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

from darwin.cli.app import JsonFlag, app, err, out, say


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
    pool: str | None = None,
    shared_store: bool = False,
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
        auto (the LLM when OPENAI_API_KEY is set, else offline) | openai | offline | random |
        hpo-tpe | hpo-random (tuned hyper-parameter baselines: Optuna's samplers on the seed's
        constants).
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
    pool
        Train the children on the workers of this Prefect work pool (`darwin worker --pool
        NAME` on each machine) instead of on this machine; needs a Prefect server
        (PREFECT_API_URL) and a store the workers reach (s3://...). A resumed run keeps its pool.
    shared_store
        With --pool and a store that is a folder: every worker mounts this same folder.
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
    from darwin.engine import make_experiment, make_policy
    from darwin.flows import Start, launch_run, quiet_prefect

    quiet_prefect()
    # Nobody can answer a run on the embedded Prefect whose stdin is not a terminal: it applies
    # the defaults at once, as --no-review does.
    asks = review and (bool(os.environ.get("PREFECT_API_URL")) or sys.stdin.isatty())
    policy = make_policy(asks, review_every, review_timeout)
    if resume and pool:
        from darwin.errors import UserError

        raise UserError(f"--pool {pool}: a resumed run keeps the pool it started with; drop "
                        f"--pool (or start a new run with it)")
    experiment = None if resume else make_experiment(
        budget=budget, generations=generations, population=population, keep=keep,
        children=children, mutator=mutator, seeds=seeds, seed=seed, reruns=reruns,
        repair_tries=repair_tries, memory=memory, device=device,
        seed_program=str(seed_program) if seed_program else None, pool=pool)
    start = Start(experiment=experiment, resume=resume, sandbox=sandbox, slots=slots,
                  review=policy, shared_store=shared_store)
    summary = launch_run(start, say, attend=_attend_terminal(policy))
    if json_:
        print(json.dumps(summary, indent=2))
        return
    from darwin.cli.read import leaderboard

    run_id = summary["run_id"]
    leaderboard(run_id)
    verdict = ("[green]beyond the noise[/]" if summary["beyond_noise"]
               else f"[yellow]{summary['verdict']}[/]")
    out.print(
        f"best {summary['best']}: val loss {summary['best_val_loss']:.4f} over "
        f"{summary['best_runs']} seed(s) vs seed {summary['seed_val_loss']:.4f} ± "
        f"{summary['noise']:.4f} (2σ): perplexity "
        f"{100 * summary['perplexity_change']:+.2f}%, {verdict}")
    if summary["test_loss_best"] is not None and summary["test_loss_seed"] is not None:
        change = math.exp(min(summary["test_loss_best"] - summary["test_loss_seed"], 709.0)) - 1
        out.print(f"test split (never used for selection): {summary['test_loss_best']:.4f} vs "
                  f"seed {summary['test_loss_seed']:.4f}, perplexity {100 * change:+.2f}%")
    if llm := summary["llm"]:
        cap = f" of a ${llm['max_cost_usd']:.2f} cap" if llm["max_cost_usd"] is not None else ""
        out.print(f"LLM: {llm['calls']} calls, {llm['input_tokens']} + {llm['output_tokens']} "
                  f"tokens, ${llm['cost_usd']:.4f}{cap}"
                  + (f"; failures {llm['failures']}" if llm["failures"] else ""))
    out.print(f"status: {summary['status']['line']}", markup=False)
    out.print(f"inspect: darwin show {summary['best']} --run {run_id}")
    if summary["report"]:
        out.print(f"report: {summary['report']}")


def _attend_terminal(policy):
    """What a terminal adds around the evolve flow: the live display, Ctrl-C / SIGTERM that
    stop the run resumably, and the terminal's own reviewer."""
    import contextlib

    @contextlib.contextmanager
    def attend(run):
        from darwin.cli.review import TerminalReviewer
        from darwin.flows import hide_reported_errors, set_local_reviewer
        from darwin.reports import LiveProgress

        hide_reported_errors()  # from now on the CLI alone reports a DarwinError, in one line
        with LiveProgress(run.store, run.experiment, run.slots, err,
                          enabled=err.is_terminal, plain=not err.is_terminal) as live:
            _stop_on_signals(run.store, run.run_id, live, run.claim,
                             bool(run.experiment.pool))
            if policy.mode == "ask":
                set_local_reviewer(TerminalReviewer(run.run_id, live, sys.stdin.isatty()))
            yield live

    return attend


def _stop_on_signals(store, run_id: str, live, claim, pool: bool = False) -> None:
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
            from darwin.flows import mark_stale_runs_crashed  # hold the stop

            try:
                if pool:  # Prefect does not cancel a stopped run's subflows by itself
                    from darwin.tasks import pool as on_pool

                    on_pool.cancel_children()
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
