"""Prefect tasks: one side effect each (llm, sandbox, score, store, publish)."""
