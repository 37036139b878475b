"""`darwin report`: a run's figures as PNGs and one self-contained HTML page (figures inline,
the leaderboard, the best program and its diff against the seed, highlighted, the reasoning of
every step of its lineage, the requests and reviews, the settings and the environment).

Reasoning, code, claims and logs are untrusted (an LLM or a child wrote them): the template
autoescapes everything; only our own markup (Pygments' escaped highlighting, our PNGs as data
URIs) is marked safe.
"""

from __future__ import annotations

import base64
import difflib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from markupsafe import Markup

from darwin.engine import SEED_ID
from darwin.memory import RunStore, StoreError
from darwin.reports.data import RunData
from darwin.reports.index import llm_line, mutators_ran
from darwin.reports.jinja import templates as _templates
from darwin.reports.views import record_code

PAGE = "report.html"


@dataclass
class Report:
    path: Path  # the HTML page
    figures: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)  # what the run does not have yet

    def to_json(self) -> dict:
        return {"report": str(self.path), "figures": {k: str(v) for k, v in self.figures.items()},
                "missing": self.missing}


def report_dir(run_ids: list[str]) -> Path:
    """Where reports go by default: $DARWIN_HOME/reports/RUN (or compare-RUN1-RUN2...)."""
    from darwin.settings import get_settings

    name = run_ids[0] if len(run_ids) == 1 else "compare-" + "-".join(run_ids)
    return get_settings().home / "reports" / name[:200]


def _highlight(text: str, lexer: str) -> Markup:
    """Pygments' HTML (it escapes what it is given), or escaped plain text."""
    from pygments import highlight
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import get_lexer_by_name

    return Markup(highlight(text, get_lexer_by_name(lexer), HtmlFormatter(cssclass="hl")))


def _css() -> Markup:
    from pygments.formatters import HtmlFormatter

    return Markup(HtmlFormatter(style="default").get_style_defs(".hl"))


def _data_uri(png: bytes) -> Markup:
    return Markup(f"data:image/png;base64,{base64.b64encode(png).decode()}")


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def render_figures(data: RunData, out: Path) -> dict[str, tuple[str, bytes]]:
    """Draw every figure into ``out``/<name>.png: name -> (title, png)."""
    from darwin.reports.plots import FIGURES, png

    drawn = {}
    for name, (title, draw) in FIGURES.items():
        fig = draw(data)
        data_png = png(fig)
        fig.clear()
        (out / f"{name}.png").write_bytes(data_png)
        drawn[name] = (title, data_png)
    return drawn


def missing_parts(data: RunData) -> list[str]:
    missing = []
    planned = data.experiment.get("generations")
    if not data.generations:
        missing.append("no generation is committed yet (the seed is still being measured, or "
                       "the run stopped before): fitness, lineage and timing show what exists")
    elif data.as_of is not None:
        missing.append(f"this is the run as it was right after generation {data.as_of} was "
                       "committed: what came later is left out")
    elif planned is not None and data.generations[-1].generation < planned:
        missing.append(f"generation {data.generations[-1].generation} of {planned} is the last "
                       "committed: the run is going on, or stopped (resume it with darwin run "
                       f"--resume {data.run_id})")
    scored = [c for c in data.candidates if c.id != SEED_ID and data.fitness(c.id) is not None]
    children = [c for c in data.candidates if c.id != SEED_ID]
    if children and not scored:
        missing.append("every child crashed: no child has a val loss")
    if data.best is not None and data.best not in data.finals and data.as_of is None:
        missing.append("no test-split result yet (measured when the run ends)")
    if data.evaluations and not any(e.curve for e in data.evaluations):
        missing.append("no loss curves: no program printed lines like `iter 10: loss 2.5` (or "
                       "the run was made by a DARWIN that did not read them)")
    if not data.meta.get("environment"):
        missing.append("the environment was not recorded (a run started by an older DARWIN)")
    return missing


