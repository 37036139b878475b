"""Benchmark: the seed's noise band against the training budget, to choose the `cpu` budget.

    python bench/seed_noise.py --iterations 700,400,300 --seeds 8

For each number of seed iterations (the `cpu` budget's shape: batch 16 x block 64 tokens per
iteration), trains and scores the stock seed on --seeds seeds, one child per core, exactly as a
run does, and prints its mean val loss, its sigma, the promotion margin the default run would use
(2 sigma) and the smallest effect that run detects: a child measured on 3 seeds against the seed
measured on 3 seeds, with the margin itself estimated from those 3 seed runs, promoted in at
least 80 % of repeats (computed by simulation from the measured sigma). Also the median wall time
of one child (training + scoring), the unit a run's length is made of.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np

from darwin.engine.slots import run_in_slots, slot_cpus
from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program
from darwin.evaluation.trial import train_then_score
from darwin.sandbox import get_sandbox

RUNS = 3  # the default run's seeds for the seed, and min_runs for a child


def detectable(sigma: float, runs: int = RUNS, power: float = 0.8, trials: int = 20000) -> float:
    """Smallest true improvement promoted with probability >= ``power`` under the default rule:
    child mean (``runs`` runs) below seed mean (``runs`` runs) by more than 2 x the sample
    sigma of the seed's runs."""
    rng = np.random.default_rng(0)
    seed = rng.normal(0, sigma, (trials, runs))
    child = rng.normal(0, sigma, (trials, runs))
    margin = 2 * seed.std(axis=1, ddof=1)
    gap = seed.mean(axis=1) - child.mean(axis=1) - margin  # promoted when gap + effect > 0
    return float(np.quantile(-gap, power))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", default="700,400,300")
    ap.add_argument("--seeds", type=int, default=8)
    ap.add_argument("--sandbox", default="local")
    args = ap.parse_args()
    box = get_sandbox(args.sandbox)
    cpu = get_budget("cpu")
    slots = slot_cpus("cpu", cpu.threads)
    tmp = Path(tempfile.mkdtemp(prefix="darwin-noise-"))
    rows = []
    for iters in [int(x) for x in args.iterations.split(",")]:
        budget = cpu.model_copy(update={"tokens": iters * 16 * 64, "seed_iterations": iters,
                                        "name": "cpu"})

        def one(seed: int, cpus, budget=budget, iters=iters):
            ev = train_then_score(seed_program(), budget, seed, box, tmp / f"{iters}-{seed}",
                                  cpus=cpus)
            assert ev.ok, ev.detail
            return ev

        evs = run_in_slots(range(args.seeds), one, slots)
        losses = [e.loss for e in evs]
        sigma = statistics.stdev(losses)
        child_s = statistics.median(e.train.wall_s + e.score.eval_wall_s for e in evs)
        rows.append((iters, statistics.fmean(losses), sigma, detectable(sigma), child_s))
        print(f"{iters} iterations: " + ", ".join(f"{x:.4f}" for x in losses), flush=True)
    print(f"\nseed over {args.seeds} seeds, one child per core ({len(slots)} cores)")
    print(f"{'iterations':>10} {'val loss':>9} {'sigma':>7} {'2 sigma':>8} "
          f"{'detects (80%)':>14} {'child s':>8}")
    for iters, mean, sigma, effect, child_s in rows:
        print(f"{iters:>10} {mean:>9.4f} {sigma:>7.4f} {2 * sigma:>8.4f} {effect:>14.4f} "
              f"{child_s:>8.1f}")
    first = rows[0]
    for iters, _mean, _sigma, effect, child_s in rows[1:]:
        print(f"{iters} vs {first[0]}: child time x{child_s / first[4]:.2f}, "
              f"detectable effect x{effect / first[3]:.2f}")


if __name__ == "__main__":
    main()
