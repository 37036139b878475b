"""Benchmark: what the sandbox costs a training run, as a ratio against the same run bare.

    python bench/sandbox_overhead.py --budget tiny --reps 3
    python bench/sandbox_overhead.py --budget cpu --reps 2

"Bare" is the same program, budget, token server and thread count in a plain subprocess (the
unsafe backend); "sandboxed" is the local bubblewrap backend. Runs alternate so a noisy neighbour
hits both. Prints wall time per run and the median ratio sandboxed / bare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from darwin.budgets import get_budget
from darwin.sandbox import get_sandbox
from darwin.training import seed_program, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="tiny")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    budget = get_budget(args.budget)
    boxes = {"bare": get_sandbox("unsafe"), "sandboxed": get_sandbox("local")}
    walls: dict[str, list[float]] = {name: [] for name in boxes}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name, box in boxes.items():
                r = train(seed_program(), budget, 0, Path(tmp) / f"{name}-{rep}", box, cpus=[0])
                assert r.ok, r.log_tail()
                walls[name].append(r.wall_s)
                print(f"{name:>9} rep {rep}: {r.wall_s:6.2f} s")
    bare, boxed = statistics.median(walls["bare"]), statistics.median(walls["sandboxed"])
    print(f"budget {budget.name}: bare {bare:.2f} s, sandboxed {boxed:.2f} s, "
          f"ratio {boxed / bare:.3f} (median of {args.reps})")


if __name__ == "__main__":
    main()
