"""The offline catalogue: known changes to nanoGPT-style training code, as real edits.

Each operator looks for the construct it names in the program text; if it is there, it returns the
same structured answer an LLM would (reasoning, kind of change, search/replace edits on whole
lines), which then goes through the same strict applier. If the construct is missing (a program
that evolved away from it), the operator says it does not apply. Choices inside an operator come
from the caller's seeded RNG, so a run is reproducible.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from darwin.mutation.answers import ChangeKind, Edit, MutationAnswer

NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"


def unique_line(program: str, pattern: str) -> re.Match | None:
    """The one line matching ``pattern`` (multiline), or None when none or several do."""
    matches = list(re.finditer(pattern, program, flags=re.M))
    return matches[0] if len(matches) == 1 else None  # ambiguous means "does not apply"


def _fmt(x: float) -> str:
    if x == 0:
        return "0.0"
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e") if x and abs(x) < 1e-2 else f"{x:g}"


def _set_number(program: str, rng: np.random.Generator, name: str, options: list[float],
                kind: ChangeKind, why: str, relative: bool = False) -> MutationAnswer | None:
    m = unique_line(program, rf"^(?P<lhs>{name}\s*=\s*)(?P<val>{NUM})(?P<rest>.*)$")
    if m is None:
        return None
    current = float(m.group("val"))
    values = [current * o for o in options] if relative else options
    values = [v for v in values if abs(v - current) > 1e-12]
    if not values:
        return None
    new = float(rng.choice(values))
    line = m.group(0)
    replacement = f"{m.group('lhs')}{_fmt(new)}{m.group('rest')}"
    return MutationAnswer(
        reasoning=f"{why} ({name} {m.group('val')} -> {_fmt(new)}).",
        kind=kind,
        edits=[Edit(search=line, replace=replacement)],
    )


def _replace_line(program: str, pattern: str, make: Callable[[re.Match], str], kind: ChangeKind,
                  why: str) -> MutationAnswer | None:
    m = unique_line(program, pattern)
    if m is None:
        return None
    new = make(m)
    if new == m.group(0):
        return None
    return MutationAnswer(reasoning=why, kind=kind, edits=[Edit(search=m.group(0), replace=new)])


def shape_row(program: str, budget: str) -> re.Match | None:
    """The seed's per-budget shape row (``"cpu": dict(batch_size=…, …)``), when it is there."""
    return unique_line(program, rf'^(?P<indent>\s*)"{budget}":\s*dict\((?P<args>[^)]*)\),?.*$')


def _shape_change(program: str, budget: str, update: Callable[[dict], dict | None],
                  kind: ChangeKind, why: str) -> MutationAnswer | None:
    m = shape_row(program, budget)
    if m is None:
        return None
    try:
        args = {k.strip(): int(v) for k, v in (a.split("=") for a in m.group("args").split(","))}
    except ValueError:
        return None
    new_args = update(dict(args))
    if not new_args or new_args == args:
        return None
    text = ", ".join(f"{k}={v}" for k, v in new_args.items())
    line = m.group(0)
    replacement = line.replace(m.group("args"), text)
    changed = ", ".join(f"{k} {args[k]} -> {v}" for k, v in new_args.items() if args.get(k) != v)
    return MutationAnswer(reasoning=f"{why} ({changed}).", kind=kind,
                          edits=[Edit(search=line, replace=replacement)])


# -- the operators ---------------------------------------------------------------------------
# Each takes (program, rng, budget name) and returns a MutationAnswer or None.


def learning_rate(p, rng, budget):
    return _set_number(p, rng, "learning_rate", [0.5, 2.0, 3.0], ChangeKind.learning_rate,
                       "Short runs often want a different peak learning rate", relative=True)


def warmup(p, rng, budget):
    return _set_number(p, rng, "max_warmup_iters", [10, 25, 50, 200], ChangeKind.schedule,
                       "Warmup length trades early stability for steps at full learning rate")


def decay_floor(p, rng, budget):
    return _set_number(p, rng, "min_lr", [0.0, 3e-5, 3e-4], ChangeKind.schedule,
                       "Where the decay ends decides how much the last steps still learn")


def dropout(p, rng, budget):
    return _set_number(p, rng, "dropout", [0.0, 0.05, 0.1], ChangeKind.regularisation,
                       "A model this small trained this briefly hardly overfits; dropout costs signal")


def weight_decay(p, rng, budget):
    return _set_number(p, rng, "weight_decay", [0.0, 0.01, 0.05, 0.2], ChangeKind.regularisation,
                       "Weight decay strength changes the effective learning rate of the matrices")


