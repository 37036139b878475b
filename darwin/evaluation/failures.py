"""The closed set of ways a candidate can fail. A failure is data in a result, never an exception."""

from __future__ import annotations

import enum


class Failure(str, enum.Enum):
    # training
    crash = "crash"  # the program exited non-zero or died of a signal
    timeout = "timeout"  # killed at the budget's wall-clock deadline
    oom = "oom"  # killed by the memory cap
    disk = "disk"  # a file past the size cap
    # the output folder
    missing_output = "missing_output"  # no weights / model code / config
    bad_output = "bad_output"  # symlink, hard link, unknown name, oversize, not a regular file
    bad_weights = "bad_weights"  # not a valid safetensors file (a pickle in disguise, ...)
    # evaluation (a fresh sandbox loads the model; the trusted side checks what comes back)
    import_error = "import_error"  # model.py failed to import or build_model failed
    weights_mismatch = "weights_mismatch"  # the weights do not fit the model code
    eval_crash = "eval_crash"  # forward raised, or the evaluation process died
    eval_timeout = "eval_timeout"
    invalid_logits = "invalid_logits"  # wrong shape or non-finite values
    noncausal = "noncausal"  # a fresh process, shown other later tokens, disagreed: it peeks
    inconsistent_logits = "inconsistent_logits"  # a fresh process disagreed on the same prefix
    heldout_in_program = "heldout_in_program"  # val/test text in the program or its outputs
    program_too_large = "program_too_large"  # a program file or its literal data past the bounds
    scorer_error = "scorer_error"  # a bug of ours: the candidate is not at fault
    # Only in records written before scorer v2 (checks then ran inside the process they checked).
    batch_leak = "batch_leak"
    stateful = "stateful"

    @property
    def stage(self) -> str:
        if self in (Failure.crash, Failure.timeout, Failure.oom, Failure.disk):
            return "train"
        if self in (Failure.missing_output, Failure.bad_output, Failure.bad_weights,
                    Failure.heldout_in_program, Failure.program_too_large):
            return "output"
        if self is Failure.scorer_error:
            return "scorer"
        return "eval"


# Flags (a Score's ``flags``, "name: why") that say the score itself may not be honest. A child
# with any of them never enters the population by selection; a person may pin it at a review
# (darwin/engine/selection.py, darwin/engine/human_loop.py).
INTEGRITY_FLAGS = ("heldout_suspect", "heldout_in_program", "heldout_gap")


def integrity_flags(flags: list[str]) -> list[str]:
    """The flags among ``flags`` that keep a child out of the population."""
    return [f for f in flags if f.split(":", 1)[0].strip() in INTEGRITY_FLAGS]


class Rejected(Exception):
    """Raised inside the scorer to stop at the first failed check; turned into data."""

    def __init__(self, failure: Failure, detail: str):
        super().__init__(f"{failure.value}: {detail}")
        self.failure = failure
        self.detail = detail
