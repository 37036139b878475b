"""The runs index: every run of a store with its status, best, change against the seed with its
noise, what mutated it, and a link to its report where one is drawn; a broken run is a row."""

from __future__ import annotations

import json

from darwin.reports.index import build_index
from tests.conftest import cli_env, run_darwin
from tests.reports import synthetic


def _runs(root):
    llm = {"llm": {"model": "qwen-7b", "endpoint": "http://gpu:8000/v1"}}
    old = synthetic.run(run_id="20260101-000000-tiny", llm=False)
    old.meta["environment"] = llm  # set, but no LLM made its children: not shown
    synthetic.write(old, root)
    young = synthetic.run(run_id="20260102-000000-tiny", seed=4, generations=1)
    young.meta["experiment"].update(mutator="auto", generations=5)
    young.meta["environment"] = llm
    synthetic.write(young, root)
    (root / "20260103-000000-tiny").mkdir()
    (root / "20260103-000000-tiny" / "run.json").write_text("{not json")


def test_the_index_lists_every_run(tmp_path):
    _runs(tmp_path / "runs")
    reports = tmp_path / "reports"
    (reports / "20260101-000000-tiny").mkdir(parents=True)
    (reports / "20260101-000000-tiny" / "report.html").write_text("drawn")
    page = build_index(str(tmp_path / "runs"), reports).read_text()
    broken, young, old = page.split("<tr>")[2:]  # newest first
    assert "20260103" in broken and "20260102" in young and "20260101" in old
    assert "unreadable" in broken and "cannot be read" in broken
    assert "crashed" in young and "crashed after generation 1 of 5" in young
    assert "auto: openai 5" in young  # what ran, not "auto"
    assert "qwen-7b at http://gpu:8000/v1" in young and "no report yet" in young
    assert 'href="./20260101-000000-tiny/report.html">20260101-000000-tiny</a>' in old
    assert 'href="./20260101-000000-tiny/report.html#c-' in old  # its best's section
    assert "%" in old and "± 2.02 %" in old and "within the noise" in old
    assert '<td>offline</td><td class="model">-</td>' in old and "qwen" not in old


def test_cli_index(tmp_path):
    _runs(tmp_path / "runs")
    env = cli_env(DARWIN_STORAGE_URL=str(tmp_path / "runs"))
    r = run_darwin(["report", "--index", "--out", str(tmp_path / "r"), "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["index"] == str(tmp_path / "r" / "index.html")
    r = run_darwin(["report", "--index", "20260101-000000-tiny"], env, timeout=120)
    assert r.returncode == 2 and "--index lists every run" in r.stderr


def test_a_run_records_its_model_and_server_never_the_key(monkeypatch):
    from darwin.engine.runs import llm_endpoint

    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret-key")
    monkeypatch.setenv("OPENAI_BASE_URL", "http://ada:hunter2@gpu.example:8000/v1?token=t0k")
    monkeypatch.setenv("DARWIN_LLM__MODEL", "qwen-7b")
    recorded = llm_endpoint()
    assert recorded == {"model": "qwen-7b", "endpoint": "http://gpu.example:8000/v1"}
