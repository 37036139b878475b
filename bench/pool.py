"""Benchmark: children through a work pool (darwin run --pool) vs in-process, and what one Prefect
server takes.

    python bench/pool.py                      # tiny, 6 children per configuration
    python bench/pool.py --children 8 --load 200

Starts its own Prefect server (a temporary PREFECT_HOME, a free port). Three configurations,
each the seed program on --children seeds trained and scored through the real flow:

    in-process   one slot, in the orchestrator's process (what `darwin run --slots 1` does)
    1 worker     `darwin worker --pool P --slots 1`: each child a flow run the worker starts
    2 workers    two such workers, each with its own DARWIN_HOME (two "machines")

and prints children per minute, the speed-up of two workers over one, and a child's wall time
through the pool over in-process (one slot each: wall / children). The store is a folder every
worker reaches (one machine here); S3's own cost is bench/storage_overhead.py's.

--load N then submits N no-op children (flow runs of a deployment on a pool nobody serves) from
16 threads, as `darwin run --pool` submits a generation, and times the submissions and one poll
of the watcher over all N (one flow-run read, two store listings): the numbers docs/scale.md
builds on. They are cancelled afterwards.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
BIN = Path(sys.executable).parent


def one(budget: str, children: int, pool: str | None) -> None:
    """In a child process: the configuration the environment describes; prints JSON."""
    import statistics

    from _children import start_prefect, through_flow

    start_prefect()
    wall, records, _ = through_flow(budget, list(range(300, 300 + children)), pool=pool)
    print(json.dumps({"wall_s": wall,
                      "train_s": statistics.median(r.train_wall_s for r in records),
                      "eval_s": statistics.median(r.eval_wall_s for r in records),
                      "machines": sorted({r.machine for r in records})}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    log = open(home / "server.log", "wb")
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1",
                             "--port", str(port), "--no-ui"], env=env, stdout=log,
                            stderr=log, start_new_session=True)
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.read().strip() == b"true":
                    return proc, url
        except OSError:
            time.sleep(0.2)
    sys.exit("the Prefect server did not start: " + (home / "server.log").read_text()[-2000:])


def start_worker(root: Path, pool: str, env: dict) -> subprocess.Popen:
    root.mkdir(parents=True)
    log = open(root / "worker.log", "w")
    return subprocess.Popen([str(BIN / "darwin"), "worker", "--pool", pool, "--slots", "1"],
                            env={**env, "DARWIN_HOME": str(root / "home")}, cwd=root,
                            stdout=log, stderr=log, start_new_session=True)


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def configuration(workers: int, args, env: dict, tmp: Path) -> dict:
    pool = f"bench-{workers}w-{os.getpid()}" if workers else None
    started = [start_worker(tmp / f"{pool}-{i}", pool, env) for i in range(workers)]
    try:
        cmd = [sys.executable, __file__, "--one", "--budget", args.budget, "--children",
               str(args.children)] + (["--pool", pool] if pool else [])
        r = subprocess.run(cmd, env={**env, "DARWIN_HOME": str(tmp / f"orch-{workers}"),
                                     "DARWIN_SLOTS": "1"},
                           text=True, capture_output=True, check=False)
    finally:
        for w in started:
            stop(w)
    if r.returncode != 0:
        sys.exit(f"{workers} worker(s) failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def load_test(n: int, env: dict, tmp: Path) -> dict:
    """Submit n no-op children as `darwin run --pool` does; time them and one watcher poll."""
    os.environ.update(env)
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.deployments import run_deployment
    from prefect.states import Cancelled

    from darwin.flows.child import deploy_child
    from darwin.memory import RunStore

    pool = f"bench-load-{os.getpid()}"
    name = deploy_child(pool)
    store = RunStore(str(tmp / "load-runs"), "load")

    @flow(name="bench-load")
    def submit_all() -> list:
        def one(i: int):
            return run_deployment(name, timeout=0, idempotency_key=f"load/{pool}/{i}",
                                  parameters={"run_id": "load", "storage_url": "x",
                                              "experiment": {}, "candidate": f"c{i}",
                                              "seed": i}).id

        with ThreadPoolExecutor(16) as ex:
            return list(ex.map(one, range(n)))

    started = time.monotonic()
    ids = submit_all()
    submit_s = time.monotonic() - started
    with get_client(sync_client=True) as client:
        t0 = time.monotonic()
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)),
                                     limit=len(ids))
        store.evaluated()
        store.beat_stamps()
        poll_s = time.monotonic() - t0
        assert len(runs) == n, len(runs)
        for fr in ids:
            client.set_flow_run_state(fr, Cancelled(), force=True)
    return {"submitted": n, "submit_s": submit_s, "per_s": n / submit_s, "poll_s": poll_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", default="tiny")
    ap.add_argument("--children", type=int, default=6)
    ap.add_argument("--load", type=int, default=100, help="no-op children to submit (0: none)")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--pool", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args.budget, args.children, args.pool)
    tmp = Path(tempfile.mkdtemp(prefix="darwin-bench-pool-"))
    (tmp / "prefect").mkdir()
    server, url = start_server(tmp / "prefect")
    env = {**os.environ, "PREFECT_API_URL": url, "PREFECT_HOME": str(tmp / "prefect"),
           "DARWIN_STORAGE_URL": str(tmp / "runs"), "DARWIN_WARM": "off",
           "PREFECT_WORKER_QUERY_SECONDS": os.environ.get("PREFECT_WORKER_QUERY_SECONDS", "2")}
    try:
        rows = {w: configuration(w, args, env, tmp) for w in (0, 1, 2)}
        load = load_test(args.load, env, tmp) if args.load else None
    finally:
        stop(server)
    per_min = {w: 60 * args.children / r["wall_s"] for w, r in rows.items()}
    print(f"{args.children} {args.budget} children per configuration, one slot per worker; "
          f"worker poll {env['PREFECT_WORKER_QUERY_SECONDS']} s")
    print("| configuration | wall s | children/min | child s (wall/children) | train s | "
          "eval s |\n| --- | --- | --- | --- | --- | --- |")
    for w, r in rows.items():
        label = {0: "in-process, 1 slot", 1: "pool, 1 worker", 2: "pool, 2 workers"}[w]
        print(f"| {label} | {r['wall_s']:.1f} | {per_min[w]:.1f} | "
              f"{r['wall_s'] / args.children:.1f} | {r['train_s']:.2f} | {r['eval_s']:.2f} |")
    print(f"two workers over one: {per_min[2] / per_min[1]:.2f}x children per minute")
    print(f"a child through the pool over in-process: "
          f"{rows[1]['wall_s'] / rows[0]['wall_s']:.2f}x its wall time "
          f"(+{(rows[1]['wall_s'] - rows[0]['wall_s']) / args.children:.1f} s a child)")
    if load:
        print(f"load: {load['submitted']} submissions in {load['submit_s']:.1f} s "
              f"({load['per_s']:.1f}/s from 16 threads); one watcher poll over all of them "
              f"{1000 * load['poll_s']:.0f} ms")


if __name__ == "__main__":
    main()
