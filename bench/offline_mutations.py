"""Benchmark: what the offline catalogue does to the seed, with rule-based repair.

    python bench/offline_mutations.py --budget cpu --mutations 12 --seeds 3

Measures, in one run on this machine: the seed's noise (val loss over --seeds seeds), then
--mutations offline mutations of the seed (memory off: uniform exploration), each trained and
scored once, failures repaired by rules (up to --repairs tries). Prints each child and the shares
that train, that beat the seed beyond its noise (mean - 2 sigma), crash and get repaired.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from darwin.engine.slots import run_in_slots, slot_cpus
from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program
from darwin.evaluation.trial import train_then_score
from darwin.mutation.base import MutationContext
from darwin.mutation.offline import OfflineMutator
from darwin.mutation.repair import RuleRepair, repair_case
from darwin.sandbox import get_sandbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="cpu")
    ap.add_argument("--mutations", type=int, default=12)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--repairs", type=int, default=2)
    ap.add_argument("--json", dest="json_path", default=None)
    args = ap.parse_args()
    budget = get_budget(args.budget)
    box = get_sandbox("local")
    slots = slot_cpus("cpu", budget.threads)
    seed_src = seed_program().read_text()
    tmp = Path(tempfile.mkdtemp(prefix="darwin-bench-"))

    def run(src: str, name: str, seed: int, cpus):
        path = tmp / f"{name}.py"
        path.write_text(src)
        return train_then_score(path, budget, seed, box, tmp / name, cpus=cpus)

    base = run_in_slots(range(args.seeds), lambda s, c: run(seed_src, f"seed-{s}", s, c), slots)
    losses = [e.loss for e in base]
    mean, sd = statistics.fmean(losses), statistics.stdev(losses)
    print(f"seed: val loss {mean:.4f} ± {sd:.4f} over {args.seeds} seeds "
          f"({', '.join(f'{x:.4f}' for x in losses)})")

    def child(i: int, cpus):
        ctx = MutationContext(target_program=seed_src, budget=budget)
        m = OfflineMutator(1000 + i).mutate(ctx)
        ev = run(m.child, f"child-{i}", 0, cpus)
        row = {"i": i, "operator": m.operator, "kind": m.answer.kind.value,
               "first": ev.failure.value if ev.failure else "ok", "repairs": 0}
        broken, parent = m.child, seed_src
        while not ev.ok and row["repairs"] < args.repairs:
            row["repairs"] += 1
            log = ev.train.log_tail() if not ev.train.ok else ev.score.log_tail
            fix = RuleRepair().repair(broken, parent, repair_case(ev.failure, ev.detail, log), budget)
            if not fix.ok:
                break
            ev = run(fix.child, f"child-{i}-r{row['repairs']}", 0, cpus)
            broken, parent = fix.child, broken
        row["final"] = ev.failure.value if ev.failure else "ok"
        row["val_loss"] = ev.loss
        row["wall_s"] = round(ev.train.wall_s, 1)
        return row

    rows = run_in_slots(range(args.mutations), child, slots)
    for r in rows:
        delta = f"{r['val_loss'] - mean:+.4f}" if r["val_loss"] is not None else "   -   "
        print(f"{r['i']:>3} {r['operator']:<17} {r['kind']:<15} first {r['first']:<14} "
              f"final {r['final']:<8} Δ {delta}  repairs {r['repairs']}  {r['wall_s']} s")
    n = len(rows)
    trained = sum(r["first"] == "ok" for r in rows)
    crashed = n - trained
    repaired = sum(r["first"] != "ok" and r["final"] == "ok" for r in rows)
    beat = sum(r["val_loss"] is not None and r["val_loss"] < mean - 2 * sd for r in rows)
    summary = {
        "budget": budget.name, "seed_mean": mean, "seed_std": sd, "mutations": n,
        "trained_first_try": trained / n, "crashed": crashed / n,
        "repaired_of_crashed": (repaired / crashed) if crashed else None,
        "beat_seed_beyond_2sigma": beat / n,
    }
    print(json.dumps(summary, indent=2))
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"summary": summary, "children": rows}, indent=2))


if __name__ == "__main__":
    main()
