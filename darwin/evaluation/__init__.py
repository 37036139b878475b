"""Training a program and scoring it: budgets, the dataset and its splits, the sandboxed
training, the trusted scorer and its checks.
"""

from __future__ import annotations

from darwin.faces import lazy

# What other layers may use (tests/test_layers.py): name -> its module, loaded on first use.
_FACE = {
    "BUDGETS": "budgets",
    "Budget": "budgets",
    "get_budget": "budgets",
    "load_dataset": "data",
    "DatasetRefused": "extra_data",
    "check_dataset": "extra_data",
    "encode": "extra_data",
    "local_file": "extra_data",
    "source_name": "extra_data",
    "Failure": "failures",
    "integrity_flags": "failures",
    "check_device": "hardware",
    "OUTPUT_LIMITS": "outputs",
    "PrestartedScorer": "eval_client",
    "prestart_scorer": "eval_client",
    "score": "scoring",
    "DEFAULT_SOURCE": "token_server",
    "Extras": "training",
    "NO_EXTRAS": "training",
    "Prestarted": "training",
    "TrainResult": "training",
    "prestart": "training",
    "seed_program": "training",
    "train": "training",
    "Evaluation": "trial",
    "train_then_score": "trial",
}
__all__ = sorted(_FACE)
__getattr__ = lazy(__name__, _FACE)
