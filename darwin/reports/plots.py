"""The report's figures: each a function from a run's records (``RunData``) to a matplotlib
figure, drawn without a display (``Figure`` objects, no pyplot state: safe from the flow's
threads) and testable alone by looking at the figure's artists.

Every figure labels its axes with units, has a legend, shows the seed's noise band where it
shows a loss (the margin a change must beat before it counts), uses the Okabe-Ito palette
(told apart by people with colour-blindness, and by marker shape too) and is saved at 150 dpi.
"""

from __future__ import annotations

import io

from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from darwin.engine import SEED_ID
from darwin.reports.data import CRASHED, DISCARDED, KEPT, REPAIRED, RunData

DPI = 150
# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency.
ORANGE, SKY, GREEN, YELLOW, BLUE, VERMILLION, PURPLE, BLACK = (
    "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#000000")
PALETTE = (BLUE, ORANGE, GREEN, VERMILLION, PURPLE, SKY, YELLOW, BLACK)
GREY = "#999999"
LOSS_AXIS = "validation loss (nats / token)"
NOISE_LABEL = "seed ± noise (2σ)"
STYLE = {  # how each fate of a candidate is drawn: colour, marker, legend words
    KEPT: (BLUE, "o", "kept (in the population)"),
    DISCARDED: (ORANGE, "s", "discarded"),
    REPAIRED: (GREEN, "D", "repaired, then scored"),
    CRASHED: (VERMILLION, "X", "crashed (no loss: drawn at the top)"),
}


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _figure(width: float = 8.0, height: float = 4.6, ncols: int = 1, sharey: bool = False):
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, ncols, sharey=sharey) if ncols > 1 else fig.subplots()
    return fig, axes


def _empty(ax, words: str) -> None:
    ax.text(0.5, 0.5, words, ha="center", va="center", transform=ax.transAxes, color="#555555",
            wrap=True, gid="missing")


def _noise_band(ax, data: RunData, horizontal: bool = True) -> None:
    seed, noise = data.seed_loss, data.noise
    if seed is None:
        return
    label = _noise_label(data)
    if horizontal:
        ax.axhspan(seed - noise, seed + noise, color=GREY, alpha=0.25, lw=0, label=label,
                   gid="noise-band")
        ax.axhline(seed, color=GREY, lw=1, ls="--")
    else:
        ax.axvspan(seed - noise, seed + noise, color=GREY, alpha=0.25, lw=0, label=label,
                   gid="noise-band")


def _noise_label(data: RunData) -> str:
    """The band's width in its legend entry: a narrow band is easy to miss on a loss axis."""
    if data.seed_loss is None:
        return NOISE_LABEL
    return f"seed {data.seed_loss:.3f} ± noise (2σ = {data.noise:.4f})"


def _jitter(i: int, n: int) -> float:
    """Spread the children of one generation sideways so their points do not overlap."""
    return 0.0 if n <= 1 else -0.25 + 0.5 * i / (n - 1)


