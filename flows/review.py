"""Reviews between generations as Prefect pauses that never hang and never fail a run.

After a generation commits, the evolve flow holds the review the core says is due
(``Engine.review_due``): it pauses for typed input whose form is built for this pause (request
ids and candidates are ``Literal`` choices, so the server itself refuses unknown ones), pre-filled
with the stated defaults, with a markdown description of what is being decided (the form's
``_description``; the run's log and `darwin review` show the same words).

A person answers in the Prefect UI, with ``darwin review`` (the run records the API URL and the
flow run to resume in its REVIEW pointer), through the API, or in the terminal running
``darwin run`` (a ``LocalReviewer`` the CLI registers). If nobody answers in time, a watchdog
thread resumes the run with the defaults shortly before Prefect's own pause timeout, which would
fail the run (Prefect 3 fails a pause that times out): the history stays Paused -> Running, and the
record says "defaults applied, nobody answered". The first answer the server accepts wins.

An answer the schema accepts but that makes no sense (a dataset file that does not exist, a
candidate both vetoed and pinned) re-pauses with the reason and the same deadline. If the
process dies while paused, nothing is recorded: the resumed run asks again.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from typing import Any, Literal, Protocol

from pydantic import ConfigDict, Field, create_model

from darwin.engine import ReviewPolicy, RunRef, check_answer, complete, default_answer, engine_for
from darwin.memory import ReviewAnswer, ReviewRecord
from darwin.reports import answer_line, asked, cell, form_page, review_markdown

log = logging.getLogger(__name__)

MARGIN_S = 60  # Prefect's pause timeout is the review window plus this: a backstop only
TEXT_MAX = 2000  # characters of a comment, a value or a note (the server checks it)


class LocalReviewer(Protocol):
    """The terminal of the process running the flow (registered by `darwin run`)."""

    def paused(self, review: ReviewRecord, markdown: str, answered: threading.Event
               ) -> dict | None:
        """Show the review; return an answer to send, or None (nothing to send)."""

    def rejected(self, reason: str) -> None: ...

    def done(self, line: str) -> None: ...


_LOCAL: list[LocalReviewer] = []


def set_local_reviewer(reviewer: LocalReviewer | None) -> None:
    _LOCAL[:] = [reviewer] if reviewer is not None else []


# -- the form ------------------------------------------------------------------------------------
AS_PLANNED = -1  # the form's "remaining" when the run goes on as planned
WORDS_IN_FORM = 240  # characters of a request's words a field's description quotes


def _plain(text: str, limit: int = WORDS_IN_FORM) -> str:
    """Untrusted words in a field's description, which the UI renders as markdown: one line,
    every markdown character escaped (a request cannot make a link or a heading)."""
    # A bare address would still become a link: a zero-width space keeps it text.
    return cell(text, limit).replace("://", ":\u200b//").replace("www.", "www\u200b.")


def _with_losses(ids: list[str], losses: dict[str, float]) -> str:
    return ", ".join(f"{c} (val loss {losses[c]:.4f})" if c in losses else c for c in ids)


def answer_form(review: ReviewRecord, description: str, losses: dict[str, float] | None = None):
    """The RunInput class for this pause: the requests' ids and the candidates are Literal
    choices, every field has its default (refuse, continue), so the form starts filled in.

    What is decided is said in the fields themselves (each request's words and askers, each
    member's val loss): the Prefect UI gives the form all the room it needs and the page above
    it (``description``) only what is left, which is nothing on a laptop's screen."""
    from prefect.input import RunInput

    losses = losses or {}
    forbid = ConfigDict(extra="forbid")
    fields: dict[str, Any] = {}
    if review.requests:
        ids = tuple(r.id for r in review.requests)
        listed = "\n\n".join(
            f"- **{r.id}** ({r.kind}): “{_plain(r.detail)}”, asked by "
            f"{_plain('; '.join(r.results or r.asked_by), 160)}" for r in review.requests)
        decision = create_model(
            "Decision", __config__=forbid,
            request=(Literal[ids], Field(description="which request (listed under Decisions)")),
            verdict=(Literal["approve", "refuse"], "refuse"),
            comment=(str, Field("", max_length=TEXT_MAX,
                                description="read by the model in the next prompts")),
            value=(str, Field("", max_length=TEXT_MAX,
                              description="what an approval grants: a dataset's local file, a "
                                          "package requirement (einops==0.8.1), file names "
                                          "(model.py), a budget (paper)")),
        )
        fields["decisions"] = (list[decision], Field(  # type: ignore[valid-type]
            default=[{"request": i, "verdict": "refuse", "comment": "", "value": ""}
                     for i in ids], title="Decisions on the model's requests",
            description=f"{listed}\n\nOne decision per request; one left out is refused."))
    if review.gate:
        outside = [c for c in review.pinnable if c not in review.population]
        flagged = "; ".join(f"{c} kept out: {_plain(f, 120)}" for c, f in review.flagged.items())
        fields["veto"] = (list[Literal[tuple(review.population)]], Field(
            default=[], description="remove members from the population: "
                                    + _with_losses(review.population, losses)))
        fields["pin"] = (list[Literal[tuple(review.pinnable)]], Field(
            default=[], description="keep these in the population whatever their score"
                                    + (f"; not members now: {_with_losses(outside, losses)}"
                                       if outside else "") + (f" ({flagged})" if flagged else "")))
        fields["stop"] = (bool, Field(False, description="end the run after this generation "
                                                         "(the test split still runs)"))
        # A plain number with -1 for "as planned": the UI draws `int | None` as a type switch
        # ("Property is type None") that people found unclear.
        fields["remaining"] = (int, Field(
            AS_PLANNED, ge=AS_PLANNED, le=1000,
            description="generations still to run after this one (-1: as planned; 0: stop)"))
    fields["note"] = (str, Field("", max_length=TEXT_MAX,
                                 description="a note for the model's next prompts"))
    fields["via"] = (Literal["ui", "cli", "api", "terminal", "timeout"], Field(
        "ui", description="how this answer was given (filled in for you)"))
    fields["reviewer"] = (str, Field("", max_length=200,
                                     description="your name (optional, recorded)"))
    form = create_model(f"ReviewAfterGeneration{review.generation}", __base__=RunInput,
                        **fields)
    form._description = description
    return form


def form_input(review: ReviewRecord, answer: ReviewAnswer) -> dict:
    """The answer as this review's form takes it (only the fields the form has)."""
    data = answer.model_dump(mode="json")
    if data.get("remaining") is None:
        data["remaining"] = AS_PLANNED
    keep = {"note", "via", "reviewer"} | ({"decisions"} if review.requests else set()) | (
        {"veto", "pin", "stop", "remaining"} if review.gate else set())
    return {k: v for k, v in data.items() if k in keep}


def _as_answer(given) -> ReviewAnswer:
    data = given.model_dump(mode="json")
    if "via" not in given.model_fields_set:  # the UI's form always sends it; a bare API call not
        data["via"] = "api"
    data["decisions"] = data.get("decisions") or []
    if data.get("remaining") == AS_PLANNED:
        data["remaining"] = None
    return ReviewAnswer.model_validate(data)


# -- one pause -----------------------------------------------------------------------------------
def _resume(run_id, run_input: dict) -> tuple[bool, str]:
    """Resume the paused run with ``run_input``: (accepted, the server's reason if not)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.responses import SetStateStatus

    with get_client(sync_client=True) as client:
        run = client.read_flow_run(run_id)
        if run.state is None or run.state.type != StateType.PAUSED:
            return False, "the run is not paused any more"
        result = client.resume_flow_run(run_id, run_input=run_input)
    reason = getattr(result.details, "reason", "") or ""
    return result.status == SetStateStatus.ACCEPT, reason


def _until_paused(run_id, answered: threading.Event) -> bool:
    """Wait until the run is Paused (a quick typist can answer before the pause reaches the
    server); False when an answer came from elsewhere meanwhile."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    with get_client(sync_client=True) as client:
        while not answered.is_set():
            state = client.read_flow_run(run_id).state
            if state is not None and state.type == StateType.PAUSED:
                return True
            time.sleep(0.2)
    return False


def pause_with_default(form, defaults: dict, *, timeout: float, poll_s: float, key: str,
                       local: LocalReviewer | None = None, review: ReviewRecord | None = None,
                       markdown: str = "", on_paused=None):
    """Pause for ``form``; if nobody answers in ``timeout`` s, resume with ``defaults``.
    ``on_paused`` runs once the server has the run Paused (so whoever it tells can answer).
    Returns (the answer, whether the defaults were applied by the watchdog)."""
    from prefect.context import FlowRunContext
    from prefect.flow_runs import pause_flow_run

    ctx = FlowRunContext.get()
    assert ctx is not None, "pause_with_default runs in a flow"
    run_id = ctx.flow_run.id
    answered = threading.Event()
    fired: list[bool] = []

    def watchdog() -> None:
        started = time.monotonic()
        if on_paused is not None and _until_paused(run_id, answered):
            try:
                on_paused()
            except Exception as e:  # noqa: BLE001 - the pause itself goes on
                log.warning("could not announce the pause: %s", e)
        if answered.wait(max(0.0, timeout - (time.monotonic() - started))):
            return  # someone answered first
        try:
            ok, reason = _resume(run_id, defaults)
        except Exception as e:  # noqa: BLE001 - the backstop (Prefect's timeout) stays
            log.warning("could not apply the review's defaults: %s", e)
            return
        if ok:
            fired.append(True)
        else:
            log.info("defaults not applied: %s", reason)  # a person was a moment faster

    def terminal() -> None:
        while not answered.is_set():
            given = local.paused(review, markdown, answered)  # type: ignore[union-attr,arg-type]
            if given is None or not _until_paused(run_id, answered):
                return
            try:
                ok, reason = _resume(run_id, given)
            except Exception as e:  # noqa: BLE001
                ok, reason = False, str(e)
            if ok or answered.is_set():
                return
            local.rejected(reason)  # type: ignore[union-attr]

    threads = [threading.Thread(target=contextvars.copy_context().run, args=(watchdog,),
                                daemon=True, name="review-watchdog")]
    if local is not None:
        threads.append(threading.Thread(target=contextvars.copy_context().run, args=(terminal,),
                                        daemon=True, name="review-terminal"))
    for t in threads:
        t.start()
    try:
        given = pause_flow_run(wait_for_input=form, timeout=int(timeout + MARGIN_S),
                               poll_interval=poll_s, key=key)
    finally:
        answered.set()
    threads[0].join(timeout=30)
    return given, bool(fired)


# -- the review between generations ---------------------------------------------------------------
def _announce(store, waiting: dict) -> None:
    """The run is Paused on the server: say where to answer (the REVIEW pointer `darwin review`
    reads, the status artifact the UI shows)."""
    from darwin.tasks import publish as ui

    store.set_waiting(waiting)
    ui.publish_status(store, alive=True)



def _mean_losses(store, ids: list[str]) -> dict[str, float]:
    from darwin.memory import mean_loss

    found: dict[str, list[float]] = {}
    for e in store.evaluations():
        if e.candidate_id in ids and e.val_loss is not None:
            found.setdefault(e.candidate_id, []).append(e.val_loss)
    return {c: mean_loss(v) for c, v in found.items()}


def hold_review(ref: RunRef, gen: int, policy: ReviewPolicy) -> ReviewRecord | None:
    """Hold the review due after generation ``gen`` (if any) and store its answer."""
    from prefect import get_run_logger
    from prefect.client.orchestration import get_client
    from prefect.context import FlowRunContext

    engine = engine_for(ref)
    review = engine.humans.review_due(gen, policy)
    if review is None:
        return None
    store = engine.store
    review.asked_at = time.time()
    review.deadline = review.asked_at + policy.timeout_s
    local = _LOCAL[0] if _LOCAL else None
    if policy.mode == "defaults":
        answer, defaults_applied = default_answer(review, via="no-review"), True
    else:
        ctx = FlowRunContext.get()
        assert ctx is not None
        review.flow_run_id = str(ctx.flow_run.id)
        with get_client(sync_client=True) as client:
            api_url = str(client.api_url)
        defaults = form_input(review, default_answer(review))
        losses = _mean_losses(store, review.pinnable)
        message, attempt = "", 0
        while True:
            left = review.deadline - time.time()
            if left < 1:
                answer, defaults_applied = default_answer(review), True
                break
            attempt += 1
            key = f"review-g{gen:03d}-{attempt}"
            markdown = review_markdown(store, review, message)
            form = answer_form(review, form_page(store, review, message), losses)
            waiting = {"generation": gen, "flow_run_id": review.flow_run_id,
                       "api_url": api_url, "key": key, "message": message,
                       "review": review.model_dump(mode="json")}
            # The run's log in the UI says why it pauses and how to answer.
            get_run_logger().info(
                "waiting for a review after generation %d (%s): press Resume to answer, or run "
                "`darwin review %s`; the defaults (every request refused, the run continues) "
                "apply at %s UTC%s", gen, asked(review), store.run_id,
                time.strftime("%H:%M:%S", time.gmtime(review.deadline)),
                f"; the last answer was not applied: {message}" if message else "")
            given, defaults_applied = pause_with_default(
                form, defaults, timeout=left, poll_s=policy.poll_s, key=key, local=local,
                review=review, markdown=markdown,
                on_paused=lambda w=waiting: _announce(store, w))
            review.answered_at = time.time()  # the run goes on: what follows is its own work
            answer = complete(review, _as_answer(given))
            problems = [] if defaults_applied else check_answer(review, answer)
            if not problems and not defaults_applied:
                review.answer = answer
                problems = engine.humans.apply_approvals(review)  # a dataset stored, a package built
            if not problems:
                break
            review.answer, review.granted = None, {}  # nothing of a refused answer stands
            message = "; ".join(problems)
            review.rejected.append(f"{answer.via}: {message}")
            if local is not None:
                local.rejected(message)
    review.answer = complete(review, answer)
    review.answered_at = review.answered_at or time.time()
    review.defaults_applied = defaults_applied
    store.put_review(review)
    store.set_waiting(None)
    line = answer_line(review, review.answer, defaults_applied)
    print(line)  # the run's log in the UI
    if local is not None:
        local.done(line)
    return review
