"""What scoring one child costs, now against an earlier revision of the scorer (a ratio, measured
in one run on one machine).

    python bench/scoring_cost.py --budget tiny --repeats 3 --against 8ecee03

Trains the stock seed once under the budget, then scores its output folder ``--repeats`` times
with this checkout's scorer and with the scorer of ``--against`` (a git revision, checked out in
a temporary worktree and imported from there in a subprocess), interleaved, and prints the median
wall time of each, their ratio, and the loss each reported (they must agree).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Runs in a subprocess with the revision's checkout first on sys.path; its package layout may
# predate darwin/evaluation/.
SCORE_ONE = r"""
import json, sys, time
from pathlib import Path
try:
    from darwin.evaluation.budgets import get_budget
    from darwin.evaluation.scoring import score
except ImportError:
    from darwin.budgets import get_budget
    from darwin.scoring import score
from darwin.sandbox import get_sandbox
out, work, budget, box = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
started = time.monotonic()
s = score(Path(out), get_budget(budget), get_sandbox(box), Path(work))
print(json.dumps({"wall": time.monotonic() - started, "loss": s.loss,
                  "failure": s.failure.value if s.failure else None}))
"""


def score_once(checkout: Path, out: Path, work: Path, budget: str, box: str, home: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(checkout), "DARWIN_HOME": str(home)}
    done = subprocess.run([sys.executable, "-c", SCORE_ONE, str(out), str(work), budget, box],
                          capture_output=True, text=True, env=env, cwd=checkout, check=False)
    if done.returncode != 0:
        raise SystemExit(f"scoring with {checkout} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", default="tiny")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--against", default="8ecee03", help="git revision of the old scorer")
    parser.add_argument("--sandbox", default="local")
    args = parser.parse_args()

    from darwin.evaluation.budgets import get_budget
    from darwin.evaluation.training import seed_program, train
    from darwin.sandbox import get_sandbox

    tmp = Path(tempfile.mkdtemp(prefix="darwin-bench-scoring-"))
    old = tmp / "old"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(old),
                    args.against], check=True)
    try:
        started = time.monotonic()
        trained = train(seed_program(), get_budget(args.budget), 0, tmp / "train",
                        get_sandbox(args.sandbox))
        assert trained.ok, trained.log_tail()
        print(f"trained the seed on {args.budget} in {time.monotonic() - started:.1f} s")
        walls: dict[str, list[float]] = {"new": [], "old": []}
        losses: dict[str, float | None] = {}
        for k in range(args.repeats):
            for name, checkout in (("new", ROOT), ("old", old)):
                r = score_once(checkout, trained.out_dir, tmp / f"{name}-{k}", args.budget,
                               args.sandbox, tmp / f"home-{name}")
                walls[name].append(r["wall"])
                losses[name] = r["loss"]
        new, before = statistics.median(walls["new"]), statistics.median(walls["old"])
        print(json.dumps({"budget": args.budget, "repeats": args.repeats,
                          "old_s": [round(w, 2) for w in walls["old"]],
                          "new_s": [round(w, 2) for w in walls["new"]],
                          "ratio_new_over_old": round(new / before, 2), "loss": losses}))
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)],
                       check=False)


if __name__ == "__main__":
    main()