# -- 1. fitness per generation -------------------------------------------------------------
def fitness_figure(data: RunData) -> Figure:
    """Every candidate a point at its generation (kept / discarded / repaired / crashed), the
    best-so-far line, the seed's noise band and the current best's lineage."""
    fig, ax = _figure()
    ax.set_xlabel("generation")
    ax.set_ylabel(f"{LOSS_AXIS}, mean over seeds")
    ax.set_title(f"{data.run_id}: fitness per generation (lower is better)", fontsize=10)
    by_gen: dict[int, list[str]] = {}
    for c in sorted(data.candidates, key=lambda c: c.id):
        by_gen.setdefault(c.generation, []).append(c.id)
    if not by_gen:
        _empty(ax, "no candidates yet: the run has not made its seed's record")
        return fig
    places = {cid: (g + _jitter(i, len(ids)), data.fitness(cid))
              for g, ids in by_gen.items() for i, cid in enumerate(ids)}
    losses = [y for _, y in places.values() if y is not None]
    seed = data.seed_loss
    span = [*losses, *([seed - data.noise, seed + data.noise] if seed is not None else [])]
    top = (max(span) + 0.08 * (max(span) - min(span) + 1e-3)) if span else 1.0
    _noise_band(ax, data)
    now = data.members_now()
    for fate, (colour, marker, words) in STYLE.items():
        pts = [(x, top if y is None else y, cid) for cid, (x, y) in places.items()
               if data.status(cid) == fate]
        if fate == KEPT:  # who is still in the population, apart from who was dropped later
            dropped = [p for p in pts if p[2] not in now]
            pts = [p for p in pts if p[2] in now]
            words = "in the population now"
            if dropped:
                ax.scatter([p[0] for p in dropped], [p[1] for p in dropped], c="white",
                           edgecolors=colour, marker=marker, s=36, linewidths=1.2, zorder=3,
                           label=f"kept, displaced later ({len(dropped)})", gid="points-dropped")
        if pts:
            ax.scatter([p[0] for p in pts], [p[1] for p in pts], c=colour, marker=marker, s=36,
                       label=f"{words} ({len(pts)})", zorder=3, gid=f"points-{fate}",
                       edgecolors="white", linewidths=0.5, clip_on=False)
    curve = data.best_so_far()
    if curve:  # held a little past the last generation, so its last value reads as a level
        curve = [*curve, (curve[-1][0] + 0.45, curve[-1][1])]
        ax.step([g for g, _ in curve], [v for _, v in curve], where="post", color=BLACK, lw=1.5,
                label="best so far (population's first)", gid="best-so-far", zorder=4)
    chain = [c for c in data.lineage(data.best) if places.get(c, (0, None))[1] is not None]
    if len(chain) > 1:
        ax.plot([places[c][0] for c in chain], [places[c][1] for c in chain], color=PURPLE,
                lw=2, marker="o", mfc="none", ms=10, label=f"lineage of the best ({data.best})",
                gid="best-lineage", zorder=5)
    ax.set_xticks(sorted(by_gen))
    if not losses:
        _empty(ax, "every candidate crashed: no loss to show yet")
    ax.legend(fontsize=7, loc="best")
    return fig


