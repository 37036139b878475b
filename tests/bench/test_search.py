"""bench/search.py's pieces, in milliseconds: the statistics, the table, the verdict against the
tuned baseline, the figures of one run read from a real store, and the resume bookkeeping. The
bench itself runs by hand (`python bench/search.py --quick`)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    Member,
)
from darwin.memory.store import RunStore

_spec = importlib.util.spec_from_file_location(
    "bench_search", Path(__file__).parents[2] / "bench" / "search.py")
search = importlib.util.module_from_spec(_spec)
sys.modules["bench_search"] = search  # its dataclass looks its module up
_spec.loader.exec_module(search)


def test_the_95_interval_is_students_t():
    mean, half = search.ci95([1.0, 2.0, 3.0])
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    assert math.isnan(search.ci95([0.5])[1])
    assert search.ci95([1.0] * 40)[1] == 0.0  # many seeds: the normal quantile, no spread


def test_best_so_far_skips_failures_and_band_cuts_to_the_shortest():
    assert search.best_so_far([3.0, None, 2.5, float("nan"), 2.7, 2.0]) == [
        3.0, 3.0, 2.5, 2.5, 2.5, 2.0]
    n, mean, half = search.band([[3.0, 2.0, 1.0], [3.0, 2.0]])
    assert n == 2 and mean == [3.0, 2.0] and half == [0.0, 0.0]
    assert search.change(2.0, 2.0) == 0.0 and search.change(None, 2.0) is None


def _record(arm, seed, best, crashed=1, repaired=1, test=-0.01, mfu=None, cost=0.0):
    return {"arm": arm, "run_seed": seed, "best_change": best, "test_change": test,
            "mfu_change": mfu, "children": 12, "crashed": crashed, "repaired": repaired,
            "s_per_generation": 90.0, "llm_cost_usd": cost, "trainings": 20,
            "beyond_noise": best < -0.02, "curve": [2.4, 2.3], "seed_val_loss": 2.4,
            "noise": 0.01, "kinds": {"learning_rate": [2, 1], "hyperparameter": [3, 2]}}


def test_the_table_and_the_verdict_against_the_tuned_baseline():
    runs = {
        "hpo-tpe": [_record("hpo-tpe", s, b) for s, b in enumerate([-0.05, -0.06, -0.055])],
        "offline": [_record("offline", s, b) for s, b in enumerate([-0.08, -0.09, -0.085])],
        "random": [_record("random", s, b, crashed=0) for s, b in enumerate([-0.01, -0.07, 0.0])],
        "hpo-random": [_record("hpo-random", s, b) for s, b in enumerate([-0.03, -0.04, -0.035])],
    }
    rows = {r["arm"]: r for r in search.arm_rows(runs)}
    assert rows["offline"]["best_change"] == "-8.50 ± 1.24 %"
    assert rows["offline"]["crash_pct"] == pytest.approx(100 / 12)
    assert rows["offline"]["repaired_pct"] == 100.0 and rows["random"]["repaired_pct"] is None
    assert rows["offline"]["mfu_change"] == "–" and rows["offline"]["beyond_noise"] == 3
    verdicts = search.against_baseline(runs)
    assert verdicts[0].startswith("offline − hpo-tpe: -3.00 ± 0.00 points")
    assert verdicts[0].endswith("beats hpo-tpe beyond noise")
    assert verdicts[1].endswith("no difference from hpo-tpe beyond noise")
    assert verdicts[2].endswith("loses to hpo-tpe beyond noise")
    table = search.markdown(search.arm_rows(runs), verdicts, search.QUICK,
                            {"when": "today", "cpus": 2, "commit": "abc"})
    assert "--budget tiny --generations 1" in table and "commit abc" in table
    assert "| offline | 3 | 20.0 | -8.50 ± 1.24 % | -1.00 ± 0.00 % | – | 8 | 100 | 90 |" in table
    kinds = search.kinds_by_arm(runs)
    assert kinds["offline"] == "hyperparameter 6/9, learning_rate 3/6"
    assert "- offline: hyperparameter 6/9" in search.markdown([], [], {}, {"when": "", "cpus": 2,
                                                                          "commit": ""}, kinds)


def test_one_runs_figures_from_its_store(tmp_path):
    """A crashed child repaired, a cached training, a mutation that made no program."""
    store = RunStore(tmp_path / "runs", "r1")
    store.create({"experiment": {"seed": 4}})
    at = iter(range(100, 200))

    def cand(cid, gen, parents=(), kind=None, repair_of=None, cost=0.0):
        store.put_candidate(CandidateRecord(id=cid, run_id="r1", generation=gen,
                                            parents=list(parents), code_sha="x", kind=kind,
                                            repair_of=repair_of, cost_usd=cost,
                                            reasoning="lower the learning rate" if kind ==
                                            "learning_rate" else ""))

    def ev(cid, seed, status="ok", loss=None, mfu=None, cached=False):
        store.put_evaluation(EvaluationRecord(candidate_id=cid, code_sha="x", seed=seed,
                                              budget="tiny", status=status, val_loss=loss,
                                              mfu=mfu, cached=cached, scored_at=next(at)))

    cand("seed", 0)
    for s, loss in ((4, 2.40), (5, 2.42)):
        ev("seed", s, loss=loss, mfu=0.010)
    cand("g001-c00", 1, ["seed"], "learning_rate", cost=0.01)
    ev("g001-c00", 4, loss=2.30, mfu=0.012)
    ev("g001-c00", 5, loss=2.32, mfu=0.012, cached=True)
    cand("g001-c01", 1, ["seed"], "width_depth")
    ev("g001-c01", 4, status="oom")
    cand("g001-c01-r1", 1, ["g001-c01"], "width_depth", repair_of="g001-c01")
    ev("g001-c01-r1", 4, loss=2.50)
    cand("g001-c02", 1, ["seed"], "activation")
    ev("g001-c02", 4, status="no_child")
    for n, t in ((0, 1000.0), (1, 1090.0)):
        member = Member(candidate_id="seed", losses=[2.41])
        store.commit(GenerationRecord(run_id="r1", generation=n, population=[member],
                                      committed_at=t))
    summary = {"best": "g001-c00", "seed_val_loss": 2.41, "noise": 0.02,
               "perplexity_change": -0.1, "beyond_noise": True, "test_loss_best": 2.3,
               "test_loss_seed": 2.4}
    got = search.run_figures(store, summary)
    assert got["trainings"] == 5  # the cached training and the missing program cost nothing
    assert got["curve"] == [2.40, 2.40, 2.30, 2.30, 2.30]
    assert (got["children"], got["crashed"], got["repaired"]) == (3, 1, 1)
    assert got["mfu_change"] == pytest.approx(0.2) and got["s_per_generation"] == 90.0
    assert got["test_change"] == pytest.approx(math.exp(-0.1) - 1)
    assert got["llm_cost_usd"] == 0.01 and got["best_kind"] == "learning_rate"
    assert got["best_reasoning"] == "lower the learning rate"
    assert got["kinds"] == {"learning_rate": [1, 1], "width_depth": [1, 0]}


def test_resume_bookkeeping(tmp_path):
    jobs = search.plan(["offline", "hpo-tpe"], [0, 1], search.QUICK, tmp_path)
    assert [(j.arm, j.run_seed) for j in jobs] == [
        ("offline", 0), ("hpo-tpe", 0), ("offline", 1), ("hpo-tpe", 1)]
    assert len({j.home for j in jobs}) == 4  # a home each: no run answers from another's cache
    job = jobs[1]
    assert job.state() == "new"
    args = search.run_args(job, search.QUICK)
    assert args[:3] == ["run", "--budget", "tiny"] and args[-5:] == [
        "hpo-tpe", "--seed", "0", "--no-review", "--json"]
    assert len({j.store for j in jobs}) == 1  # one store: `darwin report` overlays them
    job.home.mkdir(parents=True)
    job.log.write_text("sandbox: local\nrun r-7 (new); store file:///x; resume with: …\n")
    assert job.state() == "new"  # named, but nothing stored yet: start again
    (job.store / "r-7").mkdir(parents=True)
    (job.store / "r-7" / "run.json").write_text("{}")
    assert job.state() == "resume"
    assert search.run_args(job, search.QUICK) == ["run", "--resume", "r-7", "--no-review",
                                                  "--json"]
    job.done_file.write_text(json.dumps({"arm": "hpo-tpe"}))
    assert job.state() == "done"
    # Another setting never reuses these runs.
    assert search.plan(["hpo-tpe"], [0], search.DEFAULT, tmp_path)[0].state() == "new"


def test_an_unknown_arm_is_a_clear_error(capsys):
    assert search.main(["--arms", "offline,genius"]) == 2
    assert "unknown arm(s) genius" in capsys.readouterr().err
