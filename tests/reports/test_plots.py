"""Each figure drawn from synthetic records: the artists it holds (points, nodes, edges,
curves, bars) match the records, also for a run with nothing yet and one where every child
crashed."""

from __future__ import annotations

import io

import pytest
from matplotlib.collections import LineCollection, PathCollection

from darwin.reports import plots
from darwin.reports.data import CRASHED, DISCARDED, KEPT, REPAIRED, RunData
from tests.reports import synthetic


def artists(fig, gid: str) -> list:
    return [a for ax in fig.axes for a in ax.get_children() if a.get_gid() == gid]


def points(fig, gid: str) -> int:
    found = artists(fig, gid)
    return sum(len(a.get_offsets()) for a in found if isinstance(a, PathCollection))


def said(fig) -> str:
    return " ".join(a.get_text() for a in artists(fig, "missing"))


@pytest.fixture(scope="module")
def data() -> RunData:
    return synthetic.run(generations=3, children=4, crash_every=3)


@pytest.fixture(scope="module")
def empty() -> RunData:
    return RunData("empty")


@pytest.fixture(scope="module")
def crashed() -> RunData:
    return synthetic.run(generations=2, children=3, crash_every=1)


def test_every_candidate_is_a_point_of_its_fate(data):
    fig = plots.fitness_figure(data)
    fates = [data.status(c.id) for c in data.candidates]
    for fate in (DISCARDED, REPAIRED, CRASHED):
        assert points(fig, f"points-{fate}") == fates.count(fate), fate
    # Kept: those in the population now apart from those displaced later (not counted as kept).
    now = data.members_now()
    assert points(fig, f"points-{KEPT}") == len(now)
    assert points(fig, "points-dropped") == fates.count(KEPT) - len(now) > 0
    legend = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert f"in the population now ({len(now)})" in legend
    assert sum(points(fig, f"points-{f}") for f in (KEPT, DISCARDED, REPAIRED, CRASHED,
                                                    "dropped")) == len(data.candidates)
    assert fates.count(CRASHED) and fates.count(REPAIRED)  # the synthetic run has both
    (best,) = artists(fig, "best-so-far")
    assert list(best.get_ydata())[:-1] == [v for _, v in data.best_so_far()]
    assert len(data.best_so_far()) == len(data.generations)
    (lineage,) = artists(fig, "best-lineage")
    assert len(lineage.get_xdata()) == len(data.lineage(data.best)) > 1
    assert artists(fig, "noise-band")


def test_crashed_points_sit_above_every_loss(data):
    fig = plots.fitness_figure(data)
    (crash,) = artists(fig, f"points-{CRASHED}")
    scored = [y for fate in (KEPT, DISCARDED, REPAIRED)
              for a in artists(fig, f"points-{fate}") for _, y in a.get_offsets()]
    assert min(y for _, y in crash.get_offsets()) > max(scored)


def test_lineage_draws_every_candidate_and_every_kind_of_edge(data):
    fig = plots.lineage_figure(data)
    scored = [c for c in data.candidates if data.fitness(c.id) is not None]
    assert points(fig, "nodes-scored") == len(scored)
    assert points(fig, "nodes-crashed") == len(data.candidates) - len(scored)
    edges = {kind: sum(len(a.get_segments()) for a in artists(fig, f"edges-{kind}")
                       if isinstance(a, LineCollection))
             for kind in ("target", "proposer", "repair", "best")}
    assert edges["repair"] == sum(1 for c in data.candidates if c.repair_of)
    assert edges["proposer"] == sum(1 for c in data.candidates if len(c.parents) == 2)
    assert edges["best"] == len(data.lineage(data.best)) - 1
    assert sum(edges.values()) == sum(len(c.parents) for c in data.candidates)


def test_curves_show_the_seed_and_the_top_candidates_with_their_trusted_loss(data):
    fig = plots.curves_figure(data, k=3)
    top = plots.top_candidates(data, 3)
    assert top[0] == "seed" and len(top) == 4
    by_step, by_time = fig.axes[:2]
    assert [ln.get_gid() for ln in by_step.get_lines() if ln.get_gid()] == \
        [f"curve-{c}" for c in top]
    assert len([ln for ln in by_time.get_lines() if ln.get_gid()]) == 4
    stars = [a for a in by_step.get_children() if str(a.get_gid()).startswith("val-")]
    assert len(stars) == 4
    assert "reported by the program" in fig.get_suptitle()
    assert artists(fig, "noise-band")


def test_pareto_front_is_the_non_dominated_candidates(data):
    fig = plots.pareto_figure(data)
    scored = [c.id for c in data.candidates if data.fitness(c.id) is not None]
    assert points(fig, "points") == len(scored)
    (front,) = artists(fig, "front")
    pts = {c: (100 * data.mfu(c), data.fitness(c)) for c in scored}
    on_front = set(zip(front.get_xdata(), front.get_ydata()))
    for c, (m, f) in pts.items():
        dominated = any(m2 >= m and f2 <= f and (m2, f2) != (m, f) for m2, f2 in pts.values())
        assert ((m, f) in on_front) == (not dominated), c


