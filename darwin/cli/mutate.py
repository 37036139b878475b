"""`darwin mutate`: one mutation of a program (LLM or offline), written as a child to score."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter
from rich.markup import escape

from darwin.cli.app import JsonFlag, app, err, out
from darwin.errors import UserError


@app.command
def mutate(
    program: Path,
    *,
    proposer: Path | None = None,
    mutator: str = "auto",
    mode: str = "search_replace",
    budget: str = "cpu",
    seed: int = 0,
    out_path: Annotated[Path | None, Parameter(name="--out")] = None,
    note: list[str] | None = None,
    json_: JsonFlag = False,
) -> None:
    """Make one mutation of PROGRAM and write the child (then `darwin score` it).

    Parameters
    ----------
    program
        The target program to improve.
    proposer
        The proposing agent's own program (the paper's agents modify one another's code).
    mutator
        auto (the LLM when a key is set, else offline) | openai | offline | random | hpo-tpe |
        hpo-random (one draw with no history).
    mode
        search_replace | whole | chunk (LLM only; offline mutators edit).
    budget
        The budget the child will be trained under.
    seed
        Seed of the offline mutators' choices and of the chunk-wise operator.
    out_path
        Where to write the child (default: PROGRAM's name with .child.py).
    note
        A human note for the prompt (repeatable).
    """
    from darwin.evaluation import get_budget
    from darwin.mutation import MODES, MutationContext, make_mutator

    if mode not in MODES:
        raise UserError(f"unknown mode {mode!r}: use --mode " + "|".join(MODES))
    b = get_budget(budget)
    for p in (program, proposer):
        if p is not None and not Path(p).is_file():
            raise UserError(f"program not found: {p}")
    chosen = make_mutator(mutator, rng=seed)
    if not chosen.uses_llm:
        err.print(f"mutator: {chosen.name} (offline catalogue, no LLM)"
                  + (" - no API key is configured" if mutator == "auto" else ""))
    ctx = MutationContext(
        target_program=Path(program).read_text(),
        budget=b,
        mode=mode,  # type: ignore[arg-type]
        proposer_program=Path(proposer).read_text() if proposer else None,
        human_notes=list(note or []),
        seed=seed,
    )
    result = chosen.mutate(ctx)
    target = Path(out_path) if out_path else Path(program).with_suffix(".child.py")
    if result.ok:
        assert result.child is not None
        target.write_text(result.child)
    report = {
        "ok": result.ok,
        "child": str(target) if result.ok else None,
        "mutator": result.mutator,
        "mode": result.mode,
        "operator": result.operator,
        "kind": result.answer.kind.value if result.answer else None,
        "reasoning": result.answer.reasoning if result.answer else None,
        "notes": [*(result.answer.notes if result.answer else []), *result.notes],
        "requests": [r.model_dump(mode="json") for r in result.answer.requests] if result.answer else [],
        "failure": result.failure,
        "detail": result.detail,
        "attempts": result.attempts,
        "input_tokens": result.input_tokens,
        "output_tokens": result.output_tokens,
        "cost_usd": round(result.cost_usd, 6),
        "diff": result.diff,
    }
    if json_:
        print(json.dumps(report, indent=2))
    elif result.ok:
        out.print(f"[bold]{report['kind']}[/]: {report['reasoning']}", markup=True)
        out.print(result.diff, markup=False, highlight=False, soft_wrap=True)
        for r in report["requests"]:
            out.print(f"[yellow]request ({r['kind']}):[/] {escape(r['detail'])}")  # the model's
        out.print(f"child written to {target}; {report['input_tokens']}+{report['output_tokens']} "
                  f"tokens, ${report['cost_usd']:.4f}, {result.attempts} attempt(s). "
                  f"Next: darwin score {target}")
    else:
        out.print(f"[red]mutation failed ({result.failure}):[/] {escape(result.detail)}")
    if not result.ok:
        sys.exit(1)


