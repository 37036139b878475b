"""`darwin dev llm-server`: a local OpenAI-compatible server to try everything without a key."""

from __future__ import annotations

import json
from pathlib import Path

from darwin.cli.app import dev_app, err
from darwin.errors import UserError


@dev_app.command(name="llm-server")
def llm_server(
    *,
    port: int = 8001,
    script: Path | None = None,
    api_key: str | None = None,
    ask: list[str] | None = None,
) -> None:
    """Serve an OpenAI-compatible chat API on 127.0.0.1 with scripted (or demo) answers.

    Parameters
    ----------
    port
        TCP port on 127.0.0.1.
    script
        A JSON file with a list of answers (see darwin/llm/devserver.py); demo answers otherwise.
    api_key
        Accept only this key (default: any).
    ask
        KIND: TEXT, a request to humans every demo answer makes (repeatable), e.g.
        "package: einops would shorten the attention code"; kinds: dataset, package,
        file_layout, budget, other.
    """
    from darwin.llm import ScriptedLLMServer

    items = []
    if script is not None:
        try:
            items = json.loads(Path(script).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read --script {script}: {e}") from None
        if not isinstance(items, list):
            raise UserError(f"--script {script} must hold a JSON list of answers")
    try:
        server = ScriptedLLMServer(items, api_key=api_key, port=port, asks=ask)
    except OSError as e:
        raise UserError(f"cannot listen on 127.0.0.1:{port}: {e.strerror}; try --port") from None
    err.print(f"scripted OpenAI-compatible server on {server.url} "
              f"({len(items)} scripted answers, then demo answers). Use it with:\n"
              f"  export OPENAI_BASE_URL={server.url} OPENAI_API_KEY={api_key or 'anything'}\n"
              "Ctrl-C stops it.")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


