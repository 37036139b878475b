"""The best is the best over enough seeds: a one-seed result never ranks first, is never an
elite or the favoured parent, and "promoted" means displaced someone (issue #34's run)."""

from __future__ import annotations

import numpy as np

from darwin.engine.selection import Scored, choose_parents, ranked, select

SEED = Scored("seed", [3.4565, 3.4865, 3.5165])


def test_a_measured_child_takes_the_empty_slot_before_a_luckier_one_seed_child():
    """The tiny run of issue #34: population 2, keep 1; g001-c03 looked best on one seed."""
    c00 = Scored("g001-c00", [3.3065, 3.3165, 3.3265])
    c03 = Scored("g001-c03", [3.3061])
    new, promoted, filled = select([SEED], [c03, c00], size=2, keep=1, margin=0.06, min_runs=3)
    assert [m.id for m in new] == ["g001-c00", "seed"]
    assert filled == ["g001-c00"] and promoted == []  # it displaced nobody
    new, _, filled = select([SEED], [c03, c00], size=3, keep=1, margin=0.06, min_runs=3)
    assert [m.id for m in new] == ["g001-c00", "seed", "g001-c03"]  # one seed ranks last
    assert filled == ["g001-c00", "g001-c03"]
    # The control: with min_runs 1 every mean is a claim, and the lucky draw is first.
    new, _, _ = select([SEED], [c03, c00], size=3, keep=1, margin=0.06, min_runs=1)
    assert new[0].id == "g001-c03"


def test_a_one_seed_member_is_never_an_elite():
    lucky, measured = Scored("lucky", [1.5]), Scored("a", [2.0, 2.0, 2.0])
    child = Scored("child", [1.3, 1.3, 1.3])
    new, promoted, filled = select([lucky, measured], [child], size=2, keep=1, margin=0.1)
    # The elite is `a`, the best MEASURED member; the one-seed member is the one displaced.
    assert [m.id for m in new] == ["child", "a"] and promoted == ["child"] and filled == []


def test_the_worst_replaceable_member_is_displaced_whatever_its_runs():
    pop = [Scored("lucky", [1.5]), Scored("a", [2.0] * 3), Scored("b", [2.2] * 3)]
    new, promoted, _ = select(pop, [Scored("child", [1.9] * 3)], size=3, keep=1, margin=0.1)
    assert [m.id for m in new] == ["child", "a", "lucky"] and promoted == ["child"]


def test_ranking_puts_every_measured_member_first():
    pop = [Scored("one", [1.0]), Scored("three", [2.0] * 3), Scored("two", [1.5] * 2)]
    assert [m.id for m in ranked(pop, 3)] == ["three", "one", "two"]
    assert [m.id for m in ranked(pop, 1)] == ["one", "two", "three"]


def test_the_favoured_parent_is_measured():
    pop = [Scored("lucky", [1.0]), Scored("measured", [2.0] * 3)]
    pairs = choose_parents(pop, 60, np.random.default_rng(0), min_runs=3)
    targets = [t for t, _ in pairs]
    assert targets.count("measured") > targets.count("lucky")
    pairs = choose_parents(pop, 60, np.random.default_rng(0), min_runs=1)  # the control
    assert [t for t, _ in pairs].count("lucky") > [t for t, _ in pairs].count("measured")