def test_time_and_money_per_generation(data):
    fig = plots.time_figure(data)
    rows = data.timing()
    assert len(rows) == len(data.generations)
    for key, _, _ in plots.TIME_PARTS:
        assert len(artists(fig, f"time-{key}")) == len(rows)  # one bar per generation
    training = artists(fig, "time-training_s")
    assert [p.get_height() for p in training] == [r["training_s"] for r in rows]
    (cost,) = artists(fig, "cost")
    assert sum(cost.get_ydata()) == pytest.approx(sum(c.cost_usd for c in data.candidates))
    # orchestration is the part of the wall time when nothing ran: never more than the wall
    assert all(0 <= r["orchestration_s"] <= r["wall_s"] for r in rows)
    # Both legends sit below their axes: none covers a bar (generation 0's was covered).
    fig.canvas.draw()
    for ax in fig.axes[:2]:
        assert ax.get_legend().get_window_extent().y1 <= ax.get_window_extent().y0


def test_the_seed_curve_is_labelled_with_the_mean_its_band_is_about(data):
    fig = plots.curves_figure(data, k=1)
    label = fig.axes[0].get_legend_handles_labels()[1][0]
    n = len(data.losses("seed"))
    assert n > 1 and f"mean of {n} seeds {data.fitness('seed'):.3f}" in label, label


def test_kinds_of_change(data):
    fig = plots.kinds_figure(data)
    stats = plots.kind_stats(data)
    bars = artists(fig, "crash-rate")
    assert len(bars) == len(stats) == 4
    assert [p.get_width() for p in bars] == [100 * s.crashed / s.tried for s in stats]
    (effects,) = [c for c in fig.axes[0].containers if c.get_label() ==
                  "mean effect, 95 % interval"]
    assert len(effects.lines[0].get_xdata()) == sum(1 for s in stats if s.mean is not None)
    # Every child counts once; a repair has no effect to count (its parent, the broken child,
    # has no loss).
    assert sum(s.tried for s in stats) == sum(1 for c in data.candidates
                                              if c.kind and not c.repair_of)


def test_compare_runs_draws_each_run_with_its_band():
    runs = [synthetic.run(run_id="a"), synthetic.run(seed=1, run_id="b", llm=False),
            RunData("nothing-yet")]
    fig = plots.compare_figure(runs)
    assert len(artists(fig, "run-0")) == len(artists(fig, "run-1")) == 1
    assert len(artists(fig, "band-0")) == len(artists(fig, "band-1")) == 1
    assert not artists(fig, "run-2")
    (line,) = artists(fig, "run-0")  # the last generation has a width, not only an edge
    last = runs[0].generations[-1].generation
    assert max(line.get_xdata()) == last + 0.5 and line.get_ydata()[-1] == line.get_ydata()[-2]
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "a (openai)" in labels and "b (offline)" in labels


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_an_empty_run_says_what_is_missing(name, empty):
    fig = plots.FIGURES[name][1](empty)
    assert said(fig)
    assert not any(isinstance(a, PathCollection) and len(a.get_offsets())
                   for ax in fig.axes for a in ax.get_children())
    plots.png(fig)  # and still renders


def test_a_run_where_every_child_crashed(crashed):
    fig = plots.fitness_figure(crashed)
    children = [c for c in crashed.candidates if c.id != "seed" and not c.repair_of]
    assert points(fig, f"points-{CRASHED}") == len(children)
    lineage = plots.lineage_figure(crashed)
    assert points(lineage, "nodes-crashed") == len(children)
    kinds = plots.kinds_figure(crashed)
    assert "all crashed" in " ".join(t.get_text() for t in kinds.axes[0].texts) or \
        all(s.mean is not None for s in plots.kind_stats(crashed))
    curves = plots.curves_figure(crashed)
    assert [ln.get_gid() for ln in curves.axes[0].get_lines() if ln.get_gid()][0] == "curve-seed"


@pytest.mark.parametrize("name", sorted(plots.FIGURES))
def test_figures_are_labelled_and_sharp(name, data):
    fig = plots.FIGURES[name][1](data)
    assert fig.dpi >= 150
    main = fig.axes[0]
    assert main.get_xlabel() and main.get_ylabel()
    assert all(ax.get_xlabel() or ax.get_ylabel() for ax in fig.axes)  # twins, colour bars too
    assert any(ax.get_legend() for ax in fig.axes) or fig.legends
    from PIL import Image

    img = Image.open(io.BytesIO(plots.png(fig)))
    w, h = fig.get_size_inches()
    assert img.size == (round(w * 150), round(h * 150))
