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
from darwin.reports import artifact_key, generation_markdown, leaderboard_rows

log = logging.getLogger(__name__)

TABLE_COLUMNS = ("candidate", "generation", "parent", "kind", "operator", "val_loss", "runs",
                 "delta_vs_seed", "status", "in_population")
KEY_FIGURES = ("fitness", "lineage")


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
    rows = [{k: r[k] for k in TABLE_COLUMNS} for r in leaderboard_rows(store)[:50]]
    create_table_artifact(key=artifact_key(store.run_id, "leaderboard"), table=rows,
                          description=f"{store.run_id} after generation {gen}, best first")
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
