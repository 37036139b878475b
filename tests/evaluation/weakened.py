"""Scorers with one check taken out, built here by overriding the trusted ``Scorer``'s methods
(nothing in the scorer itself knows about them): each attack test shows its attack getting
through such a scorer, so every check it relies on can fail."""

from __future__ import annotations

import dataclasses

from darwin.evaluation.eval_client import EvalClient, EvalSession, eval_spec
from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.flops import GAINS, moved
from darwin.evaluation.scoring import EVAL_BATCH, PROBES, Scorer, log_softmax, make_probes

CHECKS = ("probes", "train_probes", "heldout_scan", "program_bounds", "perturb", "batching",
          "messages", "nonfinite_as_used", "dtype", "subsets")


class _TellingClient(EvalClient):
    """Passes an evaluation error's whole frame on, the candidate's message included."""

    def _error(self) -> Rejected:
        return Rejected(Failure.eval_crash, self._frame().decode("utf-8", "replace"))


class _StrictPerturbationClient(EvalClient):
    """As before scorer v3: non-finite logits under a perturbation are invalid_logits, not a
    sign that the tensor is used."""

    def perturbed(self, name, seed, tokens, gain=1.0, rows=(), cols=()):
        logits = super().perturbed(name, seed, tokens, gain, rows, cols)
        if logits is None:
            raise Rejected(Failure.invalid_logits, "logits contain NaN or infinity")
        return logits


def weakened(*checks: str) -> Scorer:
    """The trusted scorer without ``checks`` (names from CHECKS)."""
    unknown = set(checks) - set(CHECKS)
    assert not unknown, f"no such check: {unknown}"

    class Weaker(Scorer):
        if "nonfinite_as_used" in checks:
            client = _StrictPerturbationClient

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
            def scan_heldout(self, dataset, files, deadline_s):
                return None

        if "perturb" in checks:
            def find_unused(self, result, b, tensors, flops_tensors, rows, rng, tol):
                return None

        if "dtype" in checks:  # scorer v2: every tensor of two or more dims counts
            def countable(self, tensors):
                return {k: v for k, v in tensors.items() if len(v[1]) >= 2}

        if "subsets" in checks:  # scorer v2: whole-tensor noise; moving anything is a matmul
            def find_unused(self, result, b, tensors, flops_tensors, rows, rng, tol):
                reference = log_softmax(b.forward(rows))
                for name, (dtype, _) in sorted(tensors.items()):
                    if dtype.startswith(("F", "BF")) and not any(
                            moved(log_softmax(b.perturbed(name, int(rng.integers(1 << 62)), rows,
                                                          gain)), reference, tol).any()
                            for gain in GAINS):
                        result.unused.append(name)
                        flops_tensors.pop(name, None)

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
