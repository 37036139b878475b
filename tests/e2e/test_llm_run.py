"""A run with the LLM (the local OpenAI-compatible test server over HTTP) under a spending cap:
one ledger for the whole run, kept in the store, so the cap holds across parallel children, a
kill and the resume; once it is reached the run goes on with the offline mutator."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from darwin.engine.steps import CAP_NOTE
from darwin.llm.ledger import StoredLedger
from darwin.memory.store import RunStore, list_runs

pytestmark = pytest.mark.sandbox

# Prices of 1 USD per million tokens both ways make the sums easy to check by hand.
PRICES = json.dumps({"gpt-4o-mini": [1.0, 1.0]})
# Generation 1 (process one) spends $0.0089 (its prompts and answers are the same every time).
# Generation 2: the first call starts (0.0089 < CAP); the second cannot, whichever way the two
# children race (the first's reservation, or its cost once settled, takes the sum over CAP).
CAP = 0.010


def _darwin(args, env):
    return subprocess.run([sys.executable, "-m", "darwin.cli", *args], env=env, text=True,
                          capture_output=True, timeout=900)


def test_the_spending_cap_holds_across_children_a_kill_and_the_resume(
        llm_server, sandbox, tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "DARWIN_FAULT")}
    env.update(DARWIN_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect"),
               OPENAI_BASE_URL=llm_server.url, OPENAI_API_KEY=llm_server.key,
               DARWIN_LLM__MAX_COST_USD=str(CAP), DARWIN_LLM__PRICES=PRICES,
               DARWIN_LLM__MODEL="gpt-4o-mini")
    first = _darwin(["run", "--budget", "tiny", "--generations", "2", "--population", "2",
                     "--keep", "1", "--children", "2", "--seeds", "2", "--reruns", "0",
                     "--repair-tries", "0", "--mutator", "openai"],
                    {**env, "DARWIN_FAULT": "commit:2:KILL"})  # killed committing generation 1
    assert first.returncode == -9, first.stderr[-3000:]
    (run_id,) = list_runs(home / "runs")
    store = RunStore(home / "runs", run_id)
    after_first = StoredLedger(store, CAP).summary()
    assert after_first["calls"] == len(llm_server.requests) >= 2, after_first
    assert after_first["cost_usd"] < CAP, "the cap should bind only after the resume"

    second = _darwin(["run", "--resume", run_id, "--json"], env)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "spending cap is reached" in second.stderr
    ledger = json.loads(second.stdout)["llm"]
    # Every call of both processes is in the one ledger, and nothing was counted twice.
    assert ledger["calls"] == len(llm_server.requests) > after_first["calls"], ledger
    # Over the cap by at most one call: a call starts only while spent + reserved < cap, and
    # each reservation covers its call (its prompt and max_tokens).
    one_call = max(r["usage_cost"] for r in _costs(llm_server))
    assert ledger["cost_usd"] <= CAP + one_call, (ledger, one_call)
    assert ledger["cost_usd"] == pytest.approx(sum(r["usage_cost"] for r in _costs(llm_server)))
    capped = [c for c in store.candidates() if CAP_NOTE in c.notes]
    assert capped and all(c.mutator == "offline" and c.generation == 2 for c in capped)
    assert {c.mutator for c in store.candidates() if c.generation == 1} == {"openai"}


def _costs(server) -> list[dict]:
    """What each request cost at 1 USD per million tokens, as the test server counted it."""
    return [{"usage_cost": (r["prompt_tokens"] + r["completion_tokens"]) / 1e6}
            for r in server.usage]