INTERACTIVE = {"fitness": "Fitness per generation", "lineage": "Lineage",
               "curves": "Training-loss curves", "pareto": "Validation loss against MFU",
               "kinds": "Kinds of change"}
REFRESH_S = 30  # how often a running run's page reloads itself


def build_report(store: RunStore, out: Path, *, index: str | None = None) -> Report:
    """Write ``out``/report.html and the PNGs of ``store``'s run; what is missing is said on
    the page (and returned), never raised. ``index``: a link to the runs index, if any."""
    from darwin.reports import interactive
    from darwin.reports.sections import candidate_sections
    from darwin.reports.views import leaderboard_rows, stored_code

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = RunData.load(store)
    figures = render_figures(data, out)
    missing = missing_parts(data)
    best = data.best
    seed_code = stored_code(store, SEED_ID)
    best_code = stored_code(store, best)
    if best and best_code is None:
        missing.append(f"the program of {best} is missing from the store")
    diff = "".join(difflib.unified_diff(
        (seed_code or "").splitlines(keepends=True), (best_code or "").splitlines(keepends=True),
        "seed/train.py", f"{best}/train.py")) if best and best != SEED_ID else ""
    leaderboard = leaderboard_rows(store) if data.generations else []
    order = [r["candidate"] for r in leaderboard] or [c.id for c in data.candidates]
    plots = interactive.figures(data)
    scripts = [interactive.plotly_js(), interactive.page_js()]
    page = _templates().get_template("report.html.j2").render(
        title=f"DARWIN report: {data.run_id}" + (
            f" as of generation {data.as_of}" if data.as_of is not None else ""),
        run_id=data.run_id, generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        css=_css(), summary=_status_row(store, data) + _summary(data), missing=missing,
        plots=[(name, title) for name, title in INTERACTIVE.items() if name in plots],
        figures=[(name, title, _data_uri(png)) for name, (title, png) in figures.items()
                 if name not in plots],
        plot_specs=interactive.embedded_json(plots),
        plotly_js=Markup(scripts[0]), page_js=Markup(scripts[1]),
        script_hashes=Markup(" ".join(interactive.script_hash(s) for s in scripts)),
        refresh=REFRESH_S if data.as_of is None and _running(store) else None, index=index,
        leaderboard=leaderboard, anchor=interactive.anchor, num=_num,
        sections=candidate_sections(data, order, lambda c: _code(store, data, c), _highlight),
        best=best, best_code=_highlight(best_code, "python") if best_code else None,
        diff=_highlight(diff, "diff") if diff else None,
        lineage=_lineage(data), reviews=_reviews(data),
        settings=_settings(data),
        environment=_environment(data), finals=sorted(data.finals.values(),
                                                      key=lambda f: f.get("candidate", "")),
        fmt=_fmt,
    )
    path = out / PAGE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(page)
    tmp.replace(path)  # a reader (a browser reloading) never sees half a page
    return Report(path, {name: out / f"{name}.png" for name in figures}, missing)


def _code(store: RunStore, data: RunData, cid: str) -> str | None:
    """A candidate's program from the record already read (one read, not two)."""
    return record_code(store, data.by_id.get(cid))


def _running(store: RunStore) -> bool:
    """Whether a process works on the run now (its page then reloads itself)."""
    from darwin.engine import run_status

    try:
        return run_status(store).state in ("running", "paused")
    except Exception:  # noqa: BLE001 - a status that cannot be read is not worth a report
        return False


def _num(x) -> str:
    """A sortable cell's value: a number, or empty (sorted last)."""
    return f"{x:.6g}" if isinstance(x, (int, float)) and math.isfinite(x) else ""


