"""`darwin review`: answer the review a paused run waits for, from any shell; and the terminal
reviewer `darwin run` registers, so a person at the run's terminal can answer there.

A paused run records in its store (the REVIEW pointer) what it asks, the Prefect API it runs on
and the flow run to resume; `darwin review` reads that, checks the answer as the run will, and
resumes the flow run through the API. The run applies the first answer the server accepts.
"""

from __future__ import annotations

import getpass
import json
import os
import select
import socket
import sys
import threading
import time
from collections.abc import Callable

from rich.markdown import Markdown
from rich.markup import escape

from darwin.cli.app import JsonFlag, app, err, out
from darwin.errors import UserError
from darwin.memory import RequestDecision, ReviewAnswer, ReviewRecord

ReadLine = Callable[[str], "str | None"]  # a prompt -> the line typed (None: abandoned)
VALUE_QUESTIONS = {  # what an approval of each kind grants (its value)
    "dataset": "the local text file to use",
    "package": "the requirement to install (e.g. einops==0.8.1)",
    "file_layout": "the file names allowed next to train.py (e.g. model.py)",
    "budget": "the budget of the new run (tiny|cpu|paper)",
}


def who() -> str:
    try:
        return f"{getpass.getuser()}@{socket.gethostname()}"
    except Exception:  # noqa: BLE001 - a name is a courtesy, not a requirement
        return ""


# -- asking a person, one question at a time --------------------------------------------------
def ask(review: ReviewRecord, read: ReadLine, say: Callable[[str], None], via: str
        ) -> ReviewAnswer | None:
    """Walk a person through ``review``; None when they stop answering (end of input, or an
    answer came from elsewhere). Enter keeps each default (refuse, keep, as planned). Each
    value is checked as it is typed, as the run will check it, and a wrong one is asked again:
    nothing typed before it is lost."""
    from darwin.engine import check_answer

    def until_sound(question: str, parse: Callable[[str], tuple[object, list[str]]]):
        while True:
            said = read(question)
            if said is None:
                raise _Abandoned
            value, problems = parse(said.strip())
            if not problems:
                return value
            say("not that: " + "; ".join(problems) + " (asked again)")

    def verdict(said: str):
        word = said.lower()
        if word in ("", "r", "refuse"):
            return "refuse", []
        if word in ("a", "approve"):
            return "approve", []
        return None, [f"{said!r}: type a (approve) or r (refuse); Enter refuses"]

    def problems_of(**answer) -> list[str]:
        return check_answer(review, ReviewAnswer(**answer))

    try:
        decisions = []
        for r in review.requests:
            detail = " ".join(r.detail.split())[:160]
            chosen = until_sound(f"{r.id} {r.kind}: {detail}\n  approve or refuse? [a/R] ",
                                 verdict)
            value = ""
            if chosen == "approve" and r.kind in VALUE_QUESTIONS:
                value = until_sound(f"  {VALUE_QUESTIONS[r.kind]}: ", lambda v, r=r: (
                    v, problems_of(decisions=[RequestDecision(request=r.id, verdict="approve",
                                                              value=v)])))
            comment = until_sound("  a comment for the model (enter: none): ",
                                  lambda v: (v, []))
            decisions.append(RequestDecision(request=r.id, verdict=chosen, comment=comment,
                                             value=value))
        veto: list[str] = []
        pin: list[str] = []
        remaining = None
        if review.gate:
            veto = until_sound(
                f"veto members (space-separated; enter: none) [{' '.join(review.population)}]: ",
                lambda v: (v.split(), problems_of(veto=v.split())))
            pin = until_sound(f"pin candidates (enter: none) [{' '.join(review.pinnable)}]: ",
                              lambda v: (v.split(), problems_of(veto=veto, pin=v.split())))
            remaining = until_sound(
                "generations still to run (enter: as planned; 0: stop after this one): ",
                _remaining)
        note = until_sound("a note for the model's next prompts (enter: none): ",
                           lambda v: (v, []))
    except _Abandoned:
        return None
    stop = remaining == 0
    return ReviewAnswer(decisions=decisions, veto=veto, pin=pin, stop=stop,
                        remaining=None if stop else remaining, note=note, via=via,
                        reviewer=who())  # type: ignore[arg-type]


