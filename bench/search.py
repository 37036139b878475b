"""Benchmark: does the search beat a tuned baseline? Arms x run seeds at one setting, with error bars.

    python bench/search.py                  # the `cpu` budget's default run shape, 3 run seeds
    python bench/search.py --quick          # a small smoke version (tiny budget, 1 generation)

Each arm is a real `darwin run` (same sandbox, scorer, selection and promotion; only the proposer
differs): `offline`, `random`, `offline-no-memory` (offline --no-memory), `hpo-tpe`, `hpo-random`,
and `openai` when OPENAI_API_KEY is set. Every run has its own DARWIN_HOME under --home (so no
run answers another's trainings from the cache, and its seconds are its own) and all share one
store, so `darwin report RUN...` overlays them (the bench prints the command).

Resumable: a finished run leaves bench-run.json in its home and is reused; an interrupted one is
resumed (`darwin run --resume`); Ctrl-C stops the run in hand resumably. Writes
<out>/search-<date>.json (every run's figures and curve), .md (the table) and .png (best-so-far
val loss against trainings per arm: the mean and a 95 % band over run seeds, and the seed's
noise band).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ARMS = {  # arm -> its `darwin run` flags
    "offline": ["--mutator", "offline"],
    "random": ["--mutator", "random"],
    "offline-no-memory": ["--mutator", "offline", "--no-memory"],
    "hpo-tpe": ["--mutator", "hpo-tpe"],
    "hpo-random": ["--mutator", "hpo-random"],
    "openai": ["--mutator", "openai"],
}
BASELINE = "hpo-tpe"  # the tuned search every other arm is compared with
# `darwin run`'s defaults (the cpu budget's default run shape), and the smoke version.
DEFAULT = dict(budget="cpu", generations=3, population=4, keep=2, children=4, seeds=3, reruns=1,
               repair_tries=2)
QUICK = dict(budget="tiny", generations=1, population=2, keep=1, children=2, seeds=2, reruns=0,
             repair_tries=1)
# Two-sided 97.5 % quantiles of Student's t by degrees of freedom (no scipy needed).
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
        9: 2.262, 10: 2.228, 12: 2.179, 15: 2.131, 20: 2.086, 30: 2.042}


# -- statistics ------------------------------------------------------------------------------
def ci95(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95 % t interval); the half-width is nan for fewer than 2."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan
    t = T975[max(k for k in T975 if k <= n - 1)] if n - 1 <= 30 else 1.96
    return mean, t * statistics.stdev(values) / math.sqrt(n)


def best_so_far(losses: list[float | None]) -> list[float]:
    """The lowest val loss after each training (a failed training: None, changes nothing)."""
    out, best = [], math.inf
    for x in losses:
        if x is not None and math.isfinite(x):
            best = min(best, x)
        out.append(best)
    return out


def band(curves: list[list[float]]) -> tuple[int, list[float], list[float]]:
    """(n, mean, half-width) over ``curves``, cut to the shortest: every arm gets the same
    number of trainings."""
    n = min((len(c) for c in curves), default=0)
    means, halves = [], []
    for i in range(n):
        m, h = ci95([c[i] for c in curves])
        means.append(m)
        halves.append(h)
    return n, means, halves


def change(loss: float | None, base: float | None) -> float | None:
    """Perplexity change of ``loss`` against ``base`` (a fraction, -0.05 = 5 % lower)."""
    if loss is None or base is None:
        return None
    return math.exp(min(loss - base, 709.0)) - 1


# -- one run's figures, from its store -------------------------------------------------------
def run_figures(store, summary: dict) -> dict:
    """What the table and the figure need of one finished run."""
    from darwin.mutation import first_run_outcomes

    meta = store.meta()
    first_seed = int(meta.get("experiment", {}).get("seed", 0))
    cands = {c.id: c for c in store.candidates()}
    evals = store.evaluations()
    trained = sorted((e for e in evals if not e.cached and e.status != "no_child"),
                     key=lambda e: (e.scored_at, e.candidate_id, e.seed))
    first = {e.candidate_id: e for e in evals if e.seed == first_seed}
    children = [c for c in cands.values() if c.generation > 0 and not c.repair_of]
    crashed = [c for c in children
               if c.id in first and first[c.id].status not in ("ok", "no_child")]
    repaired = [c for c in crashed if any(
        r.repair_of and r.id.startswith(f"{c.id}-r") and first.get(r.id) is not None
        and first[r.id].status == "ok" for r in cands.values())]

    def mfu(cid: str) -> float | None:
        values = [e.mfu for e in evals if e.candidate_id == cid and e.mfu is not None]
        return statistics.fmean(values) if values else None

    head = store.head() or 0
    commits = [store.generation(n).committed_at for n in range(head + 1)]
    per_gen = [b - a for a, b in zip(commits, commits[1:])]
    kinds: dict[str, list[int]] = {}  # kind -> [tried, beat its parent]
    for rec, ev, outcome in first_run_outcomes(list(cands.values()), evals, first_seed):
        if rec.repair_of or ev.status == "no_child":  # a repair, or no program to train
            continue
        tally = kinds.setdefault(rec.kind, [0, 0])
        tally[0] += 1
        tally[1] += outcome.effect is not None and outcome.effect < 0
    seed_mfu, best_mfu = mfu("seed"), mfu(summary["best"])
    return {
        "run_id": store.run_id,
        "seed_val_loss": summary["seed_val_loss"],
        "noise": summary["noise"],
        "best": summary["best"],
        "best_kind": cands[summary["best"]].kind if summary["best"] in cands else None,
        # What the best changed, in its own words (for a tuned search: the values it set).
        "best_reasoning": cands[summary["best"]].reasoning[:500] if summary["best"] in cands
        else "",
        "best_change": summary["perplexity_change"],
        "beyond_noise": summary["beyond_noise"],
        "test_change": change(summary.get("test_loss_best"), summary.get("test_loss_seed")),
        "mfu_change": (best_mfu / seed_mfu - 1) if best_mfu and seed_mfu else None,
        "children": len(children),
        "crashed": len(crashed),
        "repaired": len(repaired),
        # The median: an interrupted and resumed generation counts its downtime.
        "s_per_generation": statistics.median(per_gen) if per_gen else None,
        "llm_cost_usd": sum(c.cost_usd for c in cands.values()),
        "trainings": len(trained),
        "curve": best_so_far([e.val_loss if e.status == "ok" else None for e in trained]),
        "kinds": kinds,
    }


# -- the table -------------------------------------------------------------------------------
def _pm(values: list[float], scale: float = 100.0, unit: str = " %") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    mean, half = ci95(values)
    if math.isnan(half):
        return f"{scale * mean:+.2f}{unit}"
    return f"{scale * mean:+.2f} ± {scale * half:.2f}{unit}"


def arm_rows(runs: dict[str, list[dict]]) -> list[dict]:
    """One row per arm, in the paper's format (means over run seeds, 95 % intervals)."""
    rows = []
    for arm, records in runs.items():
        if not records:
            continue
        children = sum(r["children"] for r in records)
        crashed = sum(r["crashed"] for r in records)
        per_gen = [r["s_per_generation"] for r in records if r["s_per_generation"] is not None]
        rows.append({
            "arm": arm, "runs": len(records),
            "trainings": statistics.fmean(r["trainings"] for r in records),
            "best_change": _pm([r["best_change"] for r in records]),
            "test_change": _pm([r["test_change"] for r in records]),
            "mfu_change": _pm([r["mfu_change"] for r in records]),
            "crash_pct": 100 * crashed / children if children else 0.0,
            "repaired_pct": 100 * sum(r["repaired"] for r in records) / crashed if crashed else None,
            "s_per_generation": statistics.fmean(per_gen) if per_gen else None,
            "llm_cost_usd": sum(r["llm_cost_usd"] for r in records),
            "beyond_noise": sum(bool(r["beyond_noise"]) for r in records),
        })
    return rows


