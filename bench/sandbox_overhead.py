"""Benchmark: what each sandbox backend costs a training run, as a ratio against the same run bare.

    python bench/sandbox_overhead.py --budget tiny --reps 3
    python bench/sandbox_overhead.py --budget cpu --reps 2

"Bare" is the same program, budget, token server and thread count in a plain subprocess (the
unsafe backend); then the local bubblewrap backend and, where a daemon answers, the Docker backend.
Runs alternate so a noisy neighbour hits all of them. Reports, per backend, the median time of the
whole `train()` call (start-up and clean-up included) and of the program itself, and both as
ratios to bare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program, train
from darwin.sandbox import SandboxUnavailable, get_sandbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="tiny")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    budget = get_budget(args.budget)
    boxes = {"bare": get_sandbox("unsafe"), "local": get_sandbox("local")}
    try:
        boxes["docker"] = get_sandbox("docker")
    except SandboxUnavailable as e:
        print(f"docker skipped: {e}")
    total: dict[str, list[float]] = {name: [] for name in boxes}
    inside: dict[str, list[float]] = {name: [] for name in boxes}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, box in boxes.items():
                started = time.monotonic()
                r = train(seed_program(), budget, 0, Path(tmp) / f"{name}-{rep}", box, cpus=[0])
                assert r.ok, r.log_tail()
                total[name].append(time.monotonic() - started)
                inside[name].append(r.wall_s)
                print(f"{name:>7} rep {rep}: {total[name][-1]:6.2f} s end to end, "
                      f"{r.wall_s:6.2f} s the program")
    base_total, base_inside = statistics.median(total["bare"]), statistics.median(inside["bare"])
    print(f"budget {budget.name}, median of {args.reps}:")
    for name in boxes:
        t, i = statistics.median(total[name]), statistics.median(inside[name])
        print(f"  {name:>7}: {t:6.2f} s end to end (x{t / base_total:.3f}), "
              f"{i:6.2f} s the program (x{i / base_inside:.3f})")


if __name__ == "__main__":
    main()
