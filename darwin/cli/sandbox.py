"""`darwin sandbox check` and `darwin sandbox build`."""

from __future__ import annotations

import json
import sys
import time

from rich.table import Table

from darwin.cli.app import JsonFlag, err, out, sandbox_app


@sandbox_app.command
def check(*, json_: JsonFlag = False) -> None:
    """Probe each sandbox backend for real and say what isolates here, and why not."""
    from darwin.sandbox import check as run_check

    rows = run_check()
    if json_:
        print(json.dumps(rows, indent=2))
    else:
        table = Table(title="sandbox backends")
        for col in ("backend", "works", "isolates", "details"):
            table.add_column(col)
        for r in rows:
            table.add_row(r["backend"], "yes" if r["works"] else "no",
                          "[green]yes[/]" if r["isolates"] else "[red]no[/]", r["why"])
        out.print(table)
    if not any(r["isolates"] for r in rows):
        if not json_:
            out.print("[red]No isolating backend: untrusted code will be refused "
                      "(start Docker or install bubblewrap, or choose --sandbox unsafe "
                      "knowingly).[/]")
        sys.exit(1)


@sandbox_app.command
def build(*, offline: bool = False, image: str | None = None, torch_version: str = "2.13.0",
          torch_index: str = "https://download.pytorch.org/whl/cpu", json_: JsonFlag = False) -> None:
    """Build the Docker sandbox's image.

    By default from the project's Dockerfile (slim Python + the pinned torch; needs a registry).
    --offline needs no registry or download: a mount-point-only image, with this host's OS tree,
    Python and torch mounted read-only at run time (what `auto` builds by itself when no image
    exists).

    Parameters
    ----------
    offline
        Build without a registry (the host's runtime, mounted read-only).
    image
        The tag (default: $DARWIN_DOCKER_IMAGE or darwin-sandbox:latest).
    torch_version
        The torch the Dockerfile installs.
    torch_index
        The wheel index for torch (a CUDA one on GPU machines, e.g. .../whl/cu126).
    """
    from darwin.sandbox import (
        build_from_dockerfile,
        build_offline,
        connect,
        describe_runtime,
        image_runtime,
    )
    from darwin.settings import get_settings

    name = image or get_settings().docker_image
    client = connect()
    started = time.monotonic()
    try:
        if offline:
            img = build_offline(client, name)
        else:
            img = build_from_dockerfile(
                client, name, torch_version=torch_version, torch_index=torch_index,
                on_line=None if json_ else (lambda line: err.print(line, markup=False,
                                                                   highlight=False)))
    finally:
        client.close()
    row = {"image": name, "id": img.id, "runtime": image_runtime(img),
           "size_mb": round((img.attrs.get("Size") or 0) / 1e6, 1),
           "seconds": round(time.monotonic() - started, 2)}
    if json_:
        print(json.dumps(row))
    else:
        out.print(f"built {name} ({describe_runtime(row['runtime'])}) in {row['seconds']} s; "
                  "`darwin sandbox check` tries it")


