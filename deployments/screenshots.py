"""Screenshots of the Prefect UI for a DARWIN run, with headless Chromium from the system's
packages (no browser download: it works offline).

    python deployments/screenshots.py RUN [--ui http://127.0.0.1:4200] [--out DIR]

Takes, for the run RUN (its flow runs carry the tag darwin-run:RUN):

- ``run.png``: the run's flow-run page (its generations as subflow runs, its tasks);
- ``report.png``: the run's report artifact (the generation's tables and key figures);
- ``review.png``: when the run waits for a review, its page with the resume form open; what
  the reviewer decides on (each field, the val losses) must be *visible*, not only in the DOM.

Each page is loaded until the single-page app has rendered (``--virtual-time-budget``), its
rendered DOM is checked (``--dump-dom``) for what the picture must show (the run's name, the
artifact's key, the review's form), and an image of one colour (a blank page) is refused. The
review form opens with a click, so that page is driven through the DevTools protocol.
Exit code 0 when every picture passed its checks, 1 otherwise (each failure said in one line).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

RENDER_MS = 15000  # virtual time the app gets to fetch and render
WINDOW = "1400,1800"


class ShotFailed(Exception):
    pass


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    raise ShotFailed("no Chromium here: install it from your system's packages "
                     "(apt-get install chromium)")


def _flags() -> list[str]:
    # --no-sandbox: Chromium's own sandbox needs user namespaces that containers often lack.
    return ["--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--disable-dev-shm-usage", f"--window-size={WINDOW}", "--no-first-run"]


def api(ui: str, path: str, body: dict | None = None):
    req = urllib.request.Request(f"{ui}/api{path}", data=json.dumps(body).encode() if body
                                 is not None else None, headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=15) as r:
        return json.loads(r.read())


def one_colour(png: bytes) -> bool:
    from io import BytesIO

    from PIL import Image

    extrema = Image.open(BytesIO(png)).convert("RGB").getextrema()
    return all(lo == hi for lo, hi in extrema)


def page(url: str, out: Path, must_show: list[str]) -> None:
    """Render ``url``, check its DOM holds every string of ``must_show``, keep its picture."""
    exe = chromium()
    with _profile() as profile:
        common = [exe, *_flags(), f"--user-data-dir={profile}",
                  f"--virtual-time-budget={RENDER_MS}"]
        dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True,
                             timeout=120).stdout
        missing = [s for s in must_show if s not in dom]
        if missing:
            raise ShotFailed(f"{url}: the rendered page lacks {missing}")
        subprocess.run([*common, f"--screenshot={out}", url], capture_output=True, timeout=120)
    _check_image(out)


def _check_image(out: Path) -> None:
    if not out.is_file() or out.stat().st_size == 0:
        raise ShotFailed(f"{out.name}: Chromium wrote no picture")
    if one_colour(out.read_bytes()):
        raise ShotFailed(f"{out.name}: the picture is one colour (a blank page)")


def review_page(ui: str, flow_run_id: str, out: Path, must_show: list[str]) -> None:
    """The paused run's page with its resume form open (a click: the DevTools protocol)."""
    from websockets.sync.client import connect

    with _profile() as profile:
        proc = subprocess.Popen([chromium(), *_flags(), f"--user-data-dir={profile}",
                                 "--remote-debugging-port=0", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 30
            while not port_file.exists() and time.monotonic() < deadline:
                time.sleep(0.1)
            port = port_file.read_text().split()[0]
            targets = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/json",
                                                        timeout=10).read())
            ws_url = next(t for t in targets if t["type"] == "page")["webSocketDebuggerUrl"]
            with connect(ws_url, max_size=64 << 20) as ws:
                cdp = _Cdp(ws)
                cdp("Page.enable")
                w, h = (int(x) for x in WINDOW.split(","))
                cdp("Emulation.setDeviceMetricsOverride", width=w, height=h,
                    deviceScaleFactor=1, mobile=False)
                cdp("Page.navigate", url=f"{ui}/runs/flow-run/{flow_run_id}")
                cdp.wait_for("[...document.querySelectorAll('button')].some("
                             "b => b.innerText.trim() === 'Resume')", "a Resume button")
                cdp.js("[...document.querySelectorAll('button')].find("
                       "b => b.innerText.trim() === 'Resume').click()")
                text = " && ".join(f"document.body.innerText.includes({json.dumps(s)})"
                                   for s in must_show)
                try:
                    cdp.wait_for(text, f"the form showing {must_show}")
                except ShotFailed:  # keep what it showed, to see why
                    shot = cdp("Page.captureScreenshot", format="png")["data"]
                    out.with_suffix(".failed.png").write_bytes(base64.b64decode(shot))
                    Path(out.with_suffix(".failed.txt")).write_text(
                        cdp.js("document.body.innerText") or "")
                    raise
                time.sleep(1.0)  # let the modal finish its transition
                shot = cdp("Page.captureScreenshot", format="png")["data"]
                out.write_bytes(base64.b64decode(shot))
                # In the DOM is not on the screen: the page above the form was there, 0 px high.
                hidden = [s for s in must_show if not cdp.js(f"({VISIBLE})({json.dumps(s)})")]
                if hidden:
                    out.rename(out.with_suffix(".failed.png"))
                    raise ShotFailed(f"{out.name}: in the page but not visible (0 px high, "
                                     f"clipped or covered): {hidden}")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the browser and every helper it started
            proc.wait()
    _check_image(out)


