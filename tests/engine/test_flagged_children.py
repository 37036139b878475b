"""A child whose score carries an integrity flag (held-out text suspected, a program past the
size bounds, ...) never enters the population by selection, however good its loss; the next
review lists it with its flag, and a person's pin is the only way in. Through the engine and a
real run store (no training: the evaluation records are written as the scorer would)."""

from __future__ import annotations

import pytest

from darwin.engine.reviews import ReviewPolicy
from darwin.engine.selection import Scored, select
from darwin.evaluation import integrity_flags
from darwin.memory.records import (
    CandidateRecord,
    EvaluationRecord,
    GenerationRecord,
    Member,
    ReviewAnswer,
)

SUSPECT = ("heldout_suspect: val loss 0.5200 is below the loss on a sample of its own training "
           "text (3.4000) beyond the noise")


def test_integrity_flags_are_told_from_notes():
    flags = [SUSPECT, "unused_weights: 1 tensor(s) change nothing (x); left out of the FLOP count",
             "heldout_in_program: train.py holds 40 tokens", "heldout_gap: 1.2 nats"]
    assert integrity_flags(flags) == [flags[0], flags[2], flags[3]]


def test_selection_never_takes_a_flagged_child_unless_pinned():
    seed = Scored("seed", [3.48, 3.48, 3.48])
    cheat = Scored("cheat", [0.52, 0.52, 0.52], flagged=[SUSPECT])
    honest = Scored("honest", [3.3, 3.3, 3.3])
    new, promoted, filled = select([seed], [cheat, honest], size=3, keep=1, margin=0.06)
    assert [m.id for m in new] == ["honest", "seed"] and "cheat" not in promoted + filled
    # The control: the same child without its flag is the best, so the flag is what kept it out.
    new, _, _ = select([seed], [Scored("cheat", cheat.losses), honest], size=3, keep=1,
                       margin=0.06)
    assert new[0].id == "cheat"
    new, _, _ = select([seed], [cheat, honest], size=3, keep=1, margin=0.06,
                       pinned=frozenset({"cheat"}))
    assert new[0].id == "cheat"


@pytest.fixture()
def engine(tmp_path, monkeypatch):
    from darwin.engine.engine import build_engine
    from darwin.engine.experiment import Experiment
    from darwin.evaluation.training import seed_program
    from darwin.memory.store import RunStore

    monkeypatch.setenv("DARWIN_HOME", str(tmp_path / "home"))
    url = str(tmp_path / "runs")
    experiment = Experiment(budget="tiny", mutator="offline", seeds=2, population=3, keep=1,
                            min_runs=1)
    RunStore(url, "r").create({"run_id": "r", "experiment": experiment.model_dump(mode="json")})
    eng = build_engine("r", url, experiment, sandbox="unsafe")
    seed_id = eng.candidates.add_seed_program(seed_program().read_text()).id
    seed = eng.seeds()[0]
    eng.store.put_evaluation(EvaluationRecord(candidate_id=seed_id, code_sha="s", seed=seed,
                                              budget="tiny", status="ok", val_loss=3.48))
    eng.store.commit(GenerationRecord(run_id="r", generation=0, population=[
        Member(candidate_id=seed_id, losses=[3.48])], noise=0.06))
    for cid, loss, flags in (("g001-c00", 0.52, [SUSPECT]), ("g001-c01", 3.30, [])):
        eng.store.put_candidate(CandidateRecord(id=cid, run_id="r", generation=1,
                                                parents=[seed_id],
                                                code_sha=eng.store.put_code("# child\n")))
        eng.store.put_evaluation(EvaluationRecord(candidate_id=cid, code_sha="c", seed=seed,
                                                  budget="tiny", status="ok", val_loss=loss,
                                                  flags=flags))
    return eng


def test_a_flagged_child_is_listed_at_the_review_and_enters_only_when_pinned(engine):
    record = engine.select(1, ["g001-c00", "g001-c01"], started_at=0.0)
    assert "g001-c00" not in [m.candidate_id for m in record.population]
    assert "g001-c01" in [m.candidate_id for m in record.population]
    assert "g001-c00" not in record.pareto + record.promoted + record.filled
    engine.store.commit(record)
    review = engine.humans.review_due(1, ReviewPolicy(every=1))
    assert review is not None and review.flagged == {"g001-c00": SUSPECT}
    assert "g001-c00" in review.pinnable
    from darwin.reports.review import review_markdown

    assert "kept out by an integrity flag" in review_markdown(engine.store, review)
    assert "g001-c00" not in engine.humans.population_ids(1)
    review.answer = ReviewAnswer(via="api", pin=["g001-c00"])
    engine.store.put_review(review)
    assert "g001-c00" in engine.humans.population_ids(1)
