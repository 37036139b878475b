"""The HTML report from a stored run: what it holds, that untrusted text stays text, and that
a young or broken run renders what exists and says what is missing."""

from __future__ import annotations

import json
import math
import os
import re

import pytest

from darwin.memory.records import AskedRequest, RequestDecision, ReviewAnswer, ReviewRecord
from darwin.memory.store import RunStore
from darwin.reports.page import build_report
from tests.conftest import cli_env, run_darwin
from tests.reports import synthetic

ATTACK = '<script>alert("pwned")</script><img src=x onerror=alert(1)>'
# Run as code, either would set a flag the browser test reads (or fetch "x": a request).
BROWSER_ATTACK = ('<script>window.__pwned=1</script></script>'
                  '<img src=x onerror="window.__pwned=2">')


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A synthetic run in a local store, with markup in everything the model or a child wrote."""
    data = synthetic.run(generations=2, children=4, crash_every=3)
    best = data.best
    data.candidates = [c.model_copy(update={"reasoning": f"{c.id} because {ATTACK} {BROWSER_ATTACK}",
                                            "diff": f"+ print('{ATTACK}{BROWSER_ATTACK}')\n",
                                            "operator": f"op {BROWSER_ATTACK}"})
                       if c.id in data.lineage(best) else c for c in data.candidates]
    data.reviews[-1] = ReviewRecord(
        run_id=data.run_id, generation=2,
        requests=[AskedRequest(id="r1", key="k", kind="dataset", detail=ATTACK,
                               asked_by=[best])],
        answer=ReviewAnswer(decisions=[RequestDecision(request="r1", verdict="refuse",
                                                       comment=ATTACK)], note=ATTACK,
                            via="cli", reviewer="ada"))
    root = tmp_path_factory.mktemp("store")
    store = synthetic.write(data, root, code=lambda c: f"# {c.id}\n# {BROWSER_ATTACK}\n")
    report = build_report(store, root / "report")
    return data, root, report, report.path.read_text()


def test_the_page_holds_every_part(stored):
    data, _, report, page = stored
    for name in ("fitness", "lineage", "curves", "pareto", "time", "kinds"):
        assert report.figures[name].stat().st_size > 10_000  # every static picture is drawn
    for name in ("time",):  # inline as a picture; the others interactive (below)
        assert re.search(rf'<figure id="{name}"><img src="data:image/png;base64,[A-Za-z0-9+/=]{{1000,}}"',
                         page), name
    specs = json.loads(re.search(r'<script type="application/json" id="darwin-figures">(.*?)'
                                 r'</script>', page, re.S).group(1))
    assert set(specs) == {"fitness", "lineage", "curves", "pareto", "kinds"}
    for c in data.candidates:  # the leaderboard links each to its section
        assert f'<td><a href="#c-{c.id}">{c.id}</a></td>' in page
        assert '<section class="cand' in page and f'id="c-{c.id}"' in page
    assert f'Best program: <a href="#c-{data.best}">{data.best}</a>' in page
    for step in data.lineage(data.best):
        assert f'<h3><a href="#c-{step}">{step}</a> ' in page
    assert "ada" in page and "Requests and reviews" in page


def test_untrusted_text_is_shown_as_text(stored):
    _, _, _, page = stored
    # Our own three script elements (the figures' JSON, Plotly, the page's), and no other.
    assert page.lower().count("<script") == 3 and "onerror=alert" not in page.replace(
        "onerror=alert(1)&gt;", "")
    assert "<script>window" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(&#34;pwned&#34;)&lt;/script&gt;" in page  # the reasoning
    assert page.count("&lt;script&gt;") >= 4  # reasoning, request, comment, note (and diffs)


def test_an_empty_run_renders_and_says_what_is_missing(tmp_path):
    from darwin.engine import claim_run

    store = RunStore(tmp_path, "young")
    store.create({"run_id": "young", "experiment": {"generations": 3}})
    report = build_report(store, tmp_path / "out")
    page = report.path.read_text()
    assert any("no generation is committed yet" in m for m in report.missing)
    assert "no generation is committed yet" in page and "No committed generation yet" in page
    assert len(report.figures) == 6
    assert 'http-equiv="refresh"' not in page  # nobody works on it: nothing will change
    claim = claim_run(store)  # a live process works on the run: its page reloads itself
    try:
        page = build_report(store, tmp_path / "out").path.read_text()
    finally:
        claim.release()
    assert '<meta http-equiv="refresh" content="30">' in page and "reloads itself" in page


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


def _center(b, selector_js: str) -> tuple[float, float]:
    """The viewport centre of the element ``selector_js`` evaluates to, scrolled into view."""
    box = b.js(f"(() => {{ const e = {selector_js}; e.scrollIntoView({{block: 'center'}});"
               "const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
    return box[0], box[1]


def _point(plot: str, trace_name: str, cid: str) -> str:
    """JavaScript for candidate ``cid``'s marker in the named trace of a Plotly figure."""
    return (f"(() => {{ const gd = document.getElementById('plot-{plot}');"
            f"const t = gd.data.findIndex(d => d.name.startsWith({json.dumps(trace_name)}));"
            f"const i = gd.data[t].customdata.indexOf({json.dumps('c-' + cid)});"
            "return gd.querySelectorAll('.scatterlayer .trace')[t]"
            ".querySelectorAll('path.point')[i]; })()")


