"""A run with the LLM (the local OpenAI-compatible test server over HTTP) under a spending cap:
one ledger for the whole run, kept in the store, so the cap holds across parallel children, a
kill and the resume; once it is reached the run goes on with the offline mutator."""

from __future__ import annotations

import json

import pytest

from darwin.engine.mutators import CAP_NOTE
from darwin.llm.ledger import StoredLedger
from darwin.memory.store import RunStore, list_runs
from tests.conftest import cli_env, run_darwin

pytestmark = pytest.mark.sandbox

# Prices of 1 USD per million tokens both ways make the sums easy to check by hand.
PRICES = json.dumps({"gpt-4o-mini": [1.0, 1.0]})
# Below what any one call costs (its prompt alone is ~800 tokens, $0.0008) and below one
# reservation (max_tokens alone is $0.0041): the first call starts (nothing is spent or held),
# every later one, in either child, whichever way they race, and in the resumed process, finds
# the cap reached.
CAP = 0.0005


def test_the_spending_cap_holds_across_children_a_kill_and_the_resume(
        llm_server, sandbox, tmp_path):
    home = tmp_path / "home"
    env = cli_env(home, prefect=tmp_path / "prefect", OPENAI_BASE_URL=llm_server.url,
                  OPENAI_API_KEY=llm_server.key, DARWIN_LLM__MAX_COST_USD=str(CAP),
                  DARWIN_LLM__PRICES=PRICES, DARWIN_LLM__MODEL="gpt-4o-mini")
    first = run_darwin(["run", "--budget", "tiny", "--generations", "2", "--population", "2",
                        "--keep", "1", "--children", "2", "--seeds", "2", "--reruns", "0",
                        "--repair-tries", "0", "--mutator", "openai"],
                       {**env, "DARWIN_FAULT": "commit:2:KILL"},  # killed committing generation 1
                       timeout=900)
    assert first.returncode == -9, first.stderr[-3000:]
    (run_id,) = list_runs(home / "runs")
    store = RunStore(home / "runs", run_id)
    after_first = StoredLedger(store, CAP).summary()
    assert after_first["calls"] == len(llm_server.requests) >= 1, after_first
    assert after_first["cost_usd"] >= CAP  # reached in the first process...
    gen1 = [c for c in store.candidates() if c.generation == 1]
    assert any(CAP_NOTE in c.notes and c.mutator == "offline" for c in gen1)  # ...by a child

    second = run_darwin(["run", "--resume", run_id, "--json"], env, timeout=900)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "spending cap is reached" in second.stderr
    ledger = json.loads(second.stdout)["llm"]
    # The resumed process read the run's ledger: it made no call at all.
    assert len(llm_server.requests) == after_first["calls"] == ledger["calls"], ledger
    gen2 = [c for c in store.candidates() if c.generation == 2]
    assert gen2 and all(c.mutator == "offline" and CAP_NOTE in c.notes for c in gen2)
    # Over the cap by at most one call: a call starts only while spent + reserved < cap, and
    # each reservation covers its call (its prompt and max_tokens).
    costs = [(u["prompt_tokens"] + u["completion_tokens"]) / 1e6 for u in llm_server.usage]
    assert ledger["cost_usd"] == pytest.approx(sum(costs))
    assert ledger["cost_usd"] <= CAP + max(costs), (ledger, costs)
    assert ledger["failures"].get("cost_cap", 0) >= 1
    # What was spent on a child before the cap stopped it stays on its record.
    assert sum(c.cost_usd for c in store.candidates()) == pytest.approx(ledger["cost_usd"])