def against_baseline(runs: dict[str, list[dict]], baseline: str = BASELINE) -> list[str]:
    """Per arm, its best perplexity change minus the baseline's, paired by run seed: the mean,
    its 95 % interval, and whether that interval excludes zero."""
    base = {r["run_seed"]: r["best_change"] for r in runs.get(baseline, [])}
    lines = []
    for arm, records in runs.items():
        if arm == baseline:
            continue
        diffs = [r["best_change"] - base[r["run_seed"]] for r in records if r["run_seed"] in base]
        if len(diffs) < 2:
            continue
        mean, half = ci95(diffs)
        if mean + half < 0:
            verdict = f"beats {baseline} beyond noise"
        elif mean - half > 0:
            verdict = f"loses to {baseline} beyond noise"
        else:
            verdict = f"no difference from {baseline} beyond noise"
        lines.append(f"{arm} − {baseline}: {100 * mean:+.2f} ± {100 * half:.2f} points of "
                     f"perplexity change over {len(diffs)} paired run seeds: {verdict}")
    return lines


def kinds_by_arm(runs: dict[str, list[dict]]) -> dict[str, str]:
    """Per arm, which kinds of change beat their parent on the first seed, out of those tried
    (summed over run seeds), most tried first: what each proposer's gains were made of."""
    out = {}
    for arm, records in runs.items():
        total: dict[str, list[int]] = {}
        for r in records:
            for kind, (tried, beat) in r["kinds"].items():
                t = total.setdefault(kind, [0, 0])
                t[0] += tried
                t[1] += beat
        out[arm] = ", ".join(f"{k} {b}/{t}" for k, (t, b) in
                             sorted(total.items(), key=lambda kv: (-kv[1][0], kv[0]))) or "–"
    return out