class _Abandoned(Exception):
    """The person stopped answering (end of input, or an answer came from elsewhere)."""


def _remaining(said: str) -> tuple[int | None, list[str]]:
    from darwin.engine import MAX_REMAINING

    if not said:
        return None, []
    if said.isdigit() and int(said) <= MAX_REMAINING:
        return int(said), []
    return None, [f"{said!r}: give a whole number from 0 to {MAX_REMAINING}, or Enter for "
                  "as planned"]


class LineReader:
    """Lines from a file descriptor, given up when ``stop`` is set (another answer came first):
    a blocking input() could not be abandoned."""

    def __init__(self, fd: int, stop: threading.Event, prompt: Callable[[str], None]):
        self.fd, self.stop, self.prompt, self.buffer = fd, stop, prompt, b""

    def __call__(self, question: str) -> str | None:
        self.prompt(question)
        while b"\n" not in self.buffer:
            if self.stop.is_set():
                return None
            ready, _, _ = select.select([self.fd], [], [], 0.25)
            if ready:
                chunk = os.read(self.fd, 4096)
                if not chunk:
                    return None  # end of input
                self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").rstrip("\r")


class TerminalReviewer:
    """The review in the terminal running `darwin run`: the page, then the questions (when
    stdin is a terminal); an answer from the UI or another shell ends the questions."""

    def __init__(self, run_id: str, live, interactive: bool, fd: int | None = None):
        self.run_id, self.live, self.interactive = run_id, live, interactive
        self.fd = sys.stdin.fileno() if fd is None else fd

    def paused(self, review: ReviewRecord, markdown: str, answered: threading.Event):
        self.live.hold()
        until = time.strftime('%H:%M:%S', time.localtime(review.deadline))
        if not err.is_terminal and not self.interactive:  # a log (nohup): one plain line
            from darwin.reports import asked

            err.print(f"paused after generation {review.generation} for {asked(review)}: answer "
                      f"in the Prefect UI or with: darwin review {self.run_id} (the defaults "
                      f"apply at {until})", markup=False, highlight=False, soft_wrap=True)
            return None
        err.print(Markdown(markdown))
        err.print(f"[bold]The run is paused.[/] Answer here, in the Prefect UI, or from another "
                  f"shell with [bold]darwin review {self.run_id}[/]; the defaults apply at "
                  f"{until}.")
        if not self.interactive:
            return None
        read = LineReader(self.fd, answered,
                          lambda q: err.print(q, end="", markup=False, highlight=False))
        answer = ask(review, read, self.say, via="terminal")
        if answer is None:
            return None
        from darwin.engine import check_answer, complete

        while problems := check_answer(review, complete(review, answer)):
            err.print(f"[red]not applied:[/] {escape('; '.join(problems))}")
            answer = ask(review, read, self.say, via="terminal")
            if answer is None:
                return None
        from darwin.flows import form_input

        return form_input(review, complete(review, answer))

    @staticmethod
    def say(text: str) -> None:
        err.print(text, markup=False, highlight=False)

    def rejected(self, reason: str) -> None:
        err.print(f"[red]answer not applied:[/] {escape(reason)}")

    def done(self, line: str) -> None:
        """The answer's confirmation, on a line of its own that stays (the live display comes
        back below it)."""
        err.print(line, style="bold" if err.is_terminal else None, markup=False,
                  highlight=False, soft_wrap=True)
        self.live.release()


# -- darwin review ----------------------------------------------------------------------------
def _pairs(items: list[str] | None, flag: str) -> dict[str, str]:
    pairs = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"invalid {flag} {item!r}: write ID=TEXT, for example r1='too big'")
        key, text = item.split("=", 1)
        pairs[key.strip()] = text
    return pairs


