"""The report's interactive figures: Plotly figure specs (plain JSON, no Python plotting) built
from a run's records, and what the page needs to embed them safely.

Hovering a point names the candidate (id, val loss over its runs, kind, operator, fate); its
``customdata`` is the anchor of the candidate's section, which a click scrolls to. Every string
that a model or a child wrote is HTML-escaped here (Plotly reads a few tags in hover text), and
the whole spec is embedded as JSON with ``<``, ``>`` and ``&`` escaped, inside a script element
of type application/json that the browser never runs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import math
import re
from functools import cache

from markupsafe import Markup

from darwin.engine import SEED_ID
from darwin.reports.data import CRASHED, DISCARDED, KEPT, REPAIRED, RunData

GREY, BLACK, PURPLE, SKY, VERMILLION, BLUE = ("#999999", "#000000", "#CC79A7", "#56B4E9",
                                              "#D55E00", "#0072B2")
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442")
FATES = {  # colour, Plotly marker symbol, legend words (as in plots.STYLE)
    KEPT: (BLUE, "circle", "kept (entered the population)"),
    DISCARDED: ("#E69F00", "square", "discarded"),
    REPAIRED: ("#009E73", "diamond", "repaired, then scored"),
    CRASHED: (VERMILLION, "x", "crashed (no loss: drawn at the top)"),
}
LOSS = "validation loss (nats / token)"


def anchor(cid: str) -> str:
    """The id of a candidate's section on the page (ids are ours, but never trust a name)."""
    return "c-" + re.sub(r"[^A-Za-z0-9_-]", "_", cid)


def _t(text) -> str:
    return html.escape(str(text), quote=False)


def hover(data: RunData, cid: str) -> str:
    """What hovering a candidate shows."""
    rec = data.by_id.get(cid)
    losses = data.losses(cid)
    if losses:
        loss = f"val loss {data.fitness(cid):.4f}" + (
            f", mean of {len(losses)} runs ({min(losses):.4f} to {max(losses):.4f})"
            if len(losses) > 1 else " (1 run)")
    else:
        loss = "no val loss (crashed)"
    parts = [f"<b>{_t(cid)}</b>", loss]
    if rec is not None:
        how = " · ".join(_t(x) for x in (f"kind {rec.kind}" if rec.kind else "",
                                         f"operator {rec.operator or rec.mode}"
                                         if rec.operator or rec.mode else "") if x)
        if how:
            parts.append(how)
        parts.append(f"generation {rec.generation}" + (
            f", from {_t(rec.parents[0])}" if rec.parents else ""))
    parts.append(fate_words(data, cid))
    return "<br>".join(parts)


def fate_words(data: RunData, cid: str) -> str:
    """What became of a candidate, in words: kept now, kept then displaced, promoted or only
    filling an empty slot, discarded, repaired, crashed."""
    fate = data.status(cid)
    if fate != KEPT:
        return FATES[fate][2]
    how = next((("promoted (displaced a member)" if cid in g.promoted else "filled an empty slot")
                for g in data.generations if cid in g.promoted or cid in g.filled), "kept")
    return f"{how}; {'in the population now' if cid in data.members_now() else 'displaced later'}"


def _points(data: RunData, ids: list[str], xy: dict, **marker) -> dict:
    return {"type": "scatter", "mode": "markers", "x": [xy[c][0] for c in ids],
            "y": [xy[c][1] for c in ids], "hovertext": [hover(data, c) for c in ids],
            "hoverinfo": "text", "customdata": [anchor(c) for c in ids], "marker": marker}


def _band(data: RunData, x0: float, x1: float) -> list[dict]:
    """The seed's noise band as a filled trace (so that it has a legend entry)."""
    seed, noise = data.seed_loss, data.noise
    if seed is None:
        return []
    return [{"type": "scatter", "x": [x0, x1, x1, x0, x0],
             "y": [seed - noise, seed - noise, seed + noise, seed + noise, seed - noise],
             "fill": "toself", "fillcolor": "rgba(153,153,153,0.25)", "line": {"width": 0},
             "mode": "lines", "hoverinfo": "skip",
             "name": f"seed {seed:.3f} ± noise (2σ = {noise:.4f})"}]


