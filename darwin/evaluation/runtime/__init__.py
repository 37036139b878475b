"""Trusted helpers mounted read-only inside the sandboxes (not imported by DARWIN itself)."""