def betas(p, rng, budget):
    m = unique_line(p, rf"^(?P<lhs>beta1,\s*beta2\s*=\s*)(?P<b1>{NUM}),\s*(?P<b2>{NUM})(?P<rest>.*)$")
    if m is None:
        return None
    b1, b2 = float(m.group("b1")), float(m.group("b2"))
    options = [(b1, 0.95), (b1, 0.999), (0.8, b2), (0.95, b2)]
    options = [o for o in options if o != (b1, b2)]
    nb1, nb2 = options[int(rng.integers(len(options)))]
    return MutationAnswer(
        reasoning=f"Adam's moment averaging sets how fast it reacts (betas {b1}, {b2} -> {nb1}, {nb2}).",
        kind=ChangeKind.optimizer,
        edits=[Edit(search=m.group(0), replace=f"{m.group('lhs')}{nb1}, {nb2}{m.group('rest')}")],
    )


def grad_clip(p, rng, budget):
    return _set_number(p, rng, "grad_clip", [0.0, 0.5, 2.0], ChangeKind.regularisation,
                       "Clipping bounds update size; too tight slows learning, none risks spikes")


def width(p, rng, budget):
    def update(a):
        if "n_embd" not in a or "n_head" not in a:
            return None
        new = a["n_embd"] * 2 if rng.random() < 0.5 else a["n_embd"] // 2
        if new % a["n_head"] or new // a["n_head"] < 8:
            return None
        a["n_embd"] = new
        return a
    return _shape_change(p, budget, update, ChangeKind.width_depth,
                         "Width sets capacity per token against steps per second")


def depth(p, rng, budget):
    def update(a):
        if "n_layer" not in a:
            return None
        a["n_layer"] = max(1, a["n_layer"] + (1 if a["n_layer"] == 1 or rng.random() < 0.5 else -1))
        return a
    return _shape_change(p, budget, update, ChangeKind.width_depth,
                         "Depth trades expressiveness against optimisation ease in a short run")