def _layout(title: str, x: str, y: str, **extra) -> dict:
    return {"title": {"text": title, "font": {"size": 14}}, "xaxis": {"title": {"text": x}},
            "yaxis": {"title": {"text": y}}, "hovermode": "closest", "height": 460,
            "margin": {"l": 70, "r": 20, "t": 50, "b": 50}, "legend": {"font": {"size": 11}},
            **extra}


def _jitter(i: int, n: int) -> float:
    return 0.0 if n <= 1 else -0.25 + 0.5 * i / (n - 1)


def fitness(data: RunData) -> dict:
    by_gen: dict[int, list[str]] = {}
    for c in sorted(data.candidates, key=lambda c: c.id):
        by_gen.setdefault(c.generation, []).append(c.id)
    xy = {cid: (g + _jitter(i, len(ids)), data.fitness(cid))
          for g, ids in by_gen.items() for i, cid in enumerate(ids)}
    losses = [y for _, y in xy.values() if y is not None]
    top = max(losses) + 0.08 * (max(losses) - min(losses) + 1e-3) if losses else 1.0
    xy = {c: (x, top if y is None else y) for c, (x, y) in xy.items()}
    last = max(by_gen, default=0)
    traces = _band(data, -0.5, last + 0.5)
    now = data.members_now()
    for fate, (colour, symbol, words) in FATES.items():
        ids = [c for c in xy if data.status(c) == fate]
        if fate == KEPT:  # those still in the population apart from those displaced later
            dropped = [c for c in ids if c not in now]
            ids, words = [c for c in ids if c in now], "in the population now"
            if dropped:
                traces.append({**_points(data, dropped, xy, color="white", symbol=symbol, size=9,
                                         line={"color": colour, "width": 1.5}),
                               "name": f"kept, displaced later ({len(dropped)})"})
        if ids:
            traces.append({**_points(data, ids, xy, color=colour, symbol=symbol, size=9,
                                     line={"color": "white", "width": 0.5}),
                           "name": f"{words} ({len(ids)})"})
    curve = data.best_so_far()
    if curve:
        curve = [*curve, (curve[-1][0] + 0.45, curve[-1][1])]
        traces.append({"type": "scatter", "mode": "lines", "x": [g for g, _ in curve],
                       "y": [v for _, v in curve], "line": {"shape": "hv", "color": BLACK},
                       "name": "best so far", "hoverinfo": "y"})
    chain = [c for c in data.lineage(data.best) if data.fitness(c) is not None]
    if len(chain) > 1:
        traces.append({**_points(data, chain, xy, size=16, color="rgba(0,0,0,0)",
                                 line={"color": PURPLE, "width": 2}),
                       "mode": "lines+markers", "line": {"color": PURPLE, "width": 2},
                       "name": f"lineage of the best ({_t(data.best)})"})
    return {"data": traces, "layout": _layout(
        "Fitness per generation (lower is better): hover a point, click for its section",
        "generation", f"{LOSS}, mean over seeds", xaxis={"title": {"text": "generation"},
                                                         "dtick": 1})}