def _waiting_run(storage_url: str, run_id: str | None):
    from darwin.memory import RunStore, list_runs
    from darwin.reports import open_run

    if run_id is not None:
        store = open_run(storage_url, run_id)
        waiting = store.waiting()
        if not waiting:
            raise UserError(f"run {store.run_id} is not waiting for a review")
        return store, waiting
    for rid in reversed(list_runs(storage_url)):
        store = RunStore(storage_url, rid)
        if waiting := store.waiting():
            return store, waiting
    raise UserError(f"no run in {storage_url} is waiting for a review")


def _flow_state(api_url: str, flow_run_id: str, run_id: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}), \
                get_client(sync_client=True) as client:
            return client.read_flow_run(flow_run_id).state
    except Exception as e:  # noqa: BLE001 - said in one line below
        reason = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise UserError(f"run {run_id} waits for a review on the Prefect API at {api_url}, "
                        f"which does not answer ({reason}): is the process running it alive? "
                        f"(if not: darwin run --resume {run_id} asks again)") from None


def _send(api_url: str, flow_run_id: str, run_input: dict) -> tuple[str, str]:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: api_url}), \
            get_client(sync_client=True) as client:
        result = client.resume_flow_run(flow_run_id, run_input=run_input)
    return result.status.value, getattr(result.details, "reason", "") or ""