# Whether some occurrence of a text can be seen: the innermost element holding it, scrolled
# into view, has a box, and the point in it shows it (not what is drawn over a 0 px high or
# clipped box: the page above a long form is in the DOM, clipped to nothing).
VISIBLE = """(s) => {
  const holds = (e) => (e.innerText || '').includes(s);
  const deepest = [...document.body.querySelectorAll('*')].filter(
    (e) => holds(e) && ![...e.children].some(holds));
  for (const el of deepest) {
    el.scrollIntoView({block: 'center'});
    const r = el.getBoundingClientRect();
    if (r.width < 1 || r.height < 4) continue;
    const hit = document.elementFromPoint(r.left + Math.min(r.width / 2, 20),
                                          r.top + r.height / 2);
    if (hit && (hit === el || el.contains(hit))) return true;
  }
  return false;
}"""


def review_must_show(ui: str, flow_run: dict) -> list[str]:
    """What a reviewer must see on the paused run's form: each field's title, the review's val
    losses wherever the pause mentions them (what a veto, a pin or a request is decided on),
    and the Submit button."""
    keys = (flow_run.get("state") or {}).get("state_details", {}).get("run_input_keyset") or {}
    schema = api(ui, f"/flow_runs/{flow_run['id']}/input/{keys['schema']}") if keys else {}
    page = api(ui, f"/flow_runs/{flow_run['id']}/input/{keys['description']}") if keys else ""
    titles = [p.get("title", name) for name, p in schema.get("properties", {}).items()]
    losses = ["val loss"] if "val loss" in json.dumps(schema) + str(page) else []
    return [*titles, *losses, "Submit"]


def _profile():
    """A throwaway browser profile. Chromium's helper processes may still write into it for a
    moment after the browser exits: removing it must not fail the pictures."""
    return tempfile.TemporaryDirectory(prefix="darwin-shots-", ignore_cleanup_errors=True)


class _Cdp:
    def __init__(self, ws):
        self.ws, self.n = ws, 0

    def __call__(self, method: str, **params):
        self.n += 1
        self.ws.send(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise ShotFailed(f"{method}: {msg['error'].get('message')}")
                return msg.get("result", {})

    def js(self, expression: str):
        return self("Runtime.evaluate", expression=expression,
                    returnByValue=True)["result"].get("value")

    def wait_for(self, expression: str, what: str, timeout: float = 45) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.js(f"Boolean({expression})"):
                return
            time.sleep(0.3)
        raise ShotFailed(f"the page never showed {what}")


def take(run_id: str, ui: str, out: Path) -> list[Path]:
    """Every picture of ``run_id`` (see the module's docstring); raises ShotFailed."""
    out.mkdir(parents=True, exist_ok=True)
    runs = api(ui, "/flow_runs/filter", {"flow_runs": {"tags": {"all_": [f"darwin-run:{run_id}"]}}})
    evolve = [fr for fr in runs if fr["name"] == run_id]
    if not evolve:
        raise ShotFailed(f"no flow run named {run_id} on {ui} (is PREFECT_API_URL this server?)")
    taken = []
    page(f"{ui}/runs/flow-run/{evolve[0]['id']}", out / "run.png", [run_id])
    taken.append(out / "run.png")
    key = f"{run_id}-report".lower()
    artifacts = api(ui, "/artifacts/filter", {"artifacts": {"key": {"any_": [key]}},
                                              "sort": "CREATED_DESC", "limit": 1})
    if artifacts:
        page(f"{ui}/artifacts/artifact/{artifacts[0]['id']}", out / "report.png",
             [key, "data:image/png;base64"])
        taken.append(out / "report.png")
    paused = [fr for fr in evolve if fr["state_type"] == "PAUSED"]
    if paused:
        review_page(ui, paused[0]["id"], out / "review.png", review_must_show(ui, paused[0]))
        taken.append(out / "review.png")
    return taken


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run", help="the DARWIN run id (darwin runs lists them)")
    parser.add_argument("--ui", default=os.environ.get("DARWIN_UI_URL", "http://127.0.0.1:4200"),
                        help="the Prefect UI's address (default http://127.0.0.1:4200)")
    parser.add_argument("--out", type=Path, default=Path("screenshots"))
    args = parser.parse_args(argv)
    try:
        for path in take(args.run, args.ui.rstrip("/"), args.out):
            print(f"ok: {path}")
    except ShotFailed as e:
        print(f"screenshots: {e}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, ConnectionError) as e:  # the server is not there
        print(f"screenshots: cannot reach {args.ui}: {e}", file=sys.stderr)
        return 1
    except OSError as e:  # a folder we cannot write, a browser that would not start
        print(f"screenshots: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
