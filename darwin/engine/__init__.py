"""The evolution engine, free of Prefect: the experiment, the run's steps, selection, reviews
and slots; the flows call it through thin tasks.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "watchdog": None,
    "RunRef": "engine",
    "engine_for": "engine",
    "Experiment": "experiment",
    "continued": "experiment",
    "make_experiment": "experiment",
    "read_experiment": "experiment",
    "checkpoint": "faults",
    "SEED_ID": "ids",
    "candidate_id": "ids",
    "in_generation": "ids",
    "parse": "ids",
    "ChildWatch": "pool_watch",
    "Heartbeat": "pool_watch",
    "Verdict": "pool_watch",
    "beat_interval": "pool_watch",
    "idempotency_key": "pool_watch",
    "check_inputs": "measure",
    "measure_program": "measure",
    "scratch_folder": "measure",
    "summarize": "measure",
    "apply_repairs": "policy",
    "final_candidates": "policy",
    "generation_zero": "policy",
    "to_confirm": "policy",
    "to_repair": "policy",
    "to_rerun": "policy",
    "MAX_REMAINING": "reviews",
    "ReviewPolicy": "reviews",
    "check_answer": "reviews",
    "complete": "reviews",
    "default_answer": "reviews",
    "make_policy": "reviews",
    "request_key": "reviews",
    "claim_run": "runs",
    "create_run": "runs",
    "environment": "runs",
    "open_for_resume": "runs",
    "reap_leftovers": "runs",
    "run_alive": "status",
    "run_summary": "runs",
    "choose_parents": "selection",
    "RunStatus": "status",
    "run_status": "status",
    "MachineSlot": "slots",
    "shared_pool": "slots",
    "slot_count": "slots",
    "warm_gate": "slots",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
