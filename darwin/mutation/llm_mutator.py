"""Mutation by an LLM: build the prompt, ask, read the answer, apply it strictly.

Two modes here: ``search_replace`` (edits to the target program) and ``whole`` (a complete new
program). An answer that cannot be read or applied goes back to the model with the reason (a "did
you mean" hint, the syntax error) for a bounded number of tries; after that the mutation fails as
data. Transport failures (unreachable, 401, 429 after the client's retries, the spending cap) end
the mutation at once, typed, without a crash.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import jinja2

from darwin.errors import LLMError
from darwin.evaluation import Budget
from darwin.llm import LLMClient
from darwin.mutation.answers import (
    AnswerError,
    ChangeKind,
    MutationAnswer,
    RequestKind,
    answer_schema,
    parse_answer,
)
from darwin.mutation.base import (
    MODES,
    FailureNote,
    MutationContext,
    MutationResult,
    RepairCase,
    apply_answer,
    apply_files,
)
from darwin.mutation.edits import EditError, check_program, unified_diff


@lru_cache(maxsize=1)
def _templates() -> jinja2.Environment:
    folder = str(resources.files("darwin.mutation") / "prompts")
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # noqa: S701 - prompts are plain text, not HTML
    )


def render(name: str, **values: object) -> str:
    return _templates().get_template(name).render(**values)


def build_messages(ctx: MutationContext, structured: bool) -> list[dict]:
    system = render("system.md", budget=ctx.budget)
    user = render(
        "mutate.md",
        mode=ctx.mode,
        structured=structured,
        target_program=ctx.target_program,
        proposer_program=ctx.proposer_program,
        proposer_ideas=ctx.proposer_ideas,
        target_score=ctx.target_score,
        lessons=ctx.lessons,
        failures=ctx.failures,
        human_notes=ctx.human_notes,
        kinds=", ".join(k.value for k in ChangeKind),
        request_kinds="|".join(k.value for k in RequestKind),
        task=ctx.task,
        repair_summary=ctx.repair_summary,
        files=ctx.files,
        allowed_files=ctx.allowed_files,
    )
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


class LLMMutator:
    """The LLM as a mutator (see the module docstring); it repairs by asking for a fix."""

    name = "openai"
    modes = MODES
    redraws_duplicates = False  # every draw costs a call; persisted answers are reused instead
    uses_llm = True
    edits_seed = False

    def __init__(self, client: LLMClient, max_attempts: int = 3):
        self.client = client
        self.max_attempts = max_attempts

    def mutate(self, ctx: MutationContext) -> MutationResult:
        if ctx.mode not in MODES:
            raise ValueError(f"unknown mutation mode {ctx.mode!r}")
        if ctx.mode == "chunk":
            return self._mutate_chunks(ctx)
        messages = build_messages(ctx, structured=self.client._json_ok)
        result = MutationResult(mutator=self.name, mode=ctx.mode, prompt=messages[-1]["content"])
        made: dict[str, str] = {}

        files: dict[str, dict[str, str]] = {}

        def check(answer: MutationAnswer) -> None:
            files["child"] = apply_files(ctx.files, answer, ctx.allowed_files)
            made["child"] = apply_answer(ctx.target_program, answer, ctx.mode)
            if made["child"] == ctx.target_program and files["child"] == ctx.files:
                raise EditError("the answer changes nothing")

        answer = self._ask(messages, result, check, schema=answer_schema())
        if answer is None:
            return result
        result.child, result.answer = made["child"], answer
        result.diff = unified_diff(ctx.target_program, made["child"])
        if files["child"] != ctx.files:
            result.files = files["child"]
            for name in sorted(files["child"]):
                if files["child"][name] != ctx.files.get(name):
                    result.diff += unified_diff(ctx.files.get(name, ""), files["child"][name],
                                                name=name)
        result.failure, result.detail = None, ""
        return result

    def repair(self, broken: str, parent: str | None, case: RepairCase,
               budget: Budget) -> MutationResult:
        """Ask the model to fix ``broken`` given our summary of its failure and its quoted log."""
        ctx = MutationContext(
            target_program=broken,
            budget=budget,
            mode="search_replace",
            task="repair",
            repair_summary=f"{case.cls} ({case.summary})",
            failures=[FailureNote(f"this program: {case.summary}", case.log_tail)],
        )
        result = self.mutate(ctx)
        result.mode = "repair"
        return result

    def _ask(self, messages: list[dict], result: MutationResult, check,
             schema: dict | None = None) -> MutationAnswer | None:
        """Ask until ``check(answer)`` passes, sending each problem back to the model (bounded
        tries); None when the mutation has failed (the reason is in ``result``)."""
        for _ in range(self.max_attempts):
            result.attempts += 1
            try:
                completion = self.client.complete(messages, schema=schema)
            except LLMError as e:
                result.failure, result.detail = e.kind.value, e.detail
                return None
            result.usage.append(completion.usage)
            try:
                answer = parse_answer(completion.text)
                check(answer)
                return answer
            except (AnswerError, EditError) as e:
                result.failure, result.detail = "unusable_answer", str(e)
                messages = [
                    *messages,
                    {"role": "assistant", "content": completion.text[:20000]},
                    {"role": "user", "content": render("retry.md", problem=str(e))},
                ]
        return None

    def _mutate_chunks(self, ctx: MutationContext) -> MutationResult:
        """The paper's operator: rewrite each chunk with some probability, carrying the
        program's outline and summaries of the chunks already rewritten."""
        import numpy as np

        from darwin.mutation.chunks import join, outline, split

        result = MutationResult(mutator=self.name, mode="chunk")
        chunks = split(ctx.target_program)
        candidates = [i for i, c in enumerate(chunks) if c.kind in ("class", "function")]
        if not candidates:
            result.failure, result.detail = "unusable_answer", "the program has no chunks to rewrite"
            return result
        rng = np.random.default_rng(ctx.seed)
        chosen = [i for i in candidates if rng.random() < ctx.chunk_probability]
        if not chosen:
            chosen = [int(rng.choice(candidates))]
        system = render("system.md", budget=ctx.budget)
        done: list[str] = []
        first: MutationAnswer | None = None
        for i in chosen:
            chunk = chunks[i]
            user = render(
                "chunk.md", outline=outline(chunks), done=done, lessons=ctx.lessons,
                human_notes=ctx.human_notes, index=i, chunk_kind=chunk.kind,
                chunk_name=chunk.name, chunk=_split_prefix(chunk.text)[1].strip("\n"),
                kinds=", ".join(k.value for k in ChangeKind),
            )
            result.prompt = result.prompt or user

            def check(answer: MutationAnswer, i: int = i, chunk=chunk) -> None:
                if not answer.program:
                    raise AnswerError("give the complete new chunk in one ```python block")
                trial = [*chunks]
                trial[i] = type(chunk)(chunk.kind, chunk.name, _as_chunk(answer.program, chunk.text))
                check_program(join(trial))

            answer = self._ask(
                [{"role": "system", "content": system}, {"role": "user", "content": user}],
                result, check,
            )
            if answer is None:
                return result
            assert answer.program is not None
            chunks[i] = type(chunk)(chunk.kind, chunk.name, _as_chunk(answer.program, chunk.text))
            done.append(f"chunk {i} ({chunk.name}): {answer.reasoning}")
            first = first or answer
        child = join(chunks)
        if child == ctx.target_program:
            result.failure, result.detail = "unusable_answer", "the rewritten chunks change nothing"
            return result
        assert first is not None
        result.answer = first.model_copy(update={"reasoning": " ".join(done), "program": None})
        result.child = child
        result.diff = unified_diff(ctx.target_program, child)
        result.failure, result.detail = None, ""
        return result


def _split_prefix(text: str) -> tuple[str, str]:
    """(leading blank/comment lines, the rest): the comments above a definition stay as they are."""
    lines = text.splitlines(keepends=True)
    n = 0
    while n < len(lines) and (not lines[n].strip() or lines[n].lstrip().startswith("#")):
        n += 1
    return "".join(lines[:n]), "".join(lines[n:])


def _as_chunk(new: str, old: str) -> str:
    """The new chunk body in the old chunk's place, keeping its leading comments and spacing."""
    prefix, body = _split_prefix(old)
    trail = body[len(body.rstrip("\n")) :]
    return prefix + new.strip("\n") + (trail or "\n")
