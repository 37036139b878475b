"""The HTML report from a stored run: what it holds, that untrusted text stays text, and that
a young or broken run renders what exists and says what is missing."""

from __future__ import annotations

import json
import re

import pytest

from darwin.memory.records import AskedRequest, RequestDecision, ReviewAnswer, ReviewRecord
from darwin.memory.store import RunStore
from darwin.reports.page import build_report
from tests.conftest import cli_env, run_darwin
from tests.reports import synthetic

ATTACK = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A synthetic run in a local store, with markup in everything the model or a child wrote."""
    data = synthetic.run(generations=2, children=4, crash_every=3)
    best = data.best
    data.candidates = [c.model_copy(update={"reasoning": f"{c.id} because {ATTACK}",
                                            "diff": f"+ print('{ATTACK}')\n"})
                       if c.id in data.lineage(best) else c for c in data.candidates]
    data.reviews[-1] = ReviewRecord(
        run_id=data.run_id, generation=2,
        requests=[AskedRequest(id="r1", key="k", kind="dataset", detail=ATTACK,
                               asked_by=[best])],
        answer=ReviewAnswer(decisions=[RequestDecision(request="r1", verdict="refuse",
                                                       comment=ATTACK)], note=ATTACK,
                            via="cli", reviewer="ada"))
    root = tmp_path_factory.mktemp("store")
    store = synthetic.write(data, root)
    report = build_report(store, root / "report")
    return data, root, report, report.path.read_text()


def test_the_page_holds_every_part(stored):
    data, _, report, page = stored
    for name in ("fitness", "lineage", "curves", "pareto", "time", "kinds"):
        assert report.figures[name].stat().st_size > 10_000
        assert re.search(rf'<figure id="{name}"><img src="data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}"',
                         page), name
    for c in data.candidates:  # the leaderboard
        assert f"<td>{c.id}</td>" in page
    assert f"Best program: {data.best}" in page
    for step in data.lineage(data.best):
        assert f"<h3>{step} " in page
    assert "ada" in page and "Requests and reviews" in page


def test_untrusted_text_is_shown_as_text(stored):
    _, _, _, page = stored
    assert "<script" not in page.lower() and "onerror=alert" not in page.replace(
        "onerror=alert(1)&gt;", "")
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page  # the reasoning
    assert page.count("&lt;script&gt;") >= 4  # reasoning, request, comment, note (and diffs)


def test_an_empty_run_renders_and_says_what_is_missing(tmp_path):
    store = RunStore(tmp_path, "young")
    store.create({"run_id": "young", "experiment": {"generations": 3}})
    report = build_report(store, tmp_path / "out")
    page = report.path.read_text()
    assert any("no generation is committed yet" in m for m in report.missing)
    assert "no generation is committed yet" in page and "No committed generation yet" in page
    assert len(report.figures) == 6


def test_a_run_whose_children_all_crashed(tmp_path):
    store = synthetic.write(synthetic.run(generations=1, children=3, crash_every=1), tmp_path)
    report = build_report(store, tmp_path / "out")
    assert "every child crashed: no child has a val loss" not in report.missing  # one repaired
    data = synthetic.run(generations=1, children=3, crash_every=1)
    data.candidates = [c for c in data.candidates if not c.repair_of]
    data.evaluations = [e for e in data.evaluations if "-r" not in e.candidate_id]
    data.generations[-1] = data.generations[-1].model_copy(update={
        "children": [c.id for c in data.candidates if c.id != "seed"]})
    store = synthetic.write(data, tmp_path / "all-crashed")
    report = build_report(store, tmp_path / "out2")
    assert "every child crashed: no child has a val loss" in report.missing
    assert "The best is the seed program itself" in report.path.read_text()


def test_cli_report_and_its_errors(stored, tmp_path):
    _, root, _, _ = stored
    env = cli_env(DARWIN_STORAGE_URL=str(root))
    r = run_darwin(["report", "--out", str(tmp_path / "r"), "--json"], env, timeout=120)
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout)
    assert made["report"] == str(tmp_path / "r" / "report.html") and len(made["figures"]) == 6
    r = run_darwin(["report", "no-such-run"], env, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "unknown run 'no-such-run'" in r.stderr
    (tmp_path / "file").write_text("")
    r = run_darwin(["report", "--out", str(tmp_path / "file")], env, timeout=120)
    assert r.returncode == 2 and "is a file" in r.stderr and "Traceback" not in r.stderr


def test_cli_compares_runs(tmp_path):
    synthetic.write(synthetic.run(run_id="20260101-llm"), tmp_path)
    synthetic.write(synthetic.run(seed=3, run_id="20260102-offline", llm=False), tmp_path)
    r = run_darwin(["report", "20260101-llm", "20260102-offline", "--out", str(tmp_path / "c"),
                    "--json"], cli_env(DARWIN_STORAGE_URL=str(tmp_path)), timeout=120)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "c" / "report.html").read_text()
    assert "20260101-llm vs 20260102-offline" in page and "data:image/png;base64," in page
    assert json.loads(r.stdout)["figures"]["compare"].endswith("compare.png")
