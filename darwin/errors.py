"""DARWIN's one error family. The core raises these; the CLI prints each as one line (never a
traceback) and exits with the class's code.

- ``UserError`` (exit 2): the user's input or machine is wrong; the message names the field and
  the fix ("invalid --budget: use tiny|cpu|paper").
- ``StorageError`` (exit 3): the run store cannot be read or written as asked.
- ``SandboxError`` (exit 4): the sandbox failed to start or run a program (ours, never the
  candidate's fault). ``SandboxUnavailable`` is also a user error: nothing here isolates.
- ``LLMError`` (exit 5): the model's server could not be used (its kind says why).

What a candidate does wrong is never one of these: it is data (a typed failure in its record).
"""

from __future__ import annotations


class DarwinError(Exception):
    """Base of every error DARWIN raises on purpose."""

    exit_code = 1


class UserError(DarwinError):
    """A problem with the user's input or machine, with the fix in the message."""

    exit_code = 2


class StorageError(DarwinError):
    """The run store cannot do what was asked (missing object, corrupt record, conflict)."""

    exit_code = 3


class SandboxError(DarwinError):
    """The sandbox itself failed: our problem or the machine's, never the candidate's."""

    exit_code = 4


class LLMError(DarwinError):
    """One failed use of the LLM; ``kind`` (an ``llm.client.LLMFailure``) is the typed reason a
    mutation records."""

    exit_code = 5

    def __init__(self, kind, detail: str):
        super().__init__(f"{getattr(kind, 'value', kind)}: {detail}")
        self.kind, self.detail = kind, detail
