"""Publishing to the Prefect UI: per generation a leaderboard table, a markdown report with the
key figures (fitness, lineage) and the path of the full HTML report (rewritten each generation),
and a progress artifact updated as children finish. Artifacts are versioned by key, so the UI
keeps the run's history."""

from __future__ import annotations

import base64
import logging

from prefect import task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE

from darwin.memory import RunStore
from darwin.reports import (
    LEADERBOARD_NOTE,
    artifact_key,
    generation_markdown,
    leaderboard_rows,
    leaderboard_table,
    report_dir,
)

log = logging.getLogger(__name__)

KEY_FIGURES = ("fitness", "lineage")
LATEST_ROWS = 15  # the run page's artifact: the top of the leaderboard


def start_progress(run_id: str, gen: int):
    return create_progress_artifact(
        progress=0.0, key=artifact_key(run_id, f"gen-{gen:03d}-progress"),
        description=f"generation {gen}: children trained and scored")


def set_progress(artifact_id, percent: float) -> None:
    if artifact_id is not None:
        update_progress_artifact(artifact_id=artifact_id, progress=min(100.0, percent))


def write_report(store: RunStore) -> str:
    """The run's HTML report, (re)written in its default folder; markdown for the UI: the key
    figures inline and where the report is. Drawing never fails a generation: a figure that
    cannot be drawn is said in the markdown and the log."""
    from darwin.reports import write_run_report

    said: list[str] = []  # the markdown says it too, next to the tables
    made = write_run_report(store, said.append)
    if made is None:
        log.warning("%s", said[0])
        return f"\n\n({said[0]}.)"
    lines = ["", f"Full report: `{made.path}` (or `darwin report {store.run_id}`)."]
    for name in KEY_FIGURES:
        if name in made.figures:
            uri = base64.b64encode(made.figures[name].read_bytes()).decode()
            lines += ["", f"![{name}](data:image/png;base64,{uri})"]
    return "\n".join(lines)


@task(name="publish", task_run_name="publish-g{gen:03d}", cache_policy=NO_CACHE)
def publish(run_id: str, storage_url: str, gen: int) -> None:
    store = RunStore(storage_url, run_id)
    rows = leaderboard_table(leaderboard_rows(store)[:50])  # as `darwin leaderboard` shows it
    create_table_artifact(key=artifact_key(store.run_id, "leaderboard"), table=rows,
                          description=f"{store.run_id} after generation {gen}, best first. "
                                      f"{LEADERBOARD_NOTE}")
    create_markdown_artifact(key=artifact_key(store.run_id, "report"),
                             markdown=generation_markdown(store, gen) + write_report(store),
                             description=f"generation {gen} report")
    publish_status(store)


def publish_status(store: RunStore, alive: bool | None = None) -> None:
    """The run's status as its own artifact (one key, versioned: the UI keeps each one):
    running, paused with the command that answers, finished or stopped. Never fails the run."""
    from darwin.engine import run_status

    try:
        status = run_status(store, alive=alive)
        create_markdown_artifact(key=artifact_key(store.run_id, "status"),
                                 markdown=f"**{status.state}**: {status.line}",
                                 description=f"{store.run_id}: {status.state}")
    except Exception as e:  # noqa: BLE001 - a status the UI misses is said in the log
        log.warning("could not publish the run's status: %s", e)


@task(name="publish-latest", task_run_name="latest-g{gen:03d}", cache_policy=NO_CACHE)
def publish_latest(run_id: str, storage_url: str, gen: int) -> None:
    """On the run's own flow-run page (the generations' artifacts hang off their subflows):
    where the newest report is and the top of the leaderboard, after each generation."""
    try:
        _latest(run_id, storage_url, gen)
    except Exception as e:  # noqa: BLE001 - a picture in the UI is never worth failing the run
        log.warning("the run page's latest artifact of %s could not be written: %s", run_id, e)


def _latest(run_id: str, storage_url: str, gen: int) -> None:
    store = RunStore(storage_url, run_id)
    page = report_dir([run_id]) / "report.html"
    rows = leaderboard_table(leaderboard_rows(store)[:LATEST_ROWS])
    lines = [f"# {run_id}: after generation {gen}", "",
             f"Newest report: [{page}]({page.as_uri()}) (it reloads itself while the run goes; "
             f"or `darwin report {run_id}`). All runs: `{page.parent.parent / 'index.html'}`.", ""]
    if rows:
        lines += ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(v.replace("|", "\\|") for v in r.values()) + " |"
                  for r in rows]
        lines += ["", LEADERBOARD_NOTE]
    create_markdown_artifact(key=artifact_key(run_id, "latest"), markdown="\n".join(lines),
                             description=f"{run_id}: the newest report and leaderboard")