def write_run_report(store: RunStore, say: Callable[[str], None]) -> Report | None:
    """The run's report in its default folder, (re)drawn, and the runs index beside it (for a
    local store: on S3 the index would read every run at every generation; `darwin report
    --index` draws it there); None when it could not be drawn, which ``say`` tells (the run
    itself is stored: the page is only a view of it, never worth failing a generation)."""
    from darwin.reports.index import INDEX, build_index

    target = report_dir([store.run_id])
    try:
        local = getattr(store, "local", False)
        made = build_report(store, target, index=f"../{INDEX}" if local or (
            target.parent / INDEX).is_file() else None)
        if local:
            build_index(str(Path(store.root).parent), target.parent)
    except Exception as e:  # noqa: BLE001
        say(f"the report of {store.run_id} could not be drawn: {type(e).__name__}: {e} "
            f"(try: darwin report {store.run_id})")
        return None
    return made


def build_comparison(stores: list[RunStore], out: Path) -> Report:
    """Several runs on one page: their best-so-far curves overlaid, each with its noise band."""
    from darwin.reports.plots import compare_figure, png

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs = [RunData.load(s) for s in stores]
    fig = compare_figure(runs)
    image = png(fig)
    (out / "compare.png").write_bytes(image)
    missing = [f"{d.run_id}: no committed generation yet" for d in runs if not d.generations]
    rows = [{"run": d.run_id, "mutator": d.experiment.get("mutator"),
             "memory": d.experiment.get("memory"), "budget": d.experiment.get("budget"),
             "generations": d.generations[-1].generation if d.generations else None,
             "seed": d.seed_loss, "noise": d.noise, "best": d.best,
             "best_loss": d.fitness(d.best) if d.best else None} for d in runs]
    page = _templates().get_template("compare.html.j2").render(
        title="DARWIN: " + " vs ".join(d.run_id for d in runs),
        generated=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rows=rows, missing=missing,
        image=_data_uri(image), fmt=_fmt)
    path = out / PAGE
    path.write_text(page)
    return Report(path, {"compare": out / "compare.png"}, missing)


def _status_row(store: RunStore, data: RunData) -> list[tuple[str, str]]:
    """Where the run stands now (not for a past view of it: --at shows the records then)."""
    from darwin.engine import run_status

    if data.as_of is not None:
        return []
    try:
        return [("status", run_status(store).line)]
    except StoreError:
        return [("status", "unknown: the store could not be read")]


def _summary(data: RunData) -> list[tuple[str, str]]:
    exp = data.experiment
    rows = [("run", data.run_id),
            ("budget / mutator", f"{exp.get('budget', '-')} / {exp.get('mutator', '-')}"
                                 f" (what made the children: {mutators_ran(data.candidates)})"),
            ("generations committed", f"{data.generations[-1].generation if data.generations else '-'}"
                                      + (f" of {exp['generations']}" if exp.get("generations")
                                         is not None else "")),
            ("candidates", str(len(data.candidates))),
            ("seed val loss", f"{_fmt(data.seed_loss)} ± {_fmt(data.noise)} (2σ over "
                              f"{len(data.losses(SEED_ID))} seeds)")]
    if data.best is not None and data.seed_loss is not None:
        best = data.generations[-1].population[0]
        change = math.exp(min(best.fitness - data.seed_loss, 709.0)) - 1
        min_runs = max(data.generations[-1].min_runs, int(exp.get("min_runs", 1)))
        measured = len(best.losses) >= min_runs
        beyond = measured and data.seed_loss - best.fitness > data.noise
        verdict = ("(beyond the noise)" if beyond else "(within the noise)") if measured else (
            f"(fewer than the {min_runs} seeds a claim needs: not beyond the noise)")
        rows += [("best", f"{data.best}: val loss {_fmt(best.fitness)} over {len(best.losses)} "
                          f"seed(s), perplexity {100 * change:+.2f}% vs the seed " + verdict)]
    test_best = data.finals.get(data.best or "", {}).get("test_loss")
    test_seed = data.finals.get(SEED_ID, {}).get("test_loss")
    if test_best is not None and test_seed is not None:
        rows.append(("test split (never used for selection)",
                     f"{_fmt(test_best)} vs seed {_fmt(test_seed)}, perplexity "
                     f"{100 * (math.exp(min(test_best - test_seed, 709.0)) - 1):+.2f}%"))
    if (model := llm_line(data.meta)) and any(c.llm_latency_s for c in data.candidates):
        rows.append(("LLM model", model))
    cost = sum(c.cost_usd for c in data.candidates)
    tokens = sum(c.input_tokens + c.output_tokens for c in data.candidates)
    if tokens:
        rows.append(("LLM", f"{sum(len(c.llm_latency_s) for c in data.candidates)} calls, "
                            f"{tokens} tokens, ${cost:.4f} (estimated)"))
    return rows


