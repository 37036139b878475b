"""What the run store costs per generation, on a local folder and on S3 (moto's server on this
machine), measured in one run of each with the same settings.

    python bench/storage_overhead.py --generations 2 --children 4

Runs `darwin run --budget tiny` once per backend (same seed, offline mutator) and prints, per
generation, what the generation record says the store was asked: calls (on S3 one request
each), MB read and written, and seconds waited (summed over threads), next to the generation's
wall time; then the S3 / local ratio of the run's wall time. moto answers from memory on
loopback, so the S3 seconds are a floor: a real bucket adds its round trip to every call.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(url: str, home: Path, env: dict, args) -> tuple[str, float]:
    env = dict(env, DARWIN_HOME=str(home), PREFECT_HOME=str(home / "prefect"),
               DARWIN_STORAGE_URL=url, OPENAI_API_KEY="")
    env.pop("PREFECT_API_URL", None)
    started = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "darwin.cli", "run", "--budget", "tiny", "--generations",
         str(args.generations), "--children", str(args.children), "--population", "4", "--keep",
         "2", "--seeds", "2", "--reruns", "1", "--mutator", "offline", "--json"],
        env=env, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        sys.exit(f"darwin run on {url} failed: {r.stderr[-2000:]}")
    return json.loads(r.stdout)["run_id"], time.monotonic() - started


def generations(url: str, run_id: str, env: dict) -> list[dict]:
    os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
    from darwin.memory.store import RunStore

    store = RunStore(url, run_id)
    return [store.generation(n).model_dump() for n in range(store.head() + 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--generations", type=int, default=2)
    parser.add_argument("--children", type=int, default=4)
    args = parser.parse_args()

    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = dict(os.environ, AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
               AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
               AWS_DEFAULT_REGION="us-east-1")
    import s3fs

    fs = s3fs.S3FileSystem(endpoint_url=env["AWS_ENDPOINT_URL"], key="bench", secret="bench")
    fs.mkdir("darwin-bench")
    fs.make_bucket_versioned("darwin-bench")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (("local", f"{tmp}/local-runs"), ("s3", "s3://darwin-bench/runs")):
            run_id, wall = run(url, Path(tmp) / name, env, args)
            results[name] = (wall, generations(url, run_id, env))
    server.stop()

    print(f"{'store':6} {'gen':>3} {'calls':>6} {'MB read':>8} {'MB written':>10} "
          f"{'store s':>8} {'gen wall s':>10} {'store/wall':>10}")
    for name, (_, gens) in results.items():
        for g in gens:
            s = g["storage"]
            print(f"{name:6} {g['generation']:>3} {s['calls']:>6.0f} "
                  f"{s['bytes_read'] / 1e6:>8.2f} {s['bytes_written'] / 1e6:>10.2f} "
                  f"{s['seconds']:>8.2f} {g['wall_s']:>10.1f} "
                  f"{s['seconds'] / max(g['wall_s'], 1e-9):>10.3f}")
    local, s3 = results["local"][0], results["s3"][0]
    print(f"run wall: local {local:.1f} s, s3 {s3:.1f} s, ratio s3/local {s3 / local:.3f}")


if __name__ == "__main__":
    main()
