"""`darwin report`: a run's figures and one self-contained HTML page; several runs compared."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

from cyclopts import Parameter

from darwin.cli.app import JsonFlag, app, err, out
from darwin.cli.read import AtFlag, AtGenerationFlag, StorageFlag, chosen_storage_url, open_as_of


@app.command
def report(*runs: str,
           out_dir: Annotated[Path | None, Parameter(name="--out")] = None,
           open_: Annotated[bool, Parameter(name="--open", negative=())] = False,
           index: Annotated[bool, Parameter(name="--index", negative=())] = False,
           at: AtFlag = None, at_generation: AtGenerationFlag = None,
           storage_url: StorageFlag = None, json_: JsonFlag = False) -> None:
    """Draw RUN's figures (fitness, lineage, loss curves, val loss vs MFU, time and cost, kinds
    of change) and write one HTML page with them, the leaderboard, the best program and its
    lineage's reasoning. With several runs: their best-so-far curves overlaid.

    Parameters
    ----------
    runs
        Run ids (default: the latest run); two or more compare them.
    out_dir
        Folder for the page and the PNGs (default $DARWIN_HOME/reports/RUN).
    open_
        Open the page in a browser.
    index
        Only (re)write the runs index (index.html in the reports folder): every run with its
        status, best, change against the seed with its noise, mutator and model, and date.
        Every report drawn into the default folder refreshes it too.
    """
    from darwin.errors import UserError
    from darwin.reports import build_comparison, build_index, build_report, report_dir

    if index:
        if runs or at is not None or at_generation is not None:
            raise UserError("--index lists every run: give no run and no --at")
        url = chosen_storage_url(storage_url)
        try:
            path = build_index(url, Path(out_dir) if out_dir else report_dir(["-"]).parent)
        except OSError as e:
            raise UserError(f"cannot write the index: {e.strerror or e}; give another folder "
                            "with --out") from None
        if json_:
            print(json.dumps({"index": str(path)}, indent=2))
        else:
            out.print(f"index: {path}")
        _open(path, open_)
        return

    if len(runs) > 1 and (at is not None or at_generation is not None):
        raise UserError("--at / --at-generation draw one run as it was; give one run")
    stores = [open_as_of(r, storage_url, at, at_generation) for r in (runs or (None,))]
    ids = [s.run_id for s in stores]
    if len(set(ids)) != len(ids):
        raise UserError(f"a run is named twice: {' '.join(ids)}; give each run once")
    past = getattr(stores[0], "at", None)
    target = Path(out_dir) if out_dir else report_dir(
        [f"{ids[0]}-at-g{past:03d}"] if past is not None else ids)
    if target.exists() and not target.is_dir():
        raise UserError(f"--out {target} is a file: give a folder")
    default = out_dir is None and past is None and len(stores) == 1
    try:
        made = (build_report(stores[0], target, index="../index.html" if default else None)
                if len(stores) == 1 else build_comparison(stores, target))
        if default:  # the runs index beside the default folder, which the page links to
            build_index(chosen_storage_url(storage_url), target.parent)
    except OSError as e:
        raise UserError(f"cannot write the report to {target}: {e.strerror or e}; give another "
                        "folder with --out") from None
    if json_:
        print(json.dumps(made.to_json(), indent=2))
    else:
        for what in made.missing:
            err.print(f"[yellow]not there yet:[/] {what}", highlight=False)
        out.print(f"report: {made.path}")
        out.print(f"figures: {', '.join(p.name for p in made.figures.values())} in "
                  f"{made.path.parent}")
    _open(made.path, open_)


def _open(path: Path, really: bool) -> None:
    if really:
        import webbrowser

        if not webbrowser.open(path.resolve().as_uri()):
            err.print(f"no browser to open here: open {path} yourself")