# -- 2. lineage tree -----------------------------------------------------------------------
def lineage_figure(data: RunData) -> Figure:
    """Candidates by generation, edges from the target parent (solid), the proposer parent
    (dashed: cross-agent mutation) and the broken candidate a repair fixes (dotted), coloured by
    fitness; the best's ancestry in bold; crashes as grey crosses."""
    n = len(data.candidates)
    fig, ax = _figure(9.0, max(4.0, min(12.0, 1.0 + 0.32 * _widest(data))))
    ax.set_xlabel("generation")
    ax.set_ylabel("candidates of the generation, best first")
    ax.set_title(f"{data.run_id}: lineage (who was made from whom)", fontsize=10)
    if not n:
        _empty(ax, "no candidates yet")
        return fig
    pos = _tree_positions(data)
    ancestry = set(data.lineage(data.best))
    edges: dict[str, list] = {"target": [], "proposer": [], "repair": [], "best": []}
    for c in data.candidates:
        for k, parent in enumerate(c.parents):
            if parent not in pos:
                continue
            kind = "repair" if c.repair_of == parent else ("target" if k == 0 else "proposer")
            seg = [pos[parent], pos[c.id]]
            edges["best" if kind == "target" and c.id in ancestry and parent in ancestry
                  else kind].append(seg)
    styles = {"target": (GREY, "solid", 1.0, "target parent"),
              "proposer": (SKY, "dashed", 1.0, "proposer parent (cross-agent)"),
              "repair": (VERMILLION, "dotted", 1.4, "repair of a crash"),
              "best": (BLACK, "solid", 2.6, "the best's ancestry")}
    for kind, segs in edges.items():
        if segs:
            colour, ls, lw, words = styles[kind]
            ax.add_collection(LineCollection(segs, colors=colour, linestyles=ls, linewidths=lw,
                                             label=words, gid=f"edges-{kind}", zorder=1))
    scored = [c.id for c in data.candidates if data.fitness(c.id) is not None]
    crashed = [c.id for c in data.candidates if data.fitness(c.id) is None]
    if scored:
        nodes = ax.scatter([pos[c][0] for c in scored], [pos[c][1] for c in scored],
                           c=[data.fitness(c) for c in scored], cmap="viridis", s=70,
                           marker="o", edgecolors=[BLACK if c in ancestry else "white"
                                                   for c in scored],
                           linewidths=[2 if c in ancestry else 0.5 for c in scored],
                           zorder=3, gid="nodes-scored", label="scored (colour: val loss)")
        fig.colorbar(nodes, ax=ax, label=f"{LOSS_AXIS} (darker is better)", shrink=0.8)
    if crashed:
        ax.scatter([pos[c][0] for c in crashed], [pos[c][1] for c in crashed], c=GREY,
                   marker="X", s=60, zorder=3, gid="nodes-crashed", label="crashed")
    if n <= 60:
        for cid, (x, y) in pos.items():
            ax.annotate(cid, (x, y),
                        xytext=(0, 7), textcoords="offset points", ha="center", fontsize=6)
    gens = sorted({x for x, _ in pos.values()})
    ax.set_xticks(sorted({round(x) for x in gens}))
    ax.set_xlim(min(gens) - 0.5, max(gens) + 0.5)
    ax.set_ylim(-0.7, _widest(data) - 0.3)
    ax.invert_yaxis()
    ax.set_yticks([])
    fig.legend(fontsize=7, loc="outside lower center", ncol=3, frameon=False)
    return fig


def _widest(data: RunData) -> int:
    counts: dict[int, int] = {}
    for c in data.candidates:
        counts[c.generation] = counts.get(c.generation, 0) + 1
    return max(counts.values(), default=1)


def _tree_positions(data: RunData) -> dict[str, tuple[float, float]]:
    """x: the generation (a repair a little to the right: it came later, and its edge from the
    broken candidate then crosses no other node); y: rank within it (scored best first, then
    the crashed)."""
    pos: dict[str, tuple[float, float]] = {}
    by_gen: dict[int, list[str]] = {}
    for c in data.candidates:
        by_gen.setdefault(c.generation, []).append(c.id)
    for g, ids in by_gen.items():
        ranked = sorted(ids, key=lambda cid: (data.fitness(cid) is None,
                                              data.fitness(cid) or 0.0, cid))
        for rank, cid in enumerate(ranked):
            repair = data.by_id[cid].repair_of is not None
            pos[cid] = (g + (0.3 if repair else 0.0), float(rank))
    return pos


# -- 3. training-loss curves ---------------------------------------------------------------
def top_candidates(data: RunData, k: int = 4) -> list[str]:
    """The seed and the ``k`` best scored candidates (by mean val loss) with a curve."""
    scored = sorted((c.id for c in data.candidates if c.id != SEED_ID
                     and data.fitness(c.id) is not None), key=lambda c: data.fitness(c))
    with_curve = [c for c in scored if (e := data.first_run(c)) is not None and e.curve]
    return [SEED_ID, *with_curve[:k]] if data.by_id.get(SEED_ID) else with_curve[:k]


