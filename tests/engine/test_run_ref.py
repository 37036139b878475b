"""A RunRef's sandbox and slots, when given, stand in for DARWIN_SANDBOX / DARWIN_SLOTS (the CLI
passes its flags this way instead of writing the environment); left out, the settings decide."""

from __future__ import annotations

import pytest

from darwin.engine.engine import RunRef, engine_for
from darwin.engine.experiment import Experiment
from darwin.errors import UserError
from darwin.memory.store import RunStore
from darwin.sandbox import SandboxUnavailable


@pytest.fixture()
def ref(tmp_path, monkeypatch) -> RunRef:
    # Settings no run could use: whatever works below came from the ref.
    monkeypatch.setenv("DARWIN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DARWIN_SANDBOX", "no-such-backend")
    monkeypatch.setenv("DARWIN_SLOTS", "100000")
    url = str(tmp_path / "runs")
    RunStore(url, "r").create({"run_id": "r"})
    return RunRef(run_id="r", storage_url=url, experiment=Experiment(budget="tiny"))


def test_the_refs_sandbox_and_slots_win_over_the_settings(ref):
    engine = engine_for(ref.model_copy(update={"sandbox": "unsafe", "slots": 1}))
    assert engine.sandbox.name == "unsafe"
    assert engine.slots == 1


def test_without_them_the_settings_decide(ref):
    with pytest.raises(SandboxUnavailable, match="no-such-backend"):
        engine_for(ref)
    engine = engine_for(ref.model_copy(update={"sandbox": "unsafe"}))
    with pytest.raises(UserError, match="--slots 100000"):
        engine.slots  # noqa: B018 - the property is what is tested
