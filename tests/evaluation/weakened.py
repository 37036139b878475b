"""Scorers with one check taken out, built here by overriding the trusted ``Scorer``'s methods
(nothing in the scorer itself knows about them): each attack test shows its attack getting
through such a scorer, so every check it relies on can fail."""

from __future__ import annotations

import dataclasses

from darwin.evaluation.eval_client import EvalClient, EvalSession, eval_spec
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.scoring import EVAL_BATCH, PROBES, Scorer, make_probes

CHECKS = ("probes", "train_probes", "heldout_scan", "program_bounds", "perturb", "batching", "messages")


class _TellingClient(EvalClient):
    """Passes an evaluation error's whole frame on, the candidate's message included."""

    def _error(self) -> Rejected:
        return Rejected(Failure.eval_crash, self._frame().decode("utf-8", "replace"))


def weakened(*checks: str) -> Scorer:
    """The trusted scorer without ``checks`` (names from CHECKS)."""
    unknown = set(checks) - set(CHECKS)
    assert not unknown, f"no such check: {unknown}"

    class Weaker(Scorer):
        if "probes" in checks:
            def probes(self, held, dataset, context, rng):
                return []

        elif "train_probes" in checks:  # the held-out windows only (scorer v2)
            def probes(self, items, dataset, context, rng):
                held = [w for w in items if w.region == "held"]
                return make_probes(held, dataset, PROBES, context, rng)

        if "program_bounds" in checks:
            def bound_program(self, sources):
                return None

        if "heldout_scan" in checks:
            def scan_heldout(self, dataset, files):
                return None

        if "perturb" in checks:
            def find_unused(self, result, b, tensors, flops_tensors, rows, rng, tol):
                return None

        if "batching" in checks:  # in window order, neighbours together
            def batches(self, items, rng, context):
                return [list(range(i, min(i + EVAL_BATCH, len(items))))
                        for i in range(0, len(items), EVAL_BATCH)]

        if "messages" in checks:  # cold processes that send their messages, read as text
            def session(self, name, job):
                spec = eval_spec(name, job.model_dir, job.workdir, job.split, job.budget,
                                 job.device, job.cpus, job.packages)
                spec = dataclasses.replace(spec, env={**spec.env, "DARWIN_EVAL_MESSAGES": "1"})
                return EvalSession(job.sandbox, spec, job.vocab, job.model_lines, None,
                                   job.cpus, _TellingClient)

    return Weaker()