def lineage(data: RunData) -> dict:
    from darwin.reports.plots import _tree_positions, _widest

    pos = _tree_positions(data)
    ancestry = set(data.lineage(data.best))
    styles = {"target": (GREY, "solid", 1, "target parent"),
              "proposer": (SKY, "dash", 1, "proposer parent (cross-agent)"),
              "repair": (VERMILLION, "dot", 1.5, "repair of a crash"),
              "best": (BLACK, "solid", 3, "the best's ancestry")}
    edges: dict[str, tuple[list, list]] = {k: ([], []) for k in styles}
    for c in data.candidates:
        for k, parent in enumerate(c.parents):
            if parent not in pos:
                continue
            kind = "repair" if c.repair_of == parent else ("target" if k == 0 else "proposer")
            if kind == "target" and c.id in ancestry and parent in ancestry:
                kind = "best"
            xs, ys = edges[kind]
            for x, y in _edge(pos[parent], pos[c.id]):
                xs.append(x)
                ys.append(y)
            xs.append(None)
            ys.append(None)
    traces = [{"type": "scatter", "mode": "lines", "x": xs, "y": ys, "hoverinfo": "skip",
               "line": {"color": colour, "dash": dash, "width": width}, "name": words}
              for kind, (colour, dash, width, words) in styles.items()
              for xs, ys in [edges[kind]] if xs]
    scored = [c.id for c in data.candidates if data.fitness(c.id) is not None]
    crashed = [c.id for c in data.candidates if data.fitness(c.id) is None]
    labels = len(pos) <= 60
    if scored:
        traces.append({**_points(data, scored, pos, size=13, color=[data.fitness(c) for c in scored],
                                 colorscale="Viridis", showscale=True,
                                 colorbar={"title": {"text": "val loss"}, "len": 0.8},
                                 line={"color": [BLACK if c in ancestry else "white"
                                                 for c in scored],
                                       "width": [2.5 if c in ancestry else 0.5 for c in scored]}),
                       "name": "scored (colour: val loss, darker is better)",
                       "mode": "markers+text" if labels else "markers",
                       "text": scored if labels else None, "textposition": "top center",
                       "textfont": {"size": 9}})
    if crashed:
        traces.append({**_points(data, crashed, pos, size=11, color=GREY, symbol="x"),
                       "name": "crashed", "mode": "markers+text" if labels else "markers",
                       "text": crashed if labels else None, "textposition": "top center",
                       "textfont": {"size": 9, "color": "#777"}})
    height = max(420, min(1100, 120 + 46 * _widest(data)))
    # Hovering a node lights up its ancestors and descendants (page.js): who made whom.
    family = {anchor(c.id): [anchor(p) for p in c.parents if p in pos] for c in data.candidates}
    return {"family": family, "data": traces, "layout": _layout(
        "Lineage: who was made from whom (drag to pan, scroll or box to zoom; click a node)",
        "generation", "candidates of the generation, best first", height=height,
        xaxis={"title": {"text": "generation"}, "dtick": 1},
        yaxis={"autorange": "reversed", "showticklabels": False, "zeroline": False,
               "title": {"text": "candidates of the generation, best first"}},
        margin={"l": 70, "r": 20, "t": 95, "b": 50},
        legend={"orientation": "h", "x": 0, "y": 1.02, "yanchor": "bottom",
                "font": {"size": 11}})}


