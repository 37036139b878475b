"""Benchmark: what the flow costs one child, as a ratio to the same program trained bare.

    python bench/overhead.py --budgets tiny,cpu --reps 2

"Bare" is the seed program trained once in a plain subprocess (the unsafe backend: no isolation,
no scoring, no Prefect), pinned to one core. "Flow" is the same program and seed as one child of a
run: Prefect's train and score tasks, a slot, the sandbox (DARWIN_SANDBOX, default auto), the
trusted scorer's two processes and the run store; once cold (every sandbox started when its turn
comes) and once with pre-started sandboxes (DARWIN_WARM=on). One child at a time: the ratio is
the fixed cost a child pays on top of its training. Runs alternate so a noisy neighbour hits all
of them; medians are printed. Goal: <= 1.10 on the `cpu` budget.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", default="tiny,cpu")
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="darwin-bench-overhead-"))
    os.environ["DARWIN_HOME"] = str(home)  # fresh: no training cache, no earlier runs

    from _children import start_prefect, through_flow

    from darwin.evaluation.budgets import get_budget
    from darwin.evaluation.training import seed_program, train
    from darwin.sandbox import get_sandbox

    print(f"prefect started in {start_prefect():.1f} s (not counted)")
    bare_box = get_sandbox("unsafe")
    table = []
    for name in args.budgets.split(","):
        budget = get_budget(name)
        walls: dict[str, list[float]] = {"bare": [], "flow": [], "flow, warm": []}
        parts: dict[str, list[tuple[float, float, float]]] = {"flow": [], "flow, warm": []}
        for rep in range(args.reps):
            seed = 100 + rep
            started = time.monotonic()
            r = train(seed_program(), budget, seed, home / f"bare-{name}-{rep}", bare_box,
                      cpus=[0])
            assert r.ok, r.log_tail()
            walls["bare"].append(time.monotonic() - started)
            for mode, warm in (("flow", "off"), ("flow, warm", "on")):
                # Read by the next run's engine; a home of its own, so no training cache hit.
                os.environ["DARWIN_WARM"] = warm
                os.environ["DARWIN_HOME"] = str(home / f"{name}-{rep}-{warm}")
                wall, (ev,), _ = through_flow(name, [seed])
                walls[mode].append(wall)
                parts[mode].append((ev.train_wall_s, ev.eval_wall_s, ev.queue_wait_s))
            print(f"{name} rep {rep}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in walls.items()),
                  flush=True)
        bare = statistics.median(walls["bare"])
        for mode, values in walls.items():
            wall = statistics.median(values)
            train_s = statistics.median(p[0] for p in parts[mode]) if mode in parts else bare
            score_s = statistics.median(p[1] for p in parts[mode]) if mode in parts else 0.0
            table.append((name, mode, wall, train_s, score_s, wall / bare))
    print(f"\none child at a time, median of {args.reps}; 'training' is the program's own wall "
          f"time as measured from outside, 'scoring' the trusted scorer's")
    print(f"{'budget':<7} {'how':<11} {'child s':>8} {'training s':>11} {'scoring s':>10} "
          f"{'x bare':>7}")
    for name, mode, wall, train_s, score_s, ratio in table:
        print(f"{name:<7} {mode:<11} {wall:>8.2f} {train_s:>11.2f} {score_s:>10.2f} "
              f"{ratio:>7.3f}")


if __name__ == "__main__":
    main()