def _flags(setting: dict) -> str:
    return " ".join(f"--{k.replace('_', '-')} {v}" for k, v in setting.items())


def markdown(rows: list[dict], verdicts: list[str], setting: dict, machine: dict,
             kinds: dict[str, str] | None = None) -> str:
    fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
    lines = [
        f"Setting: {_flags(setting)}; "
        f"{machine['when']}, {machine['cpus']} CPUs, commit {machine['commit']}.",
        "",
        "| arm | runs | trainings/run | best val ppl vs seed | test ppl of the best | MFU "
        "| crash % | repaired % | s/generation | LLM cost | best beyond noise |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['runs']} | {r['trainings']:.1f} | {r['best_change']} | "
            f"{r['test_change']} | {r['mfu_change']} | {r['crash_pct']:.0f} | "
            f"{fmt(r['repaired_pct'], '.0f')} | {fmt(r['s_per_generation'], '.0f')} | "
            f"${r['llm_cost_usd']:.2f} | {r['beyond_noise']}/{r['runs']} |")
    lines += ["", "Changes are means over run seeds ± the 95 % t interval.", ""]
    lines += [f"- {v}" for v in verdicts]
    if kinds:
        lines += ["", "Kinds of change that beat their parent (first seed), of those tried:", ""]
        lines += [f"- {arm}: {text}" for arm, text in kinds.items()]
    return "\n".join(lines) + "\n"


