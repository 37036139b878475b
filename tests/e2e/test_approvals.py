"""What an approval does, through the engine and the real sandboxes: an approved dataset is served
to the next generation's children and not to earlier ones, an approved package (a wheel built
here, installed from a local folder) imports in the next generation's sandbox on both backends
and not before, an approved file layout opens exactly the named files to the mutator; a
contaminated dataset and a package without a wheel keep the review paused."""

from __future__ import annotations

import pytest

from darwin.engine.experiment import Experiment
from darwin.engine.reviews import grants_for
from darwin.memory.records import (
    AskedRequest,
    CandidateRecord,
    RequestDecision,
    ReviewAnswer,
    ReviewRecord,
)
from tests.conftest import require_sandbox
from tests.wheels import make_wheel

pytestmark = pytest.mark.sandbox

PROBE = """\
import darwin_io
print("sources", darwin_io.sources())
try:
    import darwin_probe_pkg
    print("package", darwin_probe_pkg.VALUE)
except ImportError:
    print("package missing")
if "poems" in darwin_io.sources():
    batch = darwin_io.get_batch(2, 8, source="poems")
    print("poems", tuple(batch.shape), int(batch.max()))
"""


def _request(rid: str, kind: str, detail: str) -> AskedRequest:
    return AskedRequest(id=rid, key=f"{kind}: {detail}", kind=kind, detail=detail,
                        asked_by=["g001-c00"])


@pytest.fixture()
def engine(request, tmp_path, monkeypatch):
    from darwin.engine.engine import build_engine
    from darwin.evaluation.training import seed_program
    from darwin.memory.store import RunStore

    backend = getattr(request, "param", "local")
    require_sandbox(backend)
    wheels = tmp_path / "wheelhouse"
    make_wheel(wheels)
    monkeypatch.setenv("DARWIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DARWIN_SANDBOX", backend)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    url = str(tmp_path / "runs")
    experiment = Experiment(budget="tiny", mutator="offline", seeds=2)
    RunStore(url, "r").create({"run_id": "r", "experiment": experiment.model_dump(mode="json")})
    eng = build_engine("r", url, experiment)
    assert eng.sandbox.name == backend
    eng.candidates.add_seed_program(seed_program().read_text())
    for cid, gen in (("g001-c00", 1), ("g002-c00", 2)):
        eng.store.put_candidate(CandidateRecord(id=cid, run_id="r", generation=gen,
                                                parents=["seed"], code_sha=eng.store.put_code(PROBE)))
    return eng


def _review(engine, tmp_path, dataset_text: str, package: str) -> tuple[ReviewRecord, list[str]]:
    poems = tmp_path / "Poems.txt"
    poems.write_text(dataset_text)
    review = ReviewRecord(run_id="r", generation=1, requests=[
        _request("r1", "dataset", "more verse"), _request("r2", "package", "a helper"),
        _request("r3", "file_layout", "a separate model file")],
        answer=ReviewAnswer(via="api", decisions=[
            RequestDecision(request="r1", verdict="approve", value=str(poems)),
            RequestDecision(request="r2", verdict="approve", value=package),
            RequestDecision(request="r3", verdict="approve", value="model.py")]))
    return review, engine.humans.apply_approvals(review)


def _log(engine, cid: str) -> str:
    seed = engine.seeds()[0]
    assert engine.evaluations.train(cid, seed) == "trained"
    return (engine.evaluations.work_dir(cid, seed) / "run" / "train.log").read_text()


@pytest.mark.parametrize("engine", ["local", "docker"], indirect=True)
def test_approvals_reach_the_next_generation_and_not_earlier_ones(engine, tmp_path):
    from darwin.evaluation.data import load_dataset

    corpus = load_dataset()
    review, problems = _review(engine, tmp_path, corpus.text(corpus.train[:20_000]),
                               "darwin-probe-pkg==1.0")
    assert problems == []
    assert review.granted["r1"]["name"] == "poems" and review.granted["r2"]["requirement"] == (
        "darwin-probe-pkg==1.0")
    engine.store.put_review(review)
    assert grants_for([review], 1).sources == {}  # never retroactive
    assert grants_for([review], 2).files == ["model.py"]

    before, after = _log(engine, "g001-c00"), _log(engine, "g002-c00")
    assert "sources ['shakespeare']" in before and "package missing" in before
    assert "sources ['shakespeare', 'poems']" in after and "package 42" in after
    assert "poems (2, 9)" in after
    # The mutator of generation 2 may write model.py; generation 1's could not.
    assert engine.candidates.mutation_context("seed", None, 1).allowed_files == []
    assert engine.candidates.mutation_context("seed", None, 2).allowed_files == ["model.py"]
    # The approvals reach the prompts as notes saying how to use them.
    notes = " ".join(engine.candidates.mutation_context("seed", None, 2).human_notes)
    assert "source='poems'" in notes and "darwin-probe-pkg==1.0 is importable" in notes


def test_a_contaminated_dataset_and_a_missing_wheel_are_refused(engine, tmp_path):
    from darwin.evaluation.data import load_dataset

    corpus = load_dataset()
    text = corpus.text(corpus.train[:20_000]) + corpus.text(corpus.test[500:700])
    review, problems = _review(engine, tmp_path, text, "no-such-package==9.9")
    assert len(problems) == 2
    assert "r1:" in problems[0] and "contaminated" in problems[0] and "test split" in problems[0]
    assert "r2:" in problems[1] and "pip could not install no-such-package==9.9" in problems[1]
    assert set(review.granted) == {"r3"}  # the review stays paused; nothing else was granted
    layers = engine.settings.home / "layers"
    assert not layers.exists() or not any(p.name[0] != "." for p in layers.iterdir())