def _reach(start: str, edges: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        if (c := todo.pop()) not in seen:
            seen.add(c)
            todo += edges.get(c, ())
    return seen


def test_the_page_in_a_browser(stored, tmp_path):
    """Hover a point: its candidate; click it, a lineage node or a leaderboard row: its section;
    tables sort; nothing is fetched and nothing the run wrote executes."""
    from tests.reports.browser import Browser, chromium

    if chromium() is None:
        if os.environ.get("DARWIN_REQUIRE_BROWSER"):
            pytest.fail("DARWIN_REQUIRE_BROWSER is set but no chromium is installed")
        pytest.skip("no chromium here")
    data, _, report, _ = stored
    b = Browser()
    try:
        b.open(report.path)
        b.wait_for("document.querySelector('#plot-lineage .scatterlayer path.point')")
        kept = next(c.id for c in data.candidates if data.status(c.id) == "discarded")
        b.mouse("mouseMoved", *_center(b, _point("fitness", "discarded", kept)))
        b.wait_for("document.querySelector('#plot-fitness .hoverlayer')?.textContent"
                   f".includes({json.dumps(kept)})")
        shown = b.js("document.querySelector('#plot-fitness .hoverlayer').textContent")
        assert "val loss" in shown and "kind " in shown and "discarded" in shown, shown
        b.click(*_center(b, _point("fitness", "discarded", kept)))
        b.wait_for(f"location.hash === '#c-{kept}'")
        assert b.js(f"document.getElementById('c-{kept}').classList.contains('picked')")
        top = b.js(f"document.getElementById('c-{kept}').getBoundingClientRect().top")
        assert -5 < top < 200  # scrolled to it
        # The lineage: a node per candidate, labelled with the ids people type; click one.
        labels = b.js("[...document.querySelectorAll('#plot-lineage .textpoint')]"
                      ".map(t => t.textContent)")
        assert sorted(labels) == sorted(c.id for c in data.candidates)
        best = data.best
        # Hovering a node keeps its kin (ancestors, descendants) bright and dims the others.
        b.mouse("mouseMoved", *_center(b, _point("lineage", "scored", best)))
        bright = "(() => { const t = document.getElementById('plot-lineage').data.find(" \
                 "d => d.name.startsWith('scored')); return t.customdata.filter(" \
                 "(c, i) => (t.marker.opacity || [])[i] === 1); })()"
        b.wait_for(f"{bright}.length > 0")
        up = {c.id: set(c.parents) for c in data.candidates}
        down = {c.id: {k for k, ps in up.items() if c.id in ps} for c in data.candidates}
        kin = _reach(best, up) | _reach(best, down)
        assert set(b.js(bright)) == {f"c-{c}" for c in kin if data.fitness(c) is not None}
        b.click(*_center(b, _point("lineage", "scored", best)))
        b.wait_for(f"location.hash === '#c-{best}'")
        # A leaderboard row's link; then sort the table by val loss, both ways.
        b.click(*_center(b, "document.querySelector('#leaderboard + p + table a[href=\"#c-seed\"]')"))
        b.wait_for("location.hash === '#c-seed'")
        column = "[...document.querySelectorAll('table.sortable tbody tr')].map(r => r.cells[5].dataset.v)"
        b.js("document.querySelectorAll('table.sortable thead th')[5].click()")
        up = [float(v) if v else math.inf for v in b.js(column)]
        b.js("document.querySelectorAll('table.sortable thead th')[5].click()")
        down = [float(v) if v else math.inf for v in b.js(column)]
        assert up == sorted(up) and down == sorted(down, reverse=True) and up != down
        # The attack is on the page as text, and did nothing.
        text = b.js(f"document.getElementById('c-{best}').textContent")
        assert BROWSER_ATTACK in text
        assert b.js("window.__pwned") is None
        assert not b.named("Page.javascriptDialogOpening")
        assert not b.named("Runtime.exceptionThrown")
        fetched = [u for u in b.requests() if not u.startswith("data:")]
        assert fetched == [report.path.resolve().as_uri()], fetched
    finally:
        b.close()