@app.command
def review(
    run_id: str | None = None,
    *,
    approve: list[str] | None = None,
    refuse: list[str] | None = None,
    comment: list[str] | None = None,
    value: list[str] | None = None,
    veto: list[str] | None = None,
    pin: list[str] | None = None,
    stop: bool = False,
    remaining: int | None = None,
    note: str = "",
    defaults: bool = False,
    reviewer: str | None = None,
    json_: JsonFlag = False,
) -> None:
    """Show the review RUN waits for (default: the latest run waiting), and answer it.

    With no answer flags, asks in the terminal (or prints the review and how to answer).

    Parameters
    ----------
    run_id
        The paused run (see `darwin runs`).
    approve
        Approve request ID (repeatable).
    refuse
        Refuse request ID (repeatable; a request not approved is refused).
    comment
        ID=TEXT: a comment on a request, read by the model in the next prompts (repeatable).
    value
        ID=VALUE: what an approval grants (repeatable): a local text file for a dataset, a
        requirement for a package (einops==0.8.1), file names for a file layout (model.py), a
        budget (paper) for a budget request.
    veto
        Remove a member from the population (review gates; repeatable).
    pin
        Keep a candidate in the population whatever its score (review gates; repeatable).
    stop
        End the run after this generation (review gates).
    remaining
        Generations still to run after this one (review gates).
    note
        A note for the model's next prompts.
    defaults
        Answer with the defaults (every request refused, the run continues unchanged).
    reviewer
        Your name in the record (default: user@host).
    """
    from prefect.client.schemas.objects import StateType

    from darwin.engine import check_answer, complete, default_answer, run_alive
    from darwin.flows import form_input, quiet_prefect
    from darwin.reports import answer_line
    from darwin.settings import get_settings

    if stop and remaining not in (None, 0):  # said before anything is looked up
        raise UserError(f"--stop with --remaining {remaining}: --stop ends the run after this "
                        f"generation, --remaining {remaining} runs {remaining} more; give one")
    quiet_prefect()
    store, waiting = _waiting_run(get_settings().storage_url, run_id)
    rec = ReviewRecord.model_validate(waiting["review"])
    if not run_alive(store):  # its pause would take an answer nobody reads
        raise UserError(f"run {store.run_id} was paused for a review, but the process running "
                        f"it is gone: continue it with darwin run --resume {store.run_id} (the "
                        "review is asked again)")
    state = _flow_state(waiting["api_url"], waiting["flow_run_id"], store.run_id)
    if state is None or state.type != StateType.PAUSED:
        name = state.name if state is not None else "unknown"
        hint = (f": continue it with darwin run --resume {store.run_id} (the review is asked "
                "again)" if state is not None and state.is_final() else "")
        raise UserError(f"run {store.run_id} is not paused (its flow run is {name}){hint}")
    flags = any([approve, refuse, comment, value, veto, pin, stop, remaining is not None, note,
                 defaults])
    if not flags:
        if json_:
            print(json.dumps({"run_id": store.run_id, "waiting": waiting}, indent=2))
            return
        from darwin.reports import review_markdown

        out.print(Markdown(review_markdown(store, rec, waiting.get("message", ""))))
        if not sys.stdin.isatty():
            ids = " ".join(f"--approve {r.id}" for r in rec.requests[:1])
            out.print(f"answer with: darwin review {store.run_id} {ids} --note TEXT "
                      "(or --defaults)".replace("  ", " "))
            return
        answer = ask(rec, _input, TerminalReviewer.say, via="cli")
        while answer is not None and (problems := check_answer(rec, complete(rec, answer))):
            TerminalReviewer.say(f"not applied: {'; '.join(problems)} (asked again)")
            answer = ask(rec, _input, TerminalReviewer.say, via="cli")
        if answer is None:
            raise UserError("no answer given: the run stays paused")
    else:
        answer = default_answer(rec, via="cli")
        comments, values = _pairs(comment, "--comment"), _pairs(value, "--value")
        verdicts = {d.request: d for d in answer.decisions}
        for rid, verdict in [(r, "approve") for r in approve or []] + [
                (r, "refuse") for r in refuse or []]:
            verdicts[rid] = RequestDecision(request=rid, verdict=verdict)  # type: ignore[arg-type]
        for rid in set(comments) | set(values):
            d = verdicts.setdefault(rid, RequestDecision(request=rid))
            d.comment, d.value = comments.get(rid, d.comment), values.get(rid, d.value)
        answer = answer.model_copy(update={
            "decisions": list(verdicts.values()), "veto": list(veto or []),
            "pin": list(pin or []), "stop": stop, "remaining": remaining, "note": note})
    answer.reviewer = reviewer if reviewer is not None else who()
    answer = complete(rec, answer) if not _unknown(rec, answer) else answer
    problems = check_answer(rec, answer)
    if problems:
        raise UserError("; ".join(problems) + " (the run stays paused)")
    status, reason = _send(waiting["api_url"], waiting["flow_run_id"], form_input(rec, answer))
    if status == "REJECT":
        raise UserError(f"the Prefect server refused the answer: {reason} (the run stays paused)")
    if status != "ACCEPT":
        raise UserError("someone answered first: the run goes on with their answer "
                        f"(see: darwin leaderboard {store.run_id})")
    stored, repaused = _outcome(store, rec.generation, waiting)
    if repaused is not None:
        raise UserError(f"not applied: {repaused['message']} (the run stays paused until "
                        f"{time.strftime('%H:%M:%S', time.localtime(rec.deadline))}; answer "
                        f"again with darwin review {store.run_id})")
    if json_:
        print(json.dumps(stored.model_dump(mode="json") if stored else {
            "run_id": store.run_id, "answer": answer.model_dump(mode="json")}, indent=2))
        return
    shown = stored.answer if stored is not None and stored.answer is not None else answer
    out.print(answer_line(rec, shown, defaults=False) + "; the run goes on", markup=False)


def _unknown(rec: ReviewRecord, answer: ReviewAnswer) -> bool:
    ids = {r.id for r in rec.requests}
    return any(d.request not in ids for d in answer.decisions)


def _input(question: str) -> str | None:
    try:
        return input(question)
    except EOFError:
        return None


def _outcome(store, generation: int, waiting: dict, timeout_s: float = 120.0):
    """What the run made of the answer: (the review as stored, None), or (None, the new
    pause) when carrying it out failed (a contaminated dataset, a package without a wheel);
    (None, None) if the run said nothing in time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        stored = store.review(generation)
        if stored is not None:
            return stored, None
        now = store.waiting()
        if now and now.get("key") != waiting.get("key") and now.get("message"):
            return None, now
        time.sleep(0.2)
    return None, None