def curves_figure(data: RunData, k: int = 4) -> Figure:
    """The training loss the top candidates and the seed printed (first seed), by step and by
    seconds (stamped by the trusted side as it read each line), with the trusted final val
    loss of each as a star."""
    fig, (by_step, by_time) = _figure(11.0, 4.6, ncols=2)
    fig.suptitle(f"{data.run_id}: training loss as reported by the program (untrusted); "
                 "★ trusted val loss", fontsize=10)
    by_step.set_xlabel("training step (as printed)")
    by_time.set_xlabel("seconds since training started (our clock)")
    for ax in (by_step, by_time):
        ax.set_ylabel("training loss, reported by the program (nats / token)")
    drawn = 0
    for i, cid in enumerate(top_candidates(data, k)):
        run = data.first_run(cid)
        if run is None or not run.curve:
            continue
        colour = BLACK if cid == SEED_ID else PALETTE[i % len(PALETTE)]
        steps = [p[0] for p in run.curve]
        secs = [p[1] for p in run.curve]
        loss = [p[2] for p in run.curve]
        n, mean = len(data.losses(cid)), data.fitness(cid)
        label = cid if run.val_loss is None else (
            f"{cid} (val {run.val_loss:.3f}; mean of {n} seeds {mean:.3f})" if n > 1
            else f"{cid} (val {run.val_loss:.3f})")
        style = {"color": colour, "lw": 2.0 if cid == SEED_ID else 1.4,
                 "ls": "--" if cid == SEED_ID else "-"}
        by_step.plot(steps, loss, label=label, gid=f"curve-{cid}", **style)
        by_time.plot(secs, loss, label=label, gid=f"curve-time-{cid}", **style)
        if run.val_loss is not None:
            by_step.scatter([steps[-1]], [run.val_loss], marker="*", s=140, color=colour,
                            edgecolors=BLACK, linewidths=0.6, zorder=4, gid=f"val-{cid}")
            by_time.scatter([secs[-1]], [run.val_loss], marker="*", s=140, color=colour,
                            edgecolors=BLACK, linewidths=0.6, zorder=4)
        drawn += 1
    if not drawn:
        for ax in (by_step, by_time):
            _empty(ax, "no loss curves: no candidate printed\nlines like `iter 10: loss 2.5`")
        return fig
    for ax in (by_step, by_time):
        _noise_band(ax, data)
    by_step.legend(fontsize=7, loc="upper right")
    by_time.legend(handles=[Line2D([], [], marker="*", ls="", color=GREY, mec=BLACK, ms=11,
                                   label="trusted val loss (scorer, end of training)"),
                            Patch(color=GREY, alpha=0.25, label=_noise_label(data))],
                   fontsize=7, loc="upper right")
    return fig


# -- 4. val loss against MFU ----------------------------------------------------------------
def pareto_figure(data: RunData) -> Figure:
    """Every scored candidate at (MFU, mean val loss) and the Pareto front among them (no
    other candidate has both a lower loss and a higher MFU)."""
    fig, ax = _figure()
    ax.set_xlabel("model FLOPs utilisation (%, mean over seeds)")
    ax.set_ylabel(f"{LOSS_AXIS}, mean over seeds")
    ax.set_title(f"{data.run_id}: validation loss against MFU", fontsize=10)
    points = {c.id: (100 * m, f) for c in data.candidates
              if (f := data.fitness(c.id)) is not None and (m := data.mfu(c.id)) is not None}
    if not points:
        _empty(ax, "no candidate has both a val loss and an MFU yet")
        return fig
    _noise_band(ax, data)
    ax.scatter([p[0] for p in points.values()], [p[1] for p in points.values()], c=SKY, s=30,
               edgecolors=BLUE, label=f"candidates ({len(points)})", gid="points", zorder=2)
    front_ids = _front(points)
    front = sorted((points[c] for c in front_ids), key=lambda p: p[0])
    # A staircase: the edge of what the front's members dominate (no straight line between two
    # of them is attainable).
    ax.step([p[0] for p in front], [p[1] for p in front], where="pre", color=VERMILLION,
            marker="o", lw=1.5, label=f"Pareto front ({len(front)})", gid="front", zorder=3)
    for cid in front_ids:
        ax.annotate(cid, points[cid], xytext=(4, 4), textcoords="offset points", fontsize=7)
    ax.legend(fontsize=7, loc="best")
    return fig


