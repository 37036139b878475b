"""Tuned hyper-parameter baselines: Optuna's TPE and random samplers as mutators.

``hpo-tpe`` and ``hpo-random`` answer the question DARWIN must face: does evolving the code beat
a tuned hyper-parameter search given the same trainings? Each child is the stock seed program
with the values a sampler asks for (learning rate, decay floor, warm-up, dropout, weight decay,
betas, clipping, batch size, depth, heads and head size: whatever constants the seed exposes),
written as real search/replace edits of kind ``hyperparameter`` that go through the same
strict applier, sandbox, scorer and selection as any other child.

The sampler keeps no state of its own: the engine hands it every earlier trial (its parameters,
read from the run's store, and the child's first-seed result: a val loss, or a crash) and a
fresh study replays them (``study.add_trial``) before asking. Given the run seed and that history
the proposal is the same, so a resumed run proposes the children the uninterrupted one would.

A proposal beyond the budget's memory cap, or whose training compute could not end within the
deadline (more than ``MAX_COMPUTE`` times the seed's), is never trained: the sampler is told it
failed and asked again; it is stored with the trial so later proposals learn from it too.

Optuna is imported on first use only: ``import darwin.mutation`` stays cheap.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass

import numpy as np

from darwin.evaluation import Budget
from darwin.mutation.answers import ChangeKind, Edit, MutationAnswer
from darwin.mutation.base import MutationContext, MutationResult, RepairCase, apply_answer
from darwin.mutation.catalogue import NUM, shape_row, unique_line
from darwin.mutation.edits import EditError, unified_diff
from darwin.mutation.repair import RuleRepair

SAMPLERS = ("tpe", "random")
# TPE models the results once this many trials are complete (random draws before): one `cpu`
# generation's children, so a default run of 3 generations has two generations of modelling
# (Optuna's default of 10 would leave TPE a random search for the whole run).
STARTUP_TRIALS = 4
MAX_COMPUTE = 4.0  # training FLOPs, relative to the seed's: the seed trains in a fifth of the
# `cpu` deadline, so 4x still ends in time (the catalogue's widest step, doubling width, is 4x)
MAX_ASKS = 64  # proposals out of bounds before giving up (a handful is usual)
BASE_MEMORY_MB = 600  # the interpreter, torch and the token client, before any tensor
VOCAB = 65  # the characters of tiny Shakespeare (the scorer's vocabulary)
SCALARS = {  # constant name in the seed -> (low, high, log scale)
    "learning_rate": (1e-4, 1e-2, True),
    "max_warmup_iters": (0, 200, False),
    "dropout": (0.0, 0.3, False),
    "weight_decay": (0.0, 0.3, False),
    "grad_clip": (0.0, 2.0, False),
}


def _number_line(program: str, name: str):
    return unique_line(program, rf"^(?P<lhs>{name}\s*=\s*)(?P<val>{NUM})(?P<rest>.*)$")


def _betas_line(program: str):
    return unique_line(
        program, rf"^(?P<lhs>beta1,\s*beta2\s*=\s*)(?P<b1>{NUM}),\s*(?P<b2>{NUM})(?P<rest>.*)$")


def _shape(program: str, budget: str) -> dict[str, int] | None:
    m = shape_row(program, budget)
    if m is None:
        return None
    try:
        return {k.strip(): int(v) for k, v in (a.split("=") for a in m.group("args").split(","))}
    except ValueError:
        return None


def _fmt(x: float) -> str:
    return f"{x:.4g}"  # readable, and a beta2 of 0.9996 stays below 1


def tunable(program: str, budget: str) -> list[str]:
    """The constants of ``program`` a tuned search can set (no Optuna needed to tell)."""
    names = [name for name in SCALARS if _number_line(program, name) is not None]
    if "learning_rate" in names and _number_line(program, "min_lr") is not None:
        names.append("min_lr")  # set as a share of the peak learning rate
    if _betas_line(program) is not None:
        names.append("beta1, beta2")
    shape = _shape(program, budget)
    if shape and {"batch_size", "n_layer", "n_head", "n_embd"} <= set(shape):
        names.append(f'SHAPES["{budget}"]')
    return names


def search_space(program: str, budget: str) -> dict:
    """Optuna distributions for what ``program`` exposes (name -> distribution)."""
    from optuna.distributions import (
        CategoricalDistribution,
        FloatDistribution,
        IntDistribution,
    )

    space: dict = {}
    for name, (low, high, log) in SCALARS.items():
        if _number_line(program, name) is not None:
            space[name] = (IntDistribution(low, high) if isinstance(low, int)
                           else FloatDistribution(low, high, log=log))
    if "learning_rate" in space and _number_line(program, "min_lr") is not None:
        space["min_lr_ratio"] = FloatDistribution(0.0, 0.5)  # the decay's floor, of the peak
    if _betas_line(program) is not None:
        space["beta1"] = FloatDistribution(0.8, 0.95)
        space["beta2"] = FloatDistribution(0.9, 0.999)
    shape = _shape(program, budget)
    if shape and {"batch_size", "n_layer", "n_head", "n_embd"} <= set(shape):
        b, layers, heads = shape["batch_size"], shape["n_layer"], shape["n_head"]
        head_size = shape["n_embd"] // heads
        space["batch_size"] = CategoricalDistribution(sorted({max(1, b // 2), b, 2 * b, 4 * b}))
        space["n_layer"] = IntDistribution(1, max(2, 2 * layers))
        space["n_head"] = CategoricalDistribution(sorted({max(1, heads // 2), heads, 2 * heads}))
        space["head_size"] = CategoricalDistribution(
            sorted({s for s in (head_size // 2, head_size, 2 * head_size) if s >= 8}
                   or {head_size}))
    return space


def training_flops_per_token(n_layer: int, n_embd: int, block: int) -> float:
    """Forward and backward FLOPs per token (6N plus attention), the budget's tokens being fixed."""
    return 6 * 12 * n_layer * n_embd ** 2 + 12 * n_layer * block * n_embd


