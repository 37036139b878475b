"""A local OpenAI-compatible server with scripted answers, for tests and for trying DARWIN by hand
(`darwin dev llm-server`). Real HTTP on 127.0.0.1, so the real `openai` client is exercised.

Each incoming chat completion takes the next scripted item (or, when the script is empty, a demo
answer that tunes a hyper-parameter of whatever program the prompt carries). An item is a dict:

    {"content": "..."}                  a normal answer
    {"json": {...}}                     a normal answer whose content is this object as JSON
    {"status": 429}                     an HTTP error (any status), with retry-after-ms: 1
    {"delay_s": 5, "content": "..."}    a slow answer
    {"malformed": true}                 a 200 whose body is not JSON
    {"no_json_schema": true, ...}       refuse requests that ask for a JSON schema (HTTP 400)

``asks`` adds requests to humans ("package: einops would help") to every demo answer, to try the
review pauses by hand.

Usage is counted as 1 token per 4 characters, so tests can predict token and cost sums.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def count_tokens(text: str) -> int:
    return max(1, len(text) // 4)


def demo_answer(prompt: str) -> str:
    """A valid answer for whatever the prompt asks: nudge a hyper-parameter of the target program
    (as an edit, or as the whole program), or hand a chunk back with a note."""
    chunk = re.search(r"## Chunk \d+ to rewrite[^\n]*\n```python\n(.*?)\n```", prompt, re.S)
    if chunk:
        body = chunk.group(1)
        return ("REASONING: demo server: the chunk is fine as it is; noted.\nKIND: other\n"
                f"```python\n# reviewed by the demo server\n{body}\n```\n")
    match = re.search(r"## The target program to improve\n```python\n(.*?)\n```", prompt, re.S)
    program = match.group(1) if match else ""
    for name, new in (("dropout", "0.0"), ("learning_rate", "2e-3"), ("weight_decay", "0.05")):
        line = re.search(rf"^{name}\s*=\s*[^\n#]+", program, flags=re.M)
        if line and line.group(0).split("=", 1)[1].strip() != new:
            kind = "regularisation" if name != "learning_rate" else "learning_rate"
            if "COMPLETE new program" in prompt:
                whole = program.replace(line.group(0), f"{name} = {new}", 1)
                return (f"REASONING: demo server: set {name} to {new}.\nKIND: {kind}\n"
                        f"```python\n{whole}\n```\n")
            return (
                f"REASONING: demo server: set {name} to {new}.\nKIND: {kind}\n"
                f"<<<<<<< SEARCH\n{line.group(0)}\n=======\n{name} = {new}\n>>>>>>> REPLACE\n"
            )
    return "REASONING: demo server has no idea for this program.\nKIND: other\n"


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            return  # a client that gave up waiting (the slow-answer scripts do this on purpose)
        super().handle_error(request, client_address)


class ScriptedLLMServer:
    def __init__(self, script: list[dict] | None = None, api_key: str | None = None,
                 port: int = 0, host: str = "127.0.0.1", asks: list[str] | None = None):
        self.script: list[dict] = list(script or [])
        self.asks = list(asks or [])
        self.api_key = api_key
        self.requests: list[dict] = []  # request bodies (never headers: they carry the key)
        self.usage: list[dict] = []  # the usage each answered completion reported
        self.auth_failures = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def _error(self, status: int, message: str) -> None:
                body = json.dumps({"error": {"message": message, "type": "scripted",
                                             "code": status}}).encode()
                self._send(status, body, {"retry-after-ms": "1"})

            def do_GET(self) -> None:  # noqa: N802
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, json.dumps({"object": "list", "data": [
                        {"id": "scripted", "object": "model", "owned_by": "darwin"}]}).encode())
                else:
                    self._error(404, "not found")

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("content-length", 0))
                raw = self.rfile.read(length)
                if server.api_key is not None and (
                    self.headers.get("authorization") != f"Bearer {server.api_key}"
                ):
                    with server._lock:
                        server.auth_failures += 1
                    return self._error(401, "invalid api key")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._error(404, "not found")
                try:
                    body = json.loads(raw)
                except ValueError:
                    return self._error(400, "body is not JSON")
                with server._lock:
                    server.requests.append(body)
                    item = server.script.pop(0) if server.script else None
                server._answer(self, body, item)

        self._httpd = _QuietServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def enqueue(self, *items: dict) -> None:
        with self._lock:
            self.script.extend(items)

    def start(self) -> ScriptedLLMServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> ScriptedLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def serve_forever(self) -> None:
        self._httpd.serve_forever()

    # -- answers ---------------------------------------------------------------------------
    def _answer(self, handler: Any, body: dict, item: dict | None) -> None:
        prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        if item is None:
            asked = "".join(f"REQUEST {a}\n" for a in self.asks)
            item = {"content": demo_answer(prompt) + asked}
        if item.get("delay_s"):
            time.sleep(float(item["delay_s"]))
        if item.get("no_json_schema") and body.get("response_format"):
            # Emulate a server without structured outputs; the item stays for the retry.
            with self._lock:
                self.script.insert(0, {k: v for k, v in item.items() if k != "no_json_schema"})
            return handler._error(400, "response_format json_schema is not supported")
        if "status" in item and item["status"] != 200:
            return handler._error(int(item["status"]), "scripted error")
        if item.get("malformed"):
            return handler._send(200, b"<html>this is not JSON</html>")
        content = json.dumps(item["json"]) if "json" in item else str(item.get("content", ""))
        usage = {"prompt_tokens": count_tokens(prompt), "completion_tokens": count_tokens(content)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        with self._lock:
            self.usage.append(dict(usage))
        payload = {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "scripted"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": usage,
        }
        handler._send(200, json.dumps(payload).encode())