def figure(runs: dict[str, list[dict]], path: Path) -> int:
    """Best-so-far val loss against trainings per arm; returns the trainings plotted."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    all_runs = [r for records in runs.values() for r in records]
    n = min((len(r["curve"]) for r in all_runs), default=0)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    seed = statistics.fmean(r["seed_val_loss"] for r in all_runs)
    noise = statistics.fmean(r["noise"] for r in all_runs)
    ax.axhspan(seed - noise, seed + noise, color="0.85", label="the seed ± 2σ (its noise)")
    x = list(range(1, n + 1))
    for arm, records in runs.items():
        if not records:
            continue
        _, mean, half = band([r["curve"][:n] for r in records])
        ax.plot(x, mean, label=f"{arm} ({len(records)} runs)")
        if len(records) > 1:
            ax.fill_between(x, [m - h for m, h in zip(mean, half)],
                            [m + h for m, h in zip(mean, half)], alpha=0.2)
    ax.set_xlabel("trainings (the seed's first, then children, re-runs and repairs)")
    ax.set_ylabel("best val loss so far (one seed)")
    ax.set_title("Best-so-far val loss per arm: mean and 95 % band over run seeds")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return n


# -- running the arms, resumably -------------------------------------------------------------
STARTED = re.compile(r"^run (\S+) \(new\)", re.M)  # the line `darwin run` starts with


@dataclass
class Job:
    arm: str
    run_seed: int
    home: Path  # its DARWIN_HOME: cache, scratch, its log and its figures once done
    store: Path  # the runs folder all jobs of a setting share

    @property
    def done_file(self) -> Path:
        return self.home / "bench-run.json"

    @property
    def log(self) -> Path:
        return self.home / "bench.log"

    def run_id(self) -> str | None:
        """The run this job started last (None: none yet), as its log names it."""
        found = STARTED.findall(self.log.read_text()) if self.log.exists() else []
        return found[-1] if found else None

    def state(self) -> str:
        """done (its figures are kept), resume (a run was started) or new."""
        if self.done_file.exists():
            return "done"
        run_id = self.run_id()
        return "resume" if run_id and (self.store / run_id / "run.json").exists() else "new"


def setting_key(setting: dict) -> str:
    return "-".join(f"{k}{v}" for k, v in setting.items())


def plan(arms: list[str], run_seeds: list[int], setting: dict, home: Path) -> list[Job]:
    root = home / setting_key(setting)
    return [Job(arm, s, root / f"{arm}-s{s}", root / "runs") for s in run_seeds for arm in arms]


def run_args(job: Job, setting: dict) -> list[str]:
    if job.state() == "resume":
        return ["run", "--resume", job.run_id(), "--no-review", "--json"]
    flags = [x for k, v in setting.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    return ["run", *flags, *ARMS[job.arm], "--seed", str(job.run_seed), "--no-review", "--json"]


def execute(job: Job, setting: dict, progress, task) -> dict:
    """Run (or resume) one job's `darwin run`; its figures, also kept in its home."""
    from darwin.memory import RunStore

    job.home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DARWIN_HOME": str(job.home), "DARWIN_STORAGE_URL": f"file://{job.store}"}
    if job.arm != "openai":
        env["OPENAI_API_KEY"] = ""  # an offline arm never calls the LLM
    with open(job.log, "a") as log:
        proc = subprocess.Popen([sys.executable, "-m", "darwin.cli", *run_args(job, setting)],
                                env=env, stdout=subprocess.PIPE, stderr=log, text=True)
        out: list[str] = []
        reader = threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True)
        reader.start()
        try:
            while proc.poll() is None:
                run_id = job.run_id()
                done = len(list((job.store / run_id / "evaluations").glob("*.json"))) \
                    if run_id else 0
                progress.update(task, description=f"{job.arm} s{job.run_seed}: {done} trainings")
                time.sleep(2)
        except BaseException:
            # Ctrl-C in a terminal reaches the run too; a signal sent to the bench alone (kill,
            # SIGTERM) must not leave its run training on: stop it the resumable way.
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            raise
        reader.join()
    if proc.returncode in (130, 143, -2, -15):  # Ctrl-C or SIGTERM: it stopped resumably
        raise KeyboardInterrupt
    if proc.returncode != 0:
        tail = job.log.read_text()[-1500:]
        raise RuntimeError(f"{job.arm} s{job.run_seed} failed (exit {proc.returncode}); "
                           f"its log: {job.log}\n{tail}")
    summary = json.loads(out[0])
    figures = {"arm": job.arm, "run_seed": job.run_seed,
               **run_figures(RunStore(job.store, summary["run_id"]), summary)}
    job.done_file.write_text(json.dumps(figures, indent=1))
    return figures