def memory_mb(batch: int, block: int, n_layer: int, n_head: int, n_embd: int) -> float:
    """A generous estimate of a child's peak memory training in fp32: the weights with their
    gradients and Adam's two moments (16 bytes a parameter), the activations kept for the
    backward pass (Korthikanti et al.'s 34sbh + 5as²b per layer, doubled for fp32) and the
    logits, on top of the process' base."""
    params = 12 * n_layer * n_embd ** 2 + (VOCAB + block) * n_embd
    activations = batch * block * n_layer * (68 * n_embd + 10 * n_head * block)
    logits = 3 * 4 * batch * block * VOCAB
    return BASE_MEMORY_MB + (16 * params + activations + logits) / 2 ** 20


@dataclass
class Proposal:
    """A sampler's parameters, as an answer editing the seed (None: out of bounds, with why)."""

    answer: MutationAnswer | None
    why_not: str = ""


def write_params(program: str, budget: Budget, params: dict) -> Proposal:
    """The seed ``program`` with ``params`` written into its constants and shape row."""
    edits, changes = [], []

    def set_line(m, new_line: str, what: str) -> None:
        if new_line != m.group(0):
            edits.append(Edit(search=m.group(0), replace=new_line))
            changes.append(what)

    for name in SCALARS:
        if name in params and (m := _number_line(program, name)) is not None:
            new = params[name]
            text = str(new) if isinstance(new, int) else _fmt(new)
            set_line(m, f"{m.group('lhs')}{text}{m.group('rest')}", f"{name} {m.group('val')} -> {text}")
    if "min_lr_ratio" in params and (m := _number_line(program, "min_lr")) is not None:
        text = _fmt(params["learning_rate"] * params["min_lr_ratio"])
        set_line(m, f"{m.group('lhs')}{text}{m.group('rest')}", f"min_lr {m.group('val')} -> {text}")
    if "beta1" in params and (m := _betas_line(program)) is not None:
        b1, b2 = _fmt(params["beta1"]), _fmt(params["beta2"])
        set_line(m, f"{m.group('lhs')}{b1}, {b2}{m.group('rest')}",
                 f"betas {m.group('b1')}, {m.group('b2')} -> {b1}, {b2}")
    shape = _shape(program, budget.name)
    if shape is not None and "batch_size" in params:
        new = dict(shape, batch_size=params["batch_size"], n_layer=params["n_layer"],
                   n_head=params["n_head"], n_embd=params["n_head"] * params["head_size"])
        block = shape.get("block_size", budget.eval_context)
        peak = memory_mb(new["batch_size"], block, new["n_layer"], new["n_head"], new["n_embd"])
        if peak > budget.memory_mb:
            return Proposal(None, f"about {peak:.0f} MB, over the {budget.memory_mb} MB cap")
        compute = (training_flops_per_token(new["n_layer"], new["n_embd"], block)
                   / training_flops_per_token(shape["n_layer"], shape["n_embd"], block))
        if compute > MAX_COMPUTE:
            return Proposal(None, f"{compute:.1f}x the seed's training compute (at most "
                                  f"{MAX_COMPUTE:g}x ends within the deadline)")
        m = shape_row(program, budget.name)
        args = ", ".join(f"{k}={v}" for k, v in new.items())
        set_line(m, m.group(0).replace(m.group("args"), args),
                 ", ".join(f"{k} {shape[k]} -> {v}" for k, v in new.items() if shape[k] != v))
    if not edits:
        return Proposal(None, "the same values as the seed")
    return Proposal(MutationAnswer(reasoning="; ".join(changes), kind=ChangeKind.hyperparameter,
                                   edits=edits))


