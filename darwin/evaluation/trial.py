"""One trial of a program: train it in the sandbox, then score it, exactly as a child is (the
one path `darwin score`, `darwin baseline` and the evolution engine share)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from darwin.evaluation.budgets import Budget
from darwin.evaluation.eval_client import PrestartedScorer
from darwin.evaluation.failures import Failure
from darwin.evaluation.hardware import device_peak
from darwin.evaluation.scoring import Score, score
from darwin.evaluation.training import NO_EXTRAS, Extras, Prestarted, TrainResult, train
from darwin.sandbox import Outcome, Sandbox

TRAIN_FAILURES = {
    Outcome.crash: Failure.crash,
    Outcome.timeout: Failure.timeout,
    Outcome.oom: Failure.oom,
    Outcome.disk: Failure.disk,
}
# Only claims about the same quantity are compared: a train loss is not a val loss.
CLAIM_KEYS = ("val_loss",)
CLAIM_TOLERANCE = 0.10  # relative: a claimed loss this far off the trusted one is flagged


@dataclass
class Evaluation:
    program: str
    budget: str
    seed: int
    device: str
    train: TrainResult
    score: Score | None = None
    claims: dict = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    mfu: float | None = None
    # "estimated": the FLOPs behind it rest on perturbations inside the candidate's own process
    # (darwin/evaluation/flops.py), which a model that watches its weights can fake; only a
    # "measured" MFU (by a workload the candidate cannot see; none yet) may enter the Pareto set.
    mfu_basis: str = "estimated"
    peak_flops: float | None = None
    peak_label: str = ""

    @property
    def failure(self) -> Failure | None:
        if not self.train.ok:
            return TRAIN_FAILURES[self.train.outcome]
        return self.score.failure if self.score else None

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def detail(self) -> str:
        if not self.train.ok:
            return f"training ended: {self.train.outcome.value} (exit {self.train.returncode})"
        return self.score.detail if self.score else ""

    @property
    def loss(self) -> float | None:
        return self.score.loss if self.score and self.score.ok else None

    def to_dict(self) -> dict:
        s = self.score
        return {
            "program": self.program,
            "budget": self.budget,
            "seed": self.seed,
            "device": self.device,
            "status": "ok" if self.ok else self.failure.value,  # type: ignore[union-attr]
            "detail": self.detail,
            "val_loss": self.loss,
            "perplexity": s.perplexity if s and s.ok else None,
            "eval_tokens": s.tokens if s else 0,
            "checks": s.checks if s else {},
            "parameters": s.parameters if s else None,
            "flops_per_token": s.flops_per_token if s else None,
            "unused_tensors": s.unused if s else [],
            "index_read_tensors": s.index_read if s else [],
            "train_sample_loss": s.train_sample_loss if s and s.ok else None,
            "private_loss": s.private_loss if s and s.ok else None,
            "audit_seed": s.audit_seed if s else "",
            "mfu": self.mfu,
            "mfu_basis": self.mfu_basis,
            "peak_flops": self.peak_flops,
            "peak_label": self.peak_label,
            "train_wall_s": round(self.train.wall_s, 3),
            "train_started_at": self.train.started_at,
            "warm_s": self.train.warm_s,
            "curve": self.train.curve,
            "eval_wall_s": round(s.eval_wall_s, 3) if s else None,
            "tokens_served": self.train.tokens_served,
            "token_refusals": self.train.token_refusals,
            "sandbox": self.train.backend,
            "isolated": self.train.isolated,
            "claims": self.claims,
            "flags": self.flags,
        }


def compare_claims(claims: dict, trusted_loss: float | None) -> list[str]:
    """Flags for claims far off the trusted numbers. ``claims`` were validated by the scorer
    (outputs.read_claims: finite floats, integers within +-2**53), so arithmetic on them holds."""
    flags = []
    if trusted_loss is None:
        return flags
    for key in CLAIM_KEYS:
        value = claims.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) and abs(value) <= 2 ** 53:
            if abs(value - trusted_loss) > CLAIM_TOLERANCE * trusted_loss:
                flags.append(
                    f"claimed {key} {value:.4f} disagrees with the trusted val loss "
                    f"{trusted_loss:.4f}"
                )
    return flags


def train_then_score(
    program: Path,
    budget: Budget,
    seed: int,
    sandbox: Sandbox,
    workdir: Path,
    *,
    device: str = "cpu",
    cpus: list[int] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    trained: TrainResult | None = None,
    on_trained: Callable[[TrainResult], None] | None = None,
    extras: Extras = NO_EXTRAS,
    prestarted: Prestarted | None = None,
    prestarted_scorer: PrestartedScorer | None = None,
) -> Evaluation:
    """Train ``program`` (unless ``trained``, an earlier finished training of it, is given) and
    score what it left. ``on_trained`` sees the training's result before scoring starts."""
    workdir = Path(workdir)
    if trained is None:
        trained = train(program, budget, seed, workdir, sandbox, device=device, cpus=cpus,
                        on_progress=on_progress, extras=extras, prestarted=prestarted)
        if on_trained is not None:
            on_trained(trained)
    ev = Evaluation(str(program), budget.name, seed, device, trained)
    if not trained.ok:
        if prestarted_scorer is not None:
            prestarted_scorer.close()
        return ev
    ev.score = score(trained.out_dir, budget, sandbox, workdir, device=device, cpus=cpus,
                     program=Path(program), packages=extras.packages,
                     prestarted=prestarted_scorer)
    ev.claims = ev.score.claims
    ev.flags = compare_claims(ev.claims, ev.loss) + ev.score.flags
    s = ev.score
    if s.ok and s.flops_per_token:
        # MFU from trusted numbers only: FLOPs from the shapes of the tensors shown (in a fresh
        # process, by perturbation) to change the output, tokens served by our server, wall time
        # measured outside, against the peak of the device used.
        ev.peak_flops, ev.peak_label = device_peak(device, budget.threads)
        if ev.peak_flops and trained.wall_s > 0:
            mfu = s.flops_per_token * trained.tokens_served / trained.wall_s / ev.peak_flops
            if mfu > 1.0:
                ev.flags.append(f"implausible MFU {mfu:.2f} (above the device's peak): not kept")
            else:
                ev.mfu = mfu
    return ev
