"""Pre-started sandboxes (issue "Speed"): a sandbox started ahead runs only our code until it is
released, then runs the program exactly as a cold one would, with its clock starting at the
release; a warm child scores exactly what a cold one scores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from darwin.engine.slots import slot_count, warm_pays
from darwin.errors import UserError
from darwin.evaluation.eval_client import prestart_scorer
from darwin.evaluation.scoring import score
from darwin.evaluation.training import prestart, runtime_dir, seed_program, train
from darwin.sandbox import LIB_DIR, OUT_DIR, PROGRAM_DIR, Mount, Outcome, SandboxSpec, Warm
from darwin.sandbox.base import READY_NAME, may_renice, process_tree
from tests.conftest import require_sandbox

# Says what it saw, when it started (our clock is the host's monotonic one: same machine) and
# whether torch was already imported when its first line ran.
PROBE = """
import json, os, sys, time
warm = "torch" in sys.modules
seen = {"argv": sys.argv, "path0": sys.path[0], "warm_env": sorted(k for k in os.environ
        if k.startswith("DARWIN_WARM")), "cpus": sorted(os.sched_getaffinity(0)),
        "torch_preloaded": warm, "out": sorted(os.listdir("/sandbox/out")),
        "policy": os.sched_getscheduler(0), "t": time.monotonic()}
