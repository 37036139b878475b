"""Benchmark: children per minute through the flow with 1 slot vs all slots, cold vs pre-started.

    python bench/throughput.py --budget tiny --children 8
    python bench/throughput.py --budget cpu --children 4

Each configuration runs in its own process (the slot pool is per process) with its own empty
DARWIN_HOME: --children children (the seed program on as many seeds) trained and scored through
the real flow, as a generation's children are. Prints children per minute, the speed-up of N
slots over 1, and what pre-starting sandboxes (DARWIN_WARM=on) changed, and each child's
training wall time (a pre-started sandbox that imports while another child trains on the same
core slows that child: this column shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def one(budget: str, children: int) -> None:
    """In a child process: run the configuration the environment describes, print JSON."""
    from _children import start_prefect, through_flow

    start_prefect()
    wall, records, slots = through_flow(budget, list(range(200, 200 + children)))
    print(json.dumps({"wall_s": wall, "slots": slots,
                      "train_s": statistics.median(r.train_wall_s for r in records),
                      "eval_s": statistics.median(r.eval_wall_s for r in records)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="tiny")
    ap.add_argument("--children", type=int, default=8)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.budget, args.children)
    cores = len(os.sched_getaffinity(0))
    rows = []
    for slots in sorted({1, cores}):
        for warm in ("off", "on"):
            home = tempfile.mkdtemp(prefix="darwin-bench-throughput-")
            env = {**os.environ, "DARWIN_HOME": home, "DARWIN_SLOTS": str(slots),
                   "DARWIN_WARM": warm}
            r = subprocess.run([sys.executable, __file__, "--one", "--budget", args.budget,
                                "--children", str(args.children)], env=env, text=True,
                               capture_output=True, check=False)
            if r.returncode != 0:
                sys.exit(f"slots {slots}, warm {warm} failed:\n{r.stderr[-3000:]}")
            got = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append((slots, warm, got))
            print(f"slots {slots}, warm {warm}: {got['wall_s']:.1f} s", flush=True)
    print(f"\n{args.children} children of the {args.budget} budget through the flow")
    print(f"{'slots':>5} {'warm':>4} {'wall s':>7} {'children/min':>13} {'train s':>8} "
          f"{'score s':>8} {'vs 1 slot':>10} {'vs cold':>8}")
    base = {w: g["wall_s"] for s, w, g in rows if s == 1}
    cold = {s: g["wall_s"] for s, w, g in rows if w == "off"}
    for slots, warm, g in rows:
        print(f"{slots:>5} {warm:>4} {g['wall_s']:>7.1f} {60 * args.children / g['wall_s']:>13.2f} "
              f"{g['train_s']:>8.2f} {g['eval_s']:>8.2f} {base[warm] / g['wall_s']:>9.2f}x "
              f"{cold[slots] / g['wall_s']:>7.2f}x")


if __name__ == "__main__":
    main()
