"""Automatic repair of a child that failed: by the LLM, or by rules when there is no LLM.

A failed evaluation becomes a ``RepairCase``: a class (syntax, import, shape, oom, nan, deadline,
contract, scoring_check, crash), our own one-line summary, the quoted tail of its log (untrusted)
and, when a traceback names one, the failing line of the program. Each repair try is a new
candidate whose parent is the broken one; the caller bounds the number of tries.

Rules (no LLM needed, so crash and repair figures exist without a key): NaN -> divide the learning
rate by 10; out of memory -> halve the batch; anything else -> revert the hunk of the broken
child's diff that the traceback points at (or its last hunk).
"""

from __future__ import annotations

import difflib
import re

from darwin.evaluation import Budget, Failure
from darwin.mutation.answers import ChangeKind, Edit, MutationAnswer
from darwin.mutation.base import MutationResult, RepairCase, apply_answer
from darwin.mutation.catalogue import NUM, shape_row, unique_line
from darwin.mutation.edits import EditError, unified_diff


def _traceback_line(log: str) -> int | None:
    lines = re.findall(r'File "/sandbox/(?:program/train|model/model)\.py", line (\d+)', log)
    return int(lines[-1]) if lines else None


def repair_case(failure: Failure, detail: str, log_tail: str) -> RepairCase:
    """Classify a failure for repair from trusted facts (the failure) and the log's text."""
    log = log_tail or ""
    if failure is Failure.oom or "out of memory" in log.lower() or "MemoryError" in log:
        cls = "oom"
    elif failure is Failure.timeout:
        cls = "deadline"
    elif (failure is Failure.invalid_logits and "NaN" in detail) or re.search(r"loss nan", log):
        cls = "nan"
    elif "SyntaxError" in log or "IndentationError" in log:
        cls = "syntax"
    elif "ModuleNotFoundError" in log or "ImportError" in log:
        cls = "import"
    elif re.search(r"shape|size mismatch|mat1 and mat2|must match the size", log):
        cls = "shape"
    elif failure in (Failure.missing_output, Failure.bad_output, Failure.bad_weights,
                     Failure.weights_mismatch, Failure.import_error, Failure.heldout_in_program,
                     Failure.program_too_large):
        cls = "contract"
    elif failure in (Failure.noncausal, Failure.inconsistent_logits, Failure.batch_leak,
                     Failure.stateful, Failure.invalid_logits):
        cls = "scoring_check"
    else:
        cls = "crash"
    summary = f"{failure.value}: {detail}" if detail else failure.value
    return RepairCase(cls=cls, summary=summary[:300], log_tail=log, line=_traceback_line(log))


def revert_hunk(broken: str, parent: str, line: int | None) -> str | None:
    """``broken`` with the parent's text back in the hunk around ``line`` (or the last hunk)."""
    a, b = parent.splitlines(keepends=True), broken.splitlines(keepends=True)
    hunks = [op for op in difflib.SequenceMatcher(None, a, b).get_opcodes() if op[0] != "equal"]
    if not hunks:
        return None
    target = hunks[-1]
    if line is not None:
        containing = [h for h in hunks if h[3] <= line - 1 < max(h[4], h[3] + 1)]
        target = containing[0] if containing else min(hunks, key=lambda h: abs(h[3] - (line - 1)))
    _, i1, i2, j1, j2 = target
    return "".join(b[:j1] + a[i1:i2] + b[j2:])


class RuleRepair:
    """Repair without an LLM, by the rules in the module docstring."""

    name = "rules"

    def repair(self, broken: str, parent: str | None, case: RepairCase,
               budget: Budget) -> MutationResult:
        result = MutationResult(mutator=self.name, mode="repair", attempts=1)
        answer = None
        if case.cls == "nan":
            m = unique_line(broken, rf"^(?P<lhs>learning_rate\s*=\s*)(?P<val>{NUM})(?P<rest>.*)$")
            if m:
                new = float(m.group("val")) / 10
                answer = MutationAnswer(
                    reasoning=f"NaN in training: learning rate {m.group('val')} -> {new:g}.",
                    kind=ChangeKind.learning_rate,
                    edits=[Edit(search=m.group(0), replace=f"{m.group('lhs')}{new:g}{m.group('rest')}")])
        elif case.cls == "oom":
            m = shape_row(broken, budget.name)
            b = re.search(r"batch_size=(\d+)", m.group(0)) if m else None
            if m and b and int(b.group(1)) > 1:
                half = int(b.group(1)) // 2
                answer = MutationAnswer(
                    reasoning=f"Out of memory: batch size {b.group(1)} -> {half}.",
                    kind=ChangeKind.batch_block,
                    edits=[Edit(search=m.group(0),
                                replace=m.group(0).replace(b.group(0), f"batch_size={half}"))])
        if answer is None and parent is not None:
            reverted = revert_hunk(broken, parent, case.line)
            if reverted is not None and reverted != broken:
                answer = MutationAnswer(
                    reasoning=f"{case.cls} failure: revert the change that caused it"
                    + (f" (line {case.line})." if case.line else "."),
                    kind=ChangeKind.other, program=reverted)
        if answer is None:
            result.failure, result.detail = "no_rule_applies", f"no repair rule for {case.cls}"
            return result
        try:
            child = apply_answer(broken, answer, "whole" if answer.program else "search_replace")
        except EditError as e:
            result.failure, result.detail = "unusable_answer", str(e)
            return result
        result.child, result.answer = child, answer
        result.diff = unified_diff(broken, child)
        return result