def replay(trials: list[dict]) -> list:
    """Earlier trials as Optuna's frozen trials. A crash (or a proposal out of bounds) is told as
    bad as the worst trained result, so TPE learns to avoid it (Optuna's FAIL state would be
    ignored by its model); before any result, it is told as a FAIL."""
    import optuna
    from optuna.distributions import json_to_distribution

    losses = [t["value"] for t in trials if t.get("value") is not None]
    worst = max(losses) if losses else None
    frozen = []
    for t in trials:
        dists = {k: json_to_distribution(json.dumps(v)) for k, v in t["distributions"].items()}
        params = {k: v for k, v in t["params"].items() if k in dists}
        value = t.get("value")
        if value is None and worst is not None:
            value = worst
        state = optuna.trial.TrialState.COMPLETE if value is not None else \
            optuna.trial.TrialState.FAIL
        frozen.append(optuna.trial.create_trial(state=state, value=value, params=params,
                                                distributions=dists))
    return frozen


def _study(sampler: str, seed: int):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if sampler == "tpe":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            chosen = optuna.samplers.TPESampler(seed=seed, n_startup_trials=STARTUP_TRIALS,
                                                multivariate=True, constant_liar=False)
    else:
        chosen = optuna.samplers.RandomSampler(seed=seed)
    return optuna.create_study(direction="minimize", sampler=chosen)


class HPOMutator:
    """A tuned hyper-parameter search as a mutator: it edits the seed, never the target."""

    modes = ("search_replace",)
    redraws_duplicates = False  # the sampler knows its history; a redraw would break its order
    uses_llm = False
    edits_seed = True

    def __init__(self, sampler: str, rng: np.random.Generator | int = 0):
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {sampler!r}")
        self.sampler = sampler
        self.name = f"hpo-{sampler}"
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)

    def mutate(self, ctx: MutationContext) -> MutationResult:
        import optuna
        from optuna.distributions import distribution_to_json

        result = MutationResult(mutator=self.name, mode="search_replace", operator=self.name)
        seed_program = ctx.seed_program or ctx.target_program
        space = search_space(seed_program, ctx.budget.name)
        if not space:
            result.failure = "no_operator_applies"
            result.detail = "the seed exposes none of the constants a tuned search sets"
            return result
        seed = int(self.rng.integers(1 << 31))
        study = _study(self.sampler, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.add_trials(replay(ctx.trials))
            dists = {k: json.loads(distribution_to_json(v)) for k, v in space.items()}
            worst = max((t["value"] for t in ctx.trials if t.get("value") is not None),
                        default=None)
            rejected = []
            for _ in range(MAX_ASKS):
                result.attempts += 1
                trial = study.ask(space)
                proposal = write_params(seed_program, ctx.budget, trial.params)
                if proposal.answer is not None:
                    try:
                        child = apply_answer(seed_program, proposal.answer, "search_replace")
                    except EditError as e:
                        proposal = Proposal(None, str(e))
                if proposal.answer is None:  # told as replay() will tell it later
                    if worst is None:
                        study.tell(trial, state=optuna.trial.TrialState.FAIL)
                    else:
                        study.tell(trial, worst)
                    rejected.append({"params": trial.params, "why": proposal.why_not})
                    continue
                break
            else:
                result.failure = "no_operator_applies"
                result.detail = f"{MAX_ASKS} proposals, none within the budget's bounds"
                return result
        told = len(ctx.trials)
        crashed = sum(1 for t in ctx.trials if t.get("value") is None)
        answer = proposal.answer
        answer.reasoning = (f"[{self.name}, told {told} earlier result(s), {crashed} of them "
                            f"failed or out of bounds] {answer.reasoning}")
        result.child, result.answer = child, answer
        result.diff = unified_diff(seed_program, child)
        result.trial = {"sampler": self.sampler, "seed": seed, "told": told,
                        "params": trial.params, "distributions": dists, "rejected": rejected}
        return result

    def repair(self, broken: str, parent: str | None, case: RepairCase,
               budget: Budget) -> MutationResult:
        """The same rules as every mutator without an LLM (NaN, out of memory, revert a hunk)."""
        return RuleRepair().repair(broken, parent, case, budget)


def trial_records(trial: dict, value: float | None) -> list[dict]:
    """One stored trial and its result as the history entries a sampler replays: its rejected
    proposals (out of bounds), then the trial itself (``value`` None: it failed)."""
    entries = [{"params": r["params"], "distributions": trial["distributions"], "value": None}
               for r in trial.get("rejected", [])]
    entries.append({"params": trial["params"], "distributions": trial["distributions"],
                    "value": value})
    return entries

