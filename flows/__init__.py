"""Prefect flows: the evolution run and one generation (thin; logic lives in darwin)."""