def _lineage(data: RunData) -> list[dict]:
    """Every step from the seed to the best: what changed, why (the model's words), and what
    it did to the val loss."""
    steps = []
    previous = None
    for cid in data.lineage(data.best):
        rec = data.by_id.get(cid)
        if rec is None:
            continue
        loss = data.fitness(cid)
        before = data.fitness(previous) if previous else None
        steps.append({
            "id": cid, "generation": rec.generation, "kind": rec.kind or "-",
            "how": " / ".join(x for x in (rec.mutator, rec.mode, rec.operator) if x),
            "parents": rec.parents, "reasoning": rec.reasoning, "notes": rec.notes,
            "loss": loss, "effect": (loss - before) if loss is not None and before is not None
            else None, "diff": _highlight(rec.diff, "diff") if rec.diff else None})
        previous = cid
    return steps


def _reviews(data: RunData) -> list[dict]:
    out = []
    for r in data.reviews:
        verdicts = {d.request: d for d in (r.answer.decisions if r.answer else [])}
        out.append({
            "generation": r.generation, "gate": r.gate,
            "via": r.answer.via if r.answer else "not answered",
            "reviewer": r.answer.reviewer if r.answer else "",
            "defaults": r.defaults_applied, "note": r.answer.note if r.answer else "",
            "veto": r.answer.veto if r.answer else [], "pin": r.answer.pin if r.answer else [],
            "stop": bool(r.answer and r.answer.stop),
            "remaining": r.answer.remaining if r.answer else None,
            "requests": [{"id": q.id, "kind": q.kind, "detail": q.detail,
                          "asked_by": ", ".join(q.asked_by),
                          "verdict": verdicts[q.id].verdict if q.id in verdicts else "-",
                          "comment": verdicts[q.id].comment if q.id in verdicts else "",
                          "granted": _granted(r.granted[q.id]) if q.id in r.granted else ""}
                         for q in r.requests],
            "rejected": r.rejected})
    return out


def _settings(data: RunData) -> list[tuple[str, str]]:
    """The experiment's settings as a person reads them: no Python None, no raw JSON."""
    rows = []
    for k, v in sorted(data.experiment.items()):
        if v is None:
            v = "-"
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif isinstance(v, (list, tuple)):
            v = ", ".join(str(x) for x in v) or "-"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}: {b}" for a, b in v.items()) or "-"
        rows.append((k, str(v)))
    return rows


def _granted(value) -> str:
    """A value as words ("dataset: tinystories, files: 2"), not JSON or Python's None: what a
    review granted, an environment's entry."""
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_granted(v)}" for k, v in value.items()) or "-"
    if isinstance(value, (list, tuple)):
        return ", ".join(_granted(v) for v in value) or "-"
    if value is None or value is True:
        return "yes" if value else "-"
    return "no" if value is False else str(value)


def _environment(data: RunData) -> list[tuple[str, str]]:
    env = data.meta.get("environment") or {}
    rows = [(k, _granted(v)) for k, v in env.items() if k not in ("packages", "llm")]
    if llm_line(data.meta):
        rows.insert(0, ("LLM set (model at endpoint)", llm_line(data.meta)))
    rows += [(f"package {k}", "not installed" if v is None else str(v))
             for k, v in (env.get("packages") or {}).items()]
    if "darwin" in data.meta:
        rows.insert(0, ("darwin", str(data.meta["darwin"])))
    return rows

