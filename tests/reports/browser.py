"""Headless Chromium driven through the DevTools protocol, for the report page's tests: load a
file, run JavaScript in it, dispatch real mouse events, and record every network request, console
message, dialog and exception the page caused."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path


def chromium() -> str | None:
    return next((p for n in ("chromium", "chromium-browser", "google-chrome")
                 if (p := shutil.which(n))), None)


class Browser:
    def __init__(self, width: int = 1400, height: int = 1000):
        from websockets.sync.client import connect

        self.events: list[dict] = []
        self._profile = tempfile.TemporaryDirectory(prefix="darwin-page-", ignore_cleanup_errors=True)
        self.proc = subprocess.Popen(
            [chromium(), "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-dev-shm-usage", "--hide-scrollbars", f"--window-size={width},{height}",
             f"--user-data-dir={self._profile.name}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(self._profile.name) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            # The file appears before its port is written: wait for the port itself.
            while not (port_file.exists() and port_file.read_text().split()) and \
                    time.monotonic() < deadline:
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json",
                                                        timeout=10).read())
            url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            self.ws = connect(url, max_size=256 << 20)
            self.n = 0
            for domain in ("Page", "Network", "Runtime", "Log"):
                self(f"{domain}.enable")
            self("Emulation.setDeviceMetricsOverride", width=width, height=height,
                 deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.close()
            raise

    def __call__(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=120))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == "Page.javascriptDialogOpening":  # never block on it
                    self.ws.send(json.dumps({"id": -1, "method": "Page.handleJavaScriptDialog",
                                             "params": {"accept": True}}))

    def js(self, expression: str):
        return self("Runtime.evaluate", expression=expression, returnByValue=True,
                    awaitPromise=True)["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"Boolean({expression})"):
                return
            time.sleep(0.2)
        raise AssertionError(f"the page never showed {expression}")

    def open(self, path: Path) -> None:
        self("Page.navigate", url=path.resolve().as_uri())
        self.wait_for("document.readyState === 'complete'")

    def mouse(self, kind: str, x: float, y: float) -> None:
        self("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
             clickCount=1 if kind != "mouseMoved" else 0)

    def click(self, x: float, y: float) -> None:
        self.mouse("mouseMoved", x, y)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y)

    def screenshot(self, out: Path, full: bool = False) -> None:
        params = {"format": "png"}
        if full:
            params["captureBeyondViewport"] = True
        out.write_bytes(base64.b64decode(self("Page.captureScreenshot", **params)["data"]))

    def requests(self) -> list[str]:
        return [e["params"]["request"]["url"] for e in self.events
                if e["method"] == "Network.requestWillBeSent"]

    def named(self, method: str) -> list[dict]:
        return [e["params"] for e in self.events if e["method"] == method]

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # the browser and its helpers
        self.proc.wait()
        self._profile.cleanup()