def heads(p, rng, budget):
    def update(a):
        if "n_head" not in a or "n_embd" not in a:
            return None
        for new in ([a["n_head"] * 2, a["n_head"] // 2] if rng.random() < 0.5
                    else [a["n_head"] // 2, a["n_head"] * 2]):
            if new >= 1 and a["n_embd"] % new == 0 and a["n_embd"] // new >= 8:
                a["n_head"] = new
                return a
        return None
    return _shape_change(p, budget, update, ChangeKind.width_depth,
                         "Head count trades head size against the number of attention patterns")


def batch_block(p, rng, budget):
    def update(a):
        if "batch_size" not in a:
            return None
        a["batch_size"] = a["batch_size"] * 2 if rng.random() < 0.5 else max(1, a["batch_size"] // 2)
        return a
    return _shape_change(p, budget, update, ChangeKind.batch_block,
                         "The same tokens as fewer, larger batches or more, smaller steps")


def activation(p, rng, budget):
    new = str(rng.choice(["F.silu(", "F.mish("]))
    return _replace_line(p, r"^.*F\.gelu\(.*$", lambda m: m.group(0).replace("F.gelu(", new, 1),
                         ChangeKind.activation,
                         f"Swap the MLP's GELU for {new[2:-1]}, a smooth gate that often trains faster.")


def rmsnorm(p, rng, budget):
    pattern = r"nn\.LayerNorm\((?P<dim>[^(),]+(?:\[[^\]]*\])?)(?:,\s*bias=[^()]+)?\)"
    lines = [m for m in re.finditer(rf"^.*{pattern}.*$", p, flags=re.M)]
    if not lines:
        return None
    edits = []
    seen = set()
    for m in lines:
        line = m.group(0)
        if line in seen:
            continue
        seen.add(line)
        edits.append(Edit(search=line, replace=re.sub(pattern, r"nn.RMSNorm(\g<dim>)", line)))
    if any(p.count(e.search) != 1 for e in edits):
        return None
    return MutationAnswer(
        reasoning="Replace LayerNorm by RMSNorm: no mean subtraction, fewer ops, same stability.",
        kind=ChangeKind.normalisation, edits=edits)


def post_norm(p, rng, budget):
    attn = unique_line(p, r"^(?P<i>\s*)x = x \+ self\.attn\(self\.ln_1\(x\)\)\s*$")
    mlp = unique_line(p, r"^(?P<i>\s*)x = x \+ self\.mlp\(self\.ln_2\(x\)\)\s*$")
    if attn is None or mlp is None:
        return None
    return MutationAnswer(
        reasoning="Move the norms after the residual additions (post-LN, the original Transformer): "
                  "shallow models can train well this way.",
        kind=ChangeKind.normalisation,
        edits=[Edit(search=attn.group(0), replace=f"{attn.group('i')}x = self.ln_1(x + self.attn(x))"),
               Edit(search=mlp.group(0), replace=f"{mlp.group('i')}x = self.ln_2(x + self.mlp(x))")])


def untie(p, rng, budget):
    m = unique_line(p, r"^\s*self\.lm_head\.weight = self\.wte\.weight.*$")
    if m is None:
        return None
    indent = re.match(r"\s*", m.group(0)).group(0)
    return MutationAnswer(
        reasoning="Untie the output head from the input embedding: separate matrices for reading "
                  "and writing characters.",
        kind=ChangeKind.architecture,
        edits=[Edit(search=m.group(0), replace=f"{indent}# (untied: lm_head keeps its own matrix)")])


def optimizer(p, rng, budget):
    return _replace_line(
        p, r"^.*torch\.optim\.AdamW\(.*$",
        lambda m: m.group(0).replace("torch.optim.AdamW(", "torch.optim.Adam(", 1),
        ChangeKind.optimizer,
        "Use Adam with L2 regularisation instead of AdamW's decoupled decay.")


def init_scale(p, rng, budget):
    m = unique_line(p, rf"^(?P<pre>\s*(?:torch\.)?nn\.init\.normal_\(module\.weight, mean=0\.0, std=)"
                 rf"(?P<std>{NUM})(?P<rest>\).*)$")
    if m is None:
        return None
    std = float(m.group("std"))
    new = float(rng.choice([s for s in (0.01, 0.03, 0.05) if abs(s - std) > 1e-9]))
    return MutationAnswer(
        reasoning=f"Change the initial weight scale (std {std} -> {new}).",
        kind=ChangeKind.initialisation,
        edits=[Edit(search=m.group(0), replace=f"{m.group('pre')}{new}{m.group('rest')}")])


def schedule_shape(p, rng, budget):
    m = unique_line(p, r"^(?P<i>\s*)coeff = 0\.5 \* \(1\.0 \+ math\.cos\(math\.pi \* (?P<arg>.+)\)\)\s*$")
    if m is None:
        return None
    linear = bool(rng.random() < 0.5)
    new = f"{m.group('i')}coeff = 1.0 - {m.group('arg')}" if linear else f"{m.group('i')}coeff = 1.0"
    shape = "linear decay" if linear else "a constant learning rate after warmup"
    return MutationAnswer(reasoning=f"Replace the cosine decay with {shape}.",
                          kind=ChangeKind.schedule, edits=[Edit(search=m.group(0), replace=new)])


def mlp_ratio(p, rng, budget):
    fc = unique_line(p, r'^.*nn\.Linear\(cfg\["n_embd"\], 4 \* cfg\["n_embd"\].*$')
    proj = unique_line(p, r'^.*nn\.Linear\(4 \* cfg\["n_embd"\], cfg\["n_embd"\].*$')
    if fc is None or proj is None:
        return None
    r = int(rng.choice([2, 3, 6]))
    return MutationAnswer(
        reasoning=f"Change the MLP's hidden width from 4x to {r}x the embedding.",
        kind=ChangeKind.architecture,
        edits=[Edit(search=fc.group(0), replace=fc.group(0).replace("4 * cfg", f"{r} * cfg")),
               Edit(search=proj.group(0), replace=proj.group(0).replace("4 * cfg", f"{r} * cfg"))])


@dataclass(frozen=True)
class Operator:
    name: str
    kind: ChangeKind
    structural: bool
    propose: Callable[[str, np.random.Generator, str], MutationAnswer | None]


CATALOGUE: list[Operator] = [
    Operator("learning_rate", ChangeKind.learning_rate, False, learning_rate),
    Operator("warmup", ChangeKind.schedule, False, warmup),
    Operator("decay_floor", ChangeKind.schedule, False, decay_floor),
    Operator("dropout", ChangeKind.regularisation, False, dropout),
    Operator("weight_decay", ChangeKind.regularisation, False, weight_decay),
    Operator("betas", ChangeKind.optimizer, False, betas),
    Operator("grad_clip", ChangeKind.regularisation, False, grad_clip),
    Operator("width", ChangeKind.width_depth, False, width),
    Operator("depth", ChangeKind.width_depth, False, depth),
    Operator("heads", ChangeKind.width_depth, False, heads),
    Operator("batch_block", ChangeKind.batch_block, False, batch_block),
    Operator("activation", ChangeKind.activation, True, activation),
    Operator("rmsnorm", ChangeKind.normalisation, True, rmsnorm),
    Operator("post_norm", ChangeKind.normalisation, True, post_norm),
    Operator("untie_embeddings", ChangeKind.architecture, True, untie),
    Operator("optimizer", ChangeKind.optimizer, True, optimizer),
    Operator("init_scale", ChangeKind.initialisation, True, init_scale),
    Operator("schedule_shape", ChangeKind.schedule, True, schedule_shape),
    Operator("mlp_ratio", ChangeKind.architecture, True, mlp_ratio),
]
OPERATORS = {op.name: op for op in CATALOGUE}