def _edge(a: tuple[float, float], b: tuple[float, float]) -> list[tuple[float, float]]:
    """An edge's points: straight between neighbouring generations; bowed (a quadratic curve
    half a row below) when it skips one, so it never runs through the nodes between."""
    (x0, y0), (x1, y1) = a, b
    if abs(x1 - x0) <= 1.01:
        return [a, b]
    cx, cy = (x0 + x1) / 2, max(y0, y1) + 0.6  # the y axis is reversed: larger is lower
    return [((1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t ** 2 * x1,
             (1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t ** 2 * y1)
            for t in (i / 16 for i in range(17))]


def pareto(data: RunData) -> dict | None:
    from darwin.reports.plots import _front

    pts = {c.id: (100 * m, f) for c in data.candidates
           if (f := data.fitness(c.id)) is not None and (m := data.mfu(c.id)) is not None}
    if not pts:
        return None
    ids = list(pts)
    xs = [p[0] for p in pts.values()]
    traces = _band(data, min(xs), max(xs))
    traces.append({**_points(data, ids, pts, color=SKY, size=9, line={"color": BLUE, "width": 1}),
                   "name": f"candidates ({len(ids)})"})
    front = sorted(_front(pts), key=lambda c: pts[c][0])
    traces.append({**_points(data, front, pts, color=VERMILLION, size=10),
                   "mode": "lines+markers", "line": {"shape": "vh", "color": VERMILLION},
                   "name": f"Pareto front ({len(front)})"})
    return {"data": traces, "layout": _layout(
        "Validation loss against MFU (the front: no other candidate is better at both)",
        "model FLOPs utilisation (%, mean over seeds)", f"{LOSS}, mean over seeds")}


def curves(data: RunData) -> dict | None:
    from darwin.reports.plots import top_candidates

    traces = []
    for i, cid in enumerate(top_candidates(data, 6)):
        run = data.first_run(cid)
        if run is None or not run.curve:
            continue
        colour = BLACK if cid == SEED_ID else PALETTE[i % len(PALETTE)]
        traces.append({"type": "scatter", "mode": "lines", "x": [p[1] for p in run.curve],
                       "y": [p[2] for p in run.curve], "name": _t(cid),
                       "line": {"color": colour, "dash": "dash" if cid == SEED_ID else "solid"},
                       "customdata": [anchor(cid)] * len(run.curve),
                       "hovertext": [f"<b>{_t(cid)}</b><br>step {p[0]}, {p[1]:.1f} s<br>"
                                     f"loss {p[2]:.4f} (printed by the program)"
                                     for p in run.curve], "hoverinfo": "text"})
    if not traces:
        return None
    return {"data": traces, "layout": _layout(
        "Training loss as the program printed it (untrusted), by our clock",
        "seconds since training started (stamped as each line arrived)",
        "training loss (nats / token), as printed")}


def kinds(data: RunData) -> dict | None:
    """Per kind of change: its mean effect against the parent with a 95 % interval; hover for
    how often it was tried and crashed."""
    from darwin.reports.plots import kind_stats

    every = kind_stats(data)
    stats = [s for s in every if s.mean is not None]
    if not stats:
        return None
    names = [f"{s.kind.value} (tried {s.tried})" for s in stats]
    crashed = [s for s in every if s.mean is None]
    traces = []
    if data.noise:
        traces.append({"type": "scatter", "x": [-data.noise, data.noise, data.noise, -data.noise,
                                                -data.noise],
                       "y": [names[0], names[0], names[-1], names[-1], names[0]],
                       "fill": "toself", "fillcolor": "rgba(153,153,153,0.25)", "mode": "lines",
                       "line": {"width": 0}, "hoverinfo": "skip", "name": "± noise (2σ of the seed)"})
    traces.append({
        "type": "scatter", "mode": "markers", "x": [s.mean for s in stats], "y": names,
        "error_x": {"type": "data", "array": [s.half_width or 0.0 for s in stats]},
        "marker": {"color": BLUE, "size": 10}, "name": "mean effect, 95 % interval",
        "hoverinfo": "text", "hovertext": [
            f"<b>{_t(s.kind.value)}</b><br>tried {s.tried}, crashed {s.crashed} "
            f"({100 * s.crashed / s.tried:.0f} %)<br>mean change {s.mean:+.4f}"
            + (f" ± {s.half_width:.4f}" if s.half_width is not None else " (one try)")
            + ("<br>helped" if s.mean < 0 else "<br>hurt") for s in stats]})
    if crashed:
        traces.append({"type": "scatter", "mode": "markers", "x": [0.0] * len(crashed),
                       "y": [f"{s.kind.value} (tried {s.tried})" for s in crashed],
                       "marker": {"color": VERMILLION, "symbol": "x", "size": 10},
                       "name": "every try crashed (no effect)", "hoverinfo": "text",
                       "hovertext": [f"<b>{_t(s.kind.value)}</b><br>tried {s.tried}, all crashed"
                                     for s in crashed]})
    return {"data": traces, "layout": _layout(
        "Kinds of change: effect on val loss against the parent (< 0 helped)",
        "val-loss change against the parent (nats / token)", "",
        height=max(300, 120 + 40 * len(stats)),
        yaxis={"autorange": "reversed", "automargin": True})}


def figures(data: RunData) -> dict[str, dict]:
    """name -> Plotly figure spec, for the figures this run can draw."""
    made = {"fitness": fitness(data) if data.candidates else None,
            "lineage": lineage(data) if data.candidates else None,
            "curves": curves(data), "pareto": pareto(data), "kinds": kinds(data)}
    return {k: v for k, v in made.items() if v is not None}


def embedded_json(value) -> Markup:
    """JSON that can sit inside a <script type="application/json"> element: no '<' (so no
    '</script>'), '>' or '&' survives as itself."""
    text = json.dumps(_finite(value), allow_nan=False, separators=(",", ":"))
    return Markup(text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def _finite(value):
    """NaN and infinities as null (JSON has neither)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


@cache
def plotly_js() -> str:
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


@cache
def page_js() -> str:
    from importlib import resources

    return (resources.files("darwin.reports") / "templates" / "page.js").read_text()


def script_hash(source: str) -> str:
    """A script's CSP hash: the page runs only the scripts whose hashes it lists."""
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"
