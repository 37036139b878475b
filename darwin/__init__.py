"""DARWIN: an LLM evolves the training code of small GPT models.

The core package holds pure logic (no Prefect import): budgets, data, the sandbox backends, the
trusted scorer and the CLI. Orchestration lives in ``darwin.flows`` and ``darwin.tasks``.
"""

__version__ = "0.1.0"
