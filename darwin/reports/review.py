"""What a person reading a review sees: one markdown page (the Prefect UI shows it above the
resume form; the terminal renders the same text), and the one-line summary of an answer.

The model's words (request details) are untrusted: they are flattened to one line and escaped,
so a request can neither break the tables nor inject markup into the UI.
"""

from __future__ import annotations

import datetime as dt
import html

from darwin.memory import ReviewAnswer, ReviewRecord, RunStore
from darwin.reports.views import generation_markdown


def cell(text: str, limit: int = 300) -> str:
    """Untrusted text as one markdown table cell."""
    flat = " ".join(str(text).split())
    if len(flat) > limit:
        flat = flat[: limit - 1] + "…"
    flat = html.escape(flat, quote=False)
    for ch in "\\|`*_[]#":
        flat = flat.replace(ch, "\\" + ch)
    return flat


def _clock(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%H:%M:%S UTC")


def asked(review: ReviewRecord) -> str:
    """What a review waits for, in words."""
    return " and ".join(w for w in (
        f"{len(review.requests)} request(s) from the model" if review.requests else "",
        "a review gate" if review.gate else "") if w)


def review_markdown(store: RunStore, review: ReviewRecord, message: str = "") -> str:
    run = store.run_id
    what = asked(review)
    left = max(0, review.deadline - review.asked_at)
    lines = [f"# Review after generation {review.generation} of {run}", "",
             f"Waiting for {what}. Answer before **{_clock(review.deadline)}** "
             f"({left / 60:.0f} min from the pause); after that the defaults apply: "
             "every request refused, the run continues unchanged.", ""]
    if message:
        lines += [f"> **Your last answer was not applied:** {cell(message, 1000)}", ""]
    if review.requests:
        lines += ["## Requests from the model", "",
                  "| id | kind | request (the model's words) | asked by (their result) |",
                  "|---|---|---|---|"]
        for r in review.requests:
            lines.append(f"| {r.id} | {r.kind} | {cell(r.detail)} | "
                         f"{cell('; '.join(r.results or r.asked_by))} |")
        lines += ["", "Approve or refuse each one in `decisions` (refuse is the default); a "
                  "comment goes to the model in the next prompts. An approval says in `value` "
                  "what it grants: a dataset, the local text file; a package, the requirement "
                  "(`einops==0.8.1`); a file layout, the file names (`model.py`); a budget, "
                  "`tiny`, `cpu` or `paper` (a new run: the answer prints its command).", ""]
    if review.flagged:
        lines += ["## Children kept out by an integrity flag", "",
                  "Their loss may come from held-out text, not modelling; selection never takes "
                  "them. Pin one at a review gate only after reading its program.", "",
                  "| child | flag |", "|---|---|"]
        lines += [f"| {cid} | {cell(flag)} |" for cid, flag in review.flagged.items()]
        lines.append("")
    body = generation_markdown(store, review.generation).split("\n", 1)[1]
    lines += ["## The generation", body.strip(), ""]
    if review.gate:
        lines += ["## Review gate", "",
                  f"- `veto`: remove members from the population ({', '.join(review.population)})",
                  "- `pin`: keep a candidate in the population whatever its score "
                  f"({', '.join(review.pinnable)})",
                  "- `stop`: end the run after this generation (the test split still runs)",
                  "- `remaining`: how many more generations to run (-1: as planned)",
                  "- `note`: a note the model reads in the next prompts", ""]
    ids = " ".join(f"--approve {r.id}" for r in review.requests[:1])
    lines += ["## How to answer", "",
              "Fill in the form below and press **Resume**, or from a shell:", "",
              f"    darwin review {run} {ids} --note 'your note'".replace("  ", " "), ""]
    return "\n".join(lines)


def form_page(store: RunStore, review: ReviewRecord, message: str = "") -> str:
    """The short page above the Prefect UI's resume form: the UI gives it only the height the
    form leaves, so it says what waits and until when; the form's fields say what is decided
    (each request's words, each member's val loss) and the full page is `darwin review`'s."""
    lines = [f"## Review after generation {review.generation} of {store.run_id}", "",
             f"Waiting for {asked(review)}. Answer before **{_clock(review.deadline)}**; "
             "after that the defaults apply (every request refused, the run continues).", ""]
    if message:
        lines += [f"> **Your last answer was not applied:** {cell(message, 1000)}", ""]
    lines += [f"The whole page (the generation's tables): `darwin review {store.run_id}` or the "
              "run's report artifact.", ""]
    return "\n".join(lines)


def answer_line(review: ReviewRecord, answer: ReviewAnswer, defaults: bool) -> str:
    """One line: who answered, and what it changes."""
    parts = []
    verdicts = {d.request: d.verdict for d in answer.decisions}
    approved = [r for r in review.requests if verdicts.get(r.id) == "approve"]
    refused = [r for r in review.requests if verdicts.get(r.id, "refuse") == "refuse"]
    if approved:
        parts.append("approved " + ", ".join(f"{r.id} ({r.kind})" for r in approved))
    if refused:
        parts.append("refused " + ", ".join(r.id for r in refused))
    if answer.veto:
        parts.append("vetoed " + ", ".join(answer.veto))
    if answer.pin:
        parts.append("pinned " + ", ".join(answer.pin))
    if answer.stop:
        parts.append("stop after this generation")
    elif answer.remaining is not None:
        parts.append(f"{answer.remaining} more generation(s)")
    if answer.note.strip():
        parts.append("a note for the model")
    for granted in review.granted.values():
        if granted.get("kind") == "budget":
            parts.append(f"start the {granted['budget']} run with: {granted['command']}")
    who = "nobody answered: defaults applied" if defaults else f"answered via {answer.via}" + (
        f" by {answer.reviewer}" if answer.reviewer else "")
    return f"review after generation {review.generation}: {who}; " + (
        "; ".join(parts) or "the run continues unchanged")
