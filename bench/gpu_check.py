"""GPU check: the seed on the `paper` budget, sandboxed, scored by the trusted scorer on CUDA.

    python bench/gpu_check.py --out results.json

Runs, on one GPU: the sandbox probe; the seed alone on seed 0 (val loss, wall time, MFU against
the device's data-sheet peak, the scorer's checks); then --packed seeds at once on the same GPU
(throughput of packing several children per GPU). Prints a short table and writes
JSON. Needs bubblewrap (or --sandbox unsafe) and a CUDA build of torch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

from darwin.engine.slots import run_in_slots
from darwin.evaluation.budgets import get_budget
from darwin.evaluation.training import seed_program
from darwin.evaluation.trial import train_then_score
from darwin.sandbox import check, get_sandbox


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="paper")
    ap.add_argument("--packed", type=int, default=4)
    ap.add_argument("--sandbox", default="local")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    report: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    report["nvidia_smi"] = subprocess.run(["nvidia-smi", "-L"], capture_output=True,
                                          text=True).stdout.strip()
    report["sandbox_check"] = check()
    budget = get_budget(args.budget)
    box = get_sandbox(args.sandbox)
    tmp = Path(tempfile.mkdtemp(prefix="darwin-gpu-"))

    def one(seed: int, _cpus=None) -> dict:
        ev = train_then_score(seed_program(), budget, seed, box, tmp / f"s{seed}-{time.time_ns()}",
                              device="cuda")
        d = ev.to_dict()
        if not ev.ok:
            d["log"] = ev.train.log_tail(2000) if not ev.train.ok else ev.score.log_tail
        return d

    t0 = time.monotonic()
    report["alone"] = one(0)
    report["alone_wall_s"] = time.monotonic() - t0
    t0 = time.monotonic()
    report["packed"] = run_in_slots(range(args.packed), one, [None] * args.packed)
    report["packed_wall_s"] = time.monotonic() - t0
    report["packed_speedup"] = args.packed * report["alone_wall_s"] / report["packed_wall_s"]
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"device {report['device']}; sandbox {[(r['backend'], r['isolates']) for r in report['sandbox_check']]}")
    for name, rows in (("alone", [report["alone"]]), ("packed", report["packed"])):
        for r in rows:
            mfu = f"{100 * r['mfu']:.2f}%" if r["mfu"] else "-"
            print(f"{name:>6} seed {r['seed']}: {r['status']:<8} val {r['val_loss']} mfu {mfu} "
                  f"train {r['train_wall_s']}s eval {r['eval_wall_s']}s checks {r['checks']} "
                  f"{r.get('detail', '')}")
    print(f"alone {report['alone_wall_s']:.1f}s; {args.packed} packed {report['packed_wall_s']:.1f}s; "
          f"throughput x{report['packed_speedup']:.2f}")


if __name__ == "__main__":
    main()