def _front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Non-dominated ids: no other point has both a higher MFU and a lower loss."""
    return [c for c, (m, f) in points.items()
            if not any(m2 >= m and f2 <= f and (m2, f2) != (m, f) for m2, f2 in points.values())]


# -- 5. where time and money went ----------------------------------------------------------
TIME_PARTS = (("llm_s", "LLM calls", ORANGE), ("training_s", "training", BLUE),
              ("scoring_s", "scoring (trusted)", GREEN), ("waiting_s", "waiting for a slot", SKY),
              ("orchestration_s", "orchestration (nothing running)", PURPLE))


def time_figure(data: RunData) -> Figure:
    """Per generation: seconds of LLM calls, training, scoring and waiting (summed over
    parallel tasks), orchestration, the wall time; and the LLM's tokens and cost."""
    fig, (ax, money) = _figure(11.0, 4.4, ncols=2)
    fig.suptitle(f"{data.run_id}: where time and money went", fontsize=10)
    ax.set_xlabel("generation")
    ax.set_ylabel("seconds (tasks summed: parallel work adds up)")
    money.set_xlabel("generation")
    money.set_ylabel("LLM tokens")
    rows = data.timing()
    if not rows:
        _empty(ax, "no committed generation yet")
        _empty(money, "no committed generation yet")
        return fig
    gens = [r["generation"] for r in rows]
    bottom = [0.0] * len(rows)
    for key, words, colour in TIME_PARTS:
        values = [r[key] or 0.0 for r in rows]
        ax.bar(gens, values, bottom=bottom, color=colour, label=words, gid=f"time-{key}")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.plot(gens, [r["wall_s"] for r in rows], ls="", marker="D", color=BLACK,
            label="wall clock of the generation", gid="wall")
    ax.set_xticks(gens)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3,
              frameon=False)  # below the axis: inside, it covered generation 0's bar
    money.set_xticks(gens)
    if not any(r["input_tokens"] or r["output_tokens"] for r in rows):
        money.set_yticks([])
        _empty(money, "no LLM calls (offline mutator): no tokens, no cost")
        return fig
    money.bar(gens, [r["input_tokens"] for r in rows], color=SKY, label="prompt tokens",
              gid="tokens-in")
    money.bar(gens, [r["output_tokens"] for r in rows], color=BLUE, label="answer tokens",
              bottom=[r["input_tokens"] for r in rows], gid="tokens-out")
    cost = money.twinx()
    cost.plot(gens, [r["cost_usd"] for r in rows], color=VERMILLION, marker="o",
              label="cost (US $)", gid="cost")
    cost.set_ylabel("LLM cost (US $, estimated)")
    cost.set_ylim(bottom=0)
    h1, l1 = money.get_legend_handles_labels()
    h2, l2 = cost.get_legend_handles_labels()
    money.legend(h1 + h2, l1 + l2, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                 ncol=3, frameon=False)
    return fig


# -- 6. kinds of change ---------------------------------------------------------------------
def kind_stats(data: RunData) -> list:
    """The memory's lessons (per kind of change, from first runs against the parent's)."""
    from darwin.mutation import aggregate, first_run_outcomes

    found = first_run_outcomes(data.candidates, data.evaluations, data.first_seed)
    stats = aggregate([o for _, _, o in found])
    return sorted(stats.values(), key=lambda s: (-s.tried, s.kind.value))