def machine() -> dict:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = "?"
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cpus": os.cpu_count(),
            "machine": platform.machine(), "python": platform.python_version(),
            "commit": commit or "?"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small smoke version (tiny budget)")
    ap.add_argument("--arms", default=None, help="comma-separated (default: all; openai only "
                    "when OPENAI_API_KEY is set)")
    ap.add_argument("--run-seeds", type=int, default=None, help="run seeds per arm (default 3, "
                    "2 with --quick)")
    ap.add_argument("--home", type=Path, default=None,
                    help="where the runs live (default: $DARWIN_HOME/bench-search)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args(argv)
    setting = dict(QUICK if args.quick else DEFAULT)
    arms = args.arms.split(",") if args.arms else [
        a for a in ARMS if a != "openai" or os.environ.get("OPENAI_API_KEY")]
    if bad := [a for a in arms if a not in ARMS]:
        print(f"search.py: error: unknown arm(s) {', '.join(bad)}; use {'|'.join(ARMS)}",
              file=sys.stderr)
        return 2
    n_seeds = args.run_seeds or (2 if args.quick else 3)
    home = args.home or Path(os.environ.get("DARWIN_HOME", Path.home() / ".darwin")) / \
        "bench-search"
    jobs = plan(arms, list(range(n_seeds)), setting, home)

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    runs: dict[str, list[dict]] = {a: [] for a in arms}
    started = time.time()

    def terminated(*_):
        raise KeyboardInterrupt  # SIGTERM stops the bench as Ctrl-C does: resumably

    signal.signal(signal.SIGTERM, terminated)
    try:
        with Progress("[progress.description]{task.description}", BarColumn(),
                      MofNCompleteColumn(), TimeElapsedColumn()) as progress:
            task = progress.add_task("runs", total=len(jobs))
            for job in jobs:
                if job.state() == "done":
                    figures = json.loads(job.done_file.read_text())
                else:
                    figures = execute(job, setting, progress, task)
                runs[job.arm].append(figures)
                progress.advance(task)
    except KeyboardInterrupt:
        print("search.py: interrupted; finished runs are kept and the one in hand resumes: run "
              "the same command again to continue", file=sys.stderr)
        return 130
    except RuntimeError as e:
        print(f"search.py: error: {e}", file=sys.stderr)
        return 1
    wall = time.time() - started

    rows = arm_rows(runs)
    verdicts = against_baseline(runs) if BASELINE in arms else []
    info = machine()
    stem = f"search{'-quick' if args.quick else ''}-{time.strftime('%Y-%m-%d')}"
    args.out.mkdir(parents=True, exist_ok=True)
    plotted = figure(runs, args.out / f"{stem}.png")
    table = markdown(rows, verdicts, setting, info, kinds_by_arm(runs))
    table += (f"\nThe figure plots the first {plotted} trainings of every run (the fewest any run "
              "made); the table's best is each run's promoted best over its whole run.\n")
    ids = " ".join(r["run_id"] for records in runs.values() for r in records)
    table += (f"\nOverlay the runs: `DARWIN_STORAGE_URL=file://{jobs[0].store} darwin report "
              f"{ids}`\n")
    (args.out / f"{stem}.md").write_text(table)
    (args.out / f"{stem}.json").write_text(json.dumps(
        {"setting": setting, "arms": arms, "run_seeds": n_seeds, "machine": info,
         "wall_s_this_invocation": round(wall, 1), "rows": rows, "verdicts": verdicts,
         "runs": runs}, indent=1))
    print(table)
    print(f"wrote {args.out / stem}.json, .md, .png in {wall:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