time.sleep(0.5)
open("/sandbox/out/seen.json", "w").write(json.dumps(seen))
"""


def _spec(tmp: Path, deadline_s: float, warm: Warm | None) -> SandboxSpec:
    prog, out = tmp / "program", tmp / "out"
    for d in (prog, out):
        d.mkdir(mode=0o755)
        d.chmod(0o755)
    (prog / "train.py").write_text(PROBE)
    return SandboxSpec(argv=["python", f"{PROGRAM_DIR}/train.py", "--flag"],
                       mounts=[Mount(prog, PROGRAM_DIR), Mount(out, OUT_DIR, writable=True),
                               Mount(runtime_dir(), LIB_DIR)],
                       cwd=OUT_DIR, deadline_s=deadline_s, log_path=tmp / "log", warm=warm)


@pytest.mark.parametrize("backend", ["local", "docker"])
def test_a_held_sandbox_runs_the_program_only_when_released(backend, tmp_path):
    box = require_sandbox(backend)
    tmp_path.chmod(0o755)
    deadline = 4.0
    spec = _spec(tmp_path, deadline, Warm(imports=("torch",)))
    proc = box.start(spec)
    try:
        started = time.monotonic()
        ready = tmp_path / "out" / READY_NAME
        while not ready.exists():  # warm: torch imported by our code
            assert proc.alive(), (tmp_path / "log").read_text()[-2000:]
            assert time.monotonic() - started < 120, "never became warm"
            time.sleep(0.05)
        # Held, it takes only CPU nobody else wants (where we may undo that: CAP_SYS_NICE).
        policies = {os.sched_getscheduler(p) for p in process_tree(proc.root_pid())}
        assert (os.SCHED_IDLE in policies) == may_renice(), policies
        # Held past the deadline as counted from its start: it must not count yet.
        time.sleep(max(0.0, deadline + 0.5 - (time.monotonic() - started)))
        assert not (tmp_path / "out" / "seen.json").exists()  # nothing of the program ran
        core = sorted(os.sched_getaffinity(0))[-1]
        released = time.monotonic()
        assert proc.release([core])
        result = proc.wait()
    finally:
        proc.finish()
    assert result.outcome is Outcome.ok, (tmp_path / "log").read_text()[-2000:]
    assert time.monotonic() - started > deadline  # it lived longer than its deadline in all...
    assert result.wall_s < deadline  # ...but its clock started at the release
    seen = json.loads((tmp_path / "out" / "seen.json").read_text())
    assert seen["t"] >= released  # not a line of it before the release
    assert seen["argv"] == [f"{PROGRAM_DIR}/train.py", "--flag"]
    assert seen["path0"] == PROGRAM_DIR  # what `python train.py` sees
    assert seen["warm_env"] == [] and seen["out"] == []  # no trace of the warm-up left to it
    assert seen["torch_preloaded"] is True
    assert seen["cpus"] == [core]  # pinned at the release
    assert seen["policy"] == os.SCHED_OTHER  # and back to normal priority
    assert not list(Path(tmp_path).glob("darwin-ctl-*"))


def test_a_sandbox_that_died_while_held_gives_way_to_a_cold_start(sandbox, tiny, tmp_path):
    pre = prestart(seed_program(), tiny, 0, tmp_path / "w", sandbox)
    pre.proc.kill()  # as if its memory cap or anything else ended it before its turn
    result = train(seed_program(), tiny, 0, tmp_path / "w", sandbox, prestarted=pre)
    assert result.ok, result.log_tail()
    assert result.warm_s == 0.0 and result.tokens_served == tiny.tokens
    assert sorted(p.name for p in result.out_dir.iterdir()) == [
        "claims.json", "config.json", "model.py", "model.safetensors"]


def test_warm_and_cold_children_score_the_same(sandbox, tiny, tmp_path):
    cold = train(seed_program(), tiny, 3, tmp_path / "cold", sandbox, cpus=[0])
    pre = prestart(seed_program(), tiny, 3, tmp_path / "warm", sandbox)
    warm = train(seed_program(), tiny, 3, tmp_path / "warm", sandbox, cpus=[0], prestarted=pre)
    assert cold.ok and warm.ok, warm.log_tail()
    assert warm.warm_s > 0 and cold.warm_s == 0
    assert warm.tokens_served == cold.tokens_served == tiny.tokens
    cold_score = score(cold.out_dir, tiny, sandbox, tmp_path / "cold", cpus=[0])
    held = prestart_scorer(tmp_path / "warm", tiny, sandbox)
    warm_score = score(warm.out_dir, tiny, sandbox, tmp_path / "warm", cpus=[0],
                       prestarted=held)
    assert cold_score.ok and warm_score.ok, (cold_score.detail, warm_score.detail)
    assert warm_score.loss == cold_score.loss  # bit for bit: the same program, the same model
    assert warm_score.checks["verified"] and warm_score.checks["probes"] > 0
    assert not held.procs  # both used: A, then B


def test_an_unused_prestarted_scorer_leaves_nothing_running(sandbox, tiny, tmp_path):
    held = prestart_scorer(tmp_path / "w", tiny, sandbox)
    pids = [p.popen.pid for p in held.procs.values()]
    # The training left nothing to score: rejected before A, both processes stopped.
    (tmp_path / "empty").mkdir()
    s = score(tmp_path / "empty", tiny, sandbox, tmp_path / "w", prestarted=held)
    assert not s.ok and s.failure.value == "missing_output"
    for pid in pids:
        with pytest.raises(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reaped, not a zombie or a survivor
    assert not list((tmp_path / "w").glob("eval-*.log"))


def test_slots_beyond_the_machine_are_refused_in_one_line():
    assert slot_count("cpu", 1, 3072, cores=2, memory=24000) == 2
    assert slot_count("cpu", 1, 3072, cores=16, memory=8000) == 2  # memory-bound default
    assert slot_count("cuda", 1, 16384, cores=16, memory=128000) == 4
    assert slot_count("cpu", 1, 3072, 2, cores=2, memory=24000) == 2
    with pytest.raises(UserError, match=r"--slots 3: .* need 3 cores .* gives 2; use --slots 2"):
        slot_count("cpu", 1, 3072, 3, cores=2, memory=24000)
    with pytest.raises(UserError, match=r"--slots 2: .* 32768 MB .* 24000 MB; use --slots 1"):
        slot_count("cuda", 1, 16384, 2, cores=16, memory=24000)
    with pytest.raises(UserError, match="at least one"):
        slot_count("cpu", 1, 3072, 0, cores=2, memory=24000)


def test_darwin_run_refuses_too_many_slots_before_creating_anything(tmp_path):
    env = {**os.environ, "DARWIN_HOME": str(tmp_path / "home")}
    too_many = len(os.sched_getaffinity(0)) + 1
    r = subprocess.run([sys.executable, "-m", "darwin.cli", "run", "--budget", "tiny",
                        "--slots", str(too_many)], env=env, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and f"--slots {too_many}" in lines[0] and "use --slots" in lines[0]
    assert "Traceback" not in r.stderr and not (tmp_path / "home" / "runs").exists()


def test_auto_warms_where_a_core_or_the_gpu_is_free():
    assert warm_pays("auto", "cuda") and warm_pays("auto", "cpu", free_cores=1)
    assert not warm_pays("auto", "cpu", free_cores=0)  # every core trains a child...
    assert warm_pays("auto", "cpu", free_cores=0, idle_ok=True)  # ...unless it waits idle
    assert warm_pays("on", "cpu") and not warm_pays("off", "cuda")