def kinds_figure(data: RunData) -> Figure:
    """Per kind of change: how often tried, the mean effect on val loss against the parent with
    its 95 % interval, and the crash rate."""
    stats = kind_stats(data)
    fig, (eff, crash) = _figure(11.0, max(3.0, 1.2 + 0.45 * len(stats)), ncols=2, sharey=True)
    fig.suptitle(f"{data.run_id}: kinds of change (the memory's lessons)", fontsize=10)
    eff.set_xlabel("val-loss change against the parent (nats / token; < 0 helped)")
    eff.set_ylabel("kind of change (first runs)")
    crash.set_xlabel("crash rate (% of tries)")
    if not stats:
        _empty(eff, "no child has finished a first run yet")
        _empty(crash, "no child has finished a first run yet")
        return fig
    ys = list(range(len(stats)))
    labels = [f"{s.kind.value} (tried {s.tried})" for s in stats]
    with_mean = [(y, s) for y, s in zip(ys, stats) if s.mean is not None]
    if data.noise:
        eff.axvspan(-data.noise, data.noise, color=GREY, alpha=0.25, lw=0,
                    label="± noise (2σ of the seed)", gid="noise-band")
    eff.axvline(0, color=BLACK, lw=0.8)
    if with_mean:
        eff.errorbar([s.mean for _, s in with_mean], [y for y, _ in with_mean],
                     xerr=[s.half_width or 0.0 for _, s in with_mean], fmt="o", color=BLUE,
                     ecolor=BLUE, capsize=3, label="mean effect, 95 % interval", gid="effects")
    for y, s in zip(ys, stats):
        if s.mean is None:
            eff.text(0, y, "  all crashed", va="center", fontsize=7, color=VERMILLION)
    eff.set_yticks(ys, labels, fontsize=8)
    eff.set_ylim(len(ys) - 0.5, -0.5)  # first (most tried) on top; shared with the bars
    eff.legend(fontsize=7, loc="best")
    rates = [100 * s.crashed / s.tried for s in stats]
    crash.barh(ys, rates, color=VERMILLION, label="crashed", gid="crash-rate")
    for y, s, rate in zip(ys, stats, rates):
        crash.text(rate + 1, y, f"{s.crashed} of {s.tried}", va="center", fontsize=7)
    crash.tick_params(axis="y", labelleft=False)
    crash.set_xlim(0, 100)
    crash.legend(fontsize=7, loc="lower right")
    return fig


# -- comparing runs -------------------------------------------------------------------------
def compare_figure(runs: list[RunData]) -> Figure:
    """Best-so-far per generation of several runs (LLM, offline, random, memory off...), each
    with its own seed's noise band around its curve."""
    fig, ax = _figure()
    ax.set_xlabel("generation")
    ax.set_ylabel(f"best {LOSS_AXIS} so far")
    ax.set_title("best so far, by run (band: each run's seed noise, 2σ)", fontsize=10)
    drawn = 0
    for i, data in enumerate(runs):
        curve = data.best_so_far()
        if not curve:
            continue
        colour = PALETTE[i % len(PALETTE)]
        # Held half a generation past the last, so the last generation has a width (a step
        # drawn "post" otherwise ends where it starts).
        curve = [*curve, (curve[-1][0] + 0.5, curve[-1][1])]
        xs, ys = [g for g, _ in curve], [v for _, v in curve]
        exp = data.experiment
        words = f"{data.run_id} ({exp.get('mutator', '?')}" + (
            ", memory off" if exp.get("memory") is False else "") + ")"
        ax.step(xs, ys, where="post", color=colour, lw=1.8, label=words, gid=f"run-{i}")
        for sign in (-1, 1):  # the band's edges, so overlapping bands stay told apart
            ax.step(xs, [y + sign * data.noise for y in ys], where="post", color=colour, lw=0.8,
                    ls=":")
        ax.fill_between(xs, [y - data.noise for y in ys], [y + data.noise for y in ys],
                        step="post", color=colour, alpha=0.12, lw=0, gid=f"band-{i}")
        drawn += 1
    if not drawn:
        _empty(ax, "none of these runs has a committed generation yet")
        return fig
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.legend(fontsize=7, loc="best")
    return fig


FIGURES = {  # file stem -> (title, function)
    "fitness": ("Fitness per generation", fitness_figure),
    "lineage": ("Lineage", lineage_figure),
    "curves": ("Training-loss curves", curves_figure),
    "pareto": ("Validation loss against MFU", pareto_figure),
    "time": ("Where time and money went", time_figure),
    "kinds": ("Kinds of change", kinds_figure),
}

