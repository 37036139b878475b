"""The evolution engine end to end: `darwin run` against a real Prefect server, resume after
kill -9, lessons reaching the next generation's prompts.

Both sandbox backends run it end to end: the reference run, the lessons run and the export take
`auto` (Docker where a daemon answers, as in CI), while the killed-and-resumed run, the user's
nanoGPT fork and Ctrl-C are forced onto the local (bubblewrap) backend; the resumed local run must
end exactly as the reference run did. The reference run pre-starts its sandboxes (DARWIN_WARM=on)
and the resumed one starts them cold (DARWIN_WARM=off), so that match also shows a pre-started
child scoring exactly what a cold one scores."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from darwin.memory.store import RunStore, list_runs
from tests.conftest import DARWIN, cli_env, run_darwin

pytestmark = pytest.mark.sandbox

SMALL = ["run", "--budget", "tiny", "--generations", "2", "--population", "2", "--keep", "1",
         "--children", "2", "--seeds", "2", "--reruns", "1", "--repair-tries", "1"]


RUN_TIMEOUT = 900  # a whole small run on a busy machine (other commands: run_darwin's default)


def _auto_backend() -> str:
    """What `auto` picks here (Docker where a daemon answers, else local)."""
    from darwin.sandbox import get_sandbox

    return get_sandbox("auto").name


def _ran_on(store: RunStore) -> str:
    return store.meta()["environment"]["sandbox"]


def _store(home: Path) -> RunStore:
    (run_id,) = list_runs(home / "runs")
    return RunStore(home / "runs", run_id)


def _flow_runs(prefect_server, run_id: str) -> list[dict]:
    import urllib.request

    body = json.dumps({"flow_runs": {"tags": {"all_": [f"darwin-run:{run_id}"]}}}).encode()
    req = urllib.request.Request(f"{prefect_server['url']}/flow_runs/filter", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


@pytest.fixture(scope="module")
def reference_run(prefect_server, sandbox, tmp_path_factory):
    """An uninterrupted 2-generation tiny run with the offline mutator (review gates after each
    generation, answered by their defaults at once: --no-review)."""
    home = tmp_path_factory.mktemp("reference")
    r = run_darwin([*SMALL, "--mutator", "offline", "--review-every", "1", "--no-review",
                    "--json"],
                   cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto", DARWIN_WARM="on"),
                   timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    return home, json.loads(r.stdout)


def test_two_generations_commit_and_show_in_prefect(reference_run, prefect_server):
    home, summary = reference_run
    store = _store(home)
    assert store.head() == 2
    gens = [store.generation(n) for n in range(3)]
    assert [g.generation for g in gens] == [0, 1, 2]
    # --seeds 2, but the seed is measured on min_runs (3) seeds like any member that may be best
    assert gens[0].population[0].candidate_id == "seed" and len(gens[0].population[0].losses) == 3
    for g in gens[1:]:
        assert len(g.children) == 2 and 1 <= len(g.population) <= 2
        for cid in g.children:
            rec = store.candidate(cid)
            assert rec.code_sha and store.code(rec.code_sha)  # persisted code for every child
            assert rec.kind and rec.parents
    assert summary["best"] == gens[2].population[0].candidate_id
    # Every child it trained got a sandbox started ahead, through the flow's slots.
    trained = [e for e in store.evaluations() if e.status == "ok" and not e.cached]
    assert trained and all(e.warm_s > 0 for e in trained), [e.warm_s for e in trained]
    runs = _flow_runs(prefect_server, store.run_id)
    names = {fr["name"]: fr["state_type"] for fr in runs}
    assert names.get("gen-001") == "COMPLETED" and names.get("gen-002") == "COMPLETED"


def test_no_review_applies_the_defaults_without_pausing(reference_run, prefect_server):
    home, summary = reference_run
    store = _store(home)
    reviews = [store.review(g) for g in (1, 2)]
    assert all(r.gate and r.defaults_applied and r.answer.via == "no-review" for r in reviews)
    assert [r["via"] for r in summary["reviews"]] == ["no-review", "no-review"]
    assert store.waiting() is None
    assert all(fr["state_type"] == "COMPLETED" for fr in _flow_runs(prefect_server, store.run_id))
    evolve = next(fr for fr in _flow_runs(prefect_server, store.run_id)
                  if fr["name"] == store.run_id)
    states = _flow_run_states(prefect_server, evolve["id"])
    assert "PAUSED" not in states and states[-1] == "COMPLETED"


def _flow_run_states(prefect_server, flow_run_id: str) -> list[str]:
    import urllib.request

    url = f"{prefect_server['url']}/flow_run_states/?flow_run_id={flow_run_id}"
    with urllib.request.urlopen(url, timeout=10) as r:
        return [s["type"] for s in sorted(json.loads(r.read()), key=lambda s: s["timestamp"])]


def test_kill_9_then_resume_loses_nothing_and_matches(reference_run, prefect_server, sandbox,
                                                     tmp_path):
    """On the local backend (the reference run took `auto`): killed in generation 2, resumed,
    it ends exactly as the uninterrupted run."""
    ref_home, ref_summary = reference_run
    home = tmp_path / "killed"
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="local", DARWIN_WARM="off")
    err = open(tmp_path / "stderr.txt", "w+b")
    proc = subprocess.Popen([*DARWIN, *SMALL, "--mutator", "offline", "--json"], env=env,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.monotonic() + 600
    store = None
    while True:  # wait until generation 2 has a persisted, trained child
        if (home / "runs").exists() and list_runs(home / "runs"):
            store = _store(home)
            if any(e.candidate_id.startswith("g002") for e in store.evaluations()):
                break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            err.seek(0)
            pytest.fail("no trained child of generation 2 while the run lived (exit "
                        f"{proc.returncode}):\n" + err.read().decode(errors="replace")[-2000:])
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    err.close()
    assert store.head() == 1 and _ran_on(store) == "local"
    before = {p: p.read_bytes() for p in (Path(store.root) / "evaluations").iterdir()}
    cands_before = {p.name for p in (Path(store.root) / "candidates").iterdir()}

    r = run_darwin(["run", "--resume", store.run_id, "--json"], env, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads(r.stdout)
    # Nothing persisted was lost or redone...
    for path, data in before.items():
        assert path.read_bytes() == data
    assert cands_before <= {p.name for p in (Path(store.root) / "candidates").iterdir()}
    # ...and the result is the uninterrupted run's.
    assert summary["best"] == ref_summary["best"]
    assert all(e.warm_s == 0 for e in store.evaluations())  # cold, the reference warm
    same = lambda pop: [(m["candidate_id"], m["losses"]) for m in pop]  # noqa: E731 (MFU is timing)
    assert same(summary["population"]) == same(ref_summary["population"])
    # The dead process' flow runs were marked Crashed, none is left Running.
    states = [fr["state_type"] for fr in _flow_runs(prefect_server, store.run_id)]
    assert "RUNNING" not in states and "CRASHED" in states


def test_lessons_from_generation_1_reach_generation_2_prompts(prefect_server, llm_server,
                                                             sandbox, tmp_path):
    env = cli_env(tmp_path, prefect=prefect_server, DARWIN_SANDBOX="auto",
                  OPENAI_BASE_URL=llm_server.url, OPENAI_API_KEY=llm_server.key)
    r = run_darwin([*SMALL, "--mutator", "openai", "--json"], env, timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    prompts = ["\n".join(m["content"] for m in q["messages"]) for q in llm_server.requests]
    with_lessons = [p for p in prompts if "## Lessons from earlier generations" in p]
    assert with_lessons, "no generation-2 prompt carried the lessons of generation 1"
    assert any("mean val-loss change" in p or "all crashed" in p for p in with_lessons)
    assert not any("## Lessons" in p for p in prompts[:2])  # generation 1 had nothing to learn from
    assert llm_server.key not in json.dumps(llm_server.requests)


@pytest.mark.parametrize(
    "args, words",
    [
        (["--keep", "4", "--population", "4"], "invalid --keep"),
        (["--generations", "0"], "invalid --generations"),
        (["--budget", "huge"], "invalid --budget"),
        (["--resume", "no-such-run"], "unknown run 'no-such-run'"),
    ],
)
def test_bad_settings_fail_before_any_work(args, words, tmp_path, prefect_server):
    r = run_darwin(["run", *args], cli_env(tmp_path, prefect=prefect_server, DARWIN_SANDBOX="auto"),
                   timeout=RUN_TIMEOUT)
    assert r.returncode == 2 and words in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not (tmp_path / "runs").exists() or not list_runs(tmp_path / "runs")


def test_evolves_a_users_nanogpt_fork(prefect_server, sandbox, tmp_path):
    """On the local backend: a generation of edits of a user's program, trained and scored."""
    from tests.conftest import PROGRAMS

    fork = PROGRAMS / "nanogpt_fork.py"
    r = run_darwin(["run", "--seed-program", str(fork), "--budget", "tiny", "--generations", "1",
                    "--population", "2", "--keep", "1", "--children", "2", "--seeds", "2",
                    "--mutator", "offline", "--json"],
                   cli_env(tmp_path, prefect=prefect_server, DARWIN_SANDBOX="local"),
                   timeout=RUN_TIMEOUT)
    assert r.returncode == 0, r.stderr[-3000:]
    store = _store(tmp_path)
    assert _ran_on(store) == "local"
    assert store.code(store.candidate("seed").code_sha) == fork.read_text()
    children = store.generation(1).children
    assert all(store.candidate(c).diff for c in children)  # real edits of the user's program
    assert json.loads(r.stdout)["seed_val_loss"] < 4.17


def _artifacts(prefect_server, key: str) -> list[dict]:
    import urllib.request

    body = json.dumps({"artifacts": {"key": {"any_": [key]}}}).encode()
    req = urllib.request.Request(f"{prefect_server['url']}/artifacts/filter", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def test_each_generation_publishes_artifacts(reference_run, prefect_server):
    from darwin.reports.views import artifact_key

    home, _ = reference_run
    store = _store(home)
    table = _artifacts(prefect_server, artifact_key(store.run_id, "leaderboard"))
    report = _artifacts(prefect_server, artifact_key(store.run_id, "report"))
    progress = _artifacts(prefect_server, artifact_key(store.run_id, "gen-002-progress"))
    assert len(table) >= 3 and len(report) >= 3  # one version per generation, 0..2
    assert any("generation 2" in (a["data"] or "") for a in report)
    assert progress and progress[0]["type"] == "progress" and float(progress[0]["data"]) == 100.0
    # Each generation's markdown carries the key figures and where the full report is.
    latest = max(report, key=lambda a: a["created"])["data"]
    assert latest.count("](data:image/png;base64,") == 2
    assert f"reports/{store.run_id}/report.html" in latest
    # The newest report and leaderboard also hang off the run's own flow run, not only the
    # generation's subflow.
    (newest,) = [a for a in _artifacts(prefect_server, artifact_key(store.run_id, "latest"))
                 if "after generation 2" in a["data"]]
    assert f"reports/{store.run_id}/report.html" in newest["data"] and "| ★ |" in newest["data"]
    (evolve,) = [fr for fr in _flow_runs(prefect_server, store.run_id)
                 if fr["name"] == store.run_id]
    assert newest["flow_run_id"] == evolve["id"]


def test_the_past_reads_back_as_it_was_printed(reference_run, prefect_server):
    """`leaderboard --at-generation 1` equals the leaderboard the run published after
    generation 1 (the Prefect table artifact of that time)."""
    from darwin.reports.views import artifact_key, leaderboard_table

    home, _ = reference_run
    store = _store(home)
    tables = _artifacts(prefect_server, artifact_key(store.run_id, "leaderboard"))
    (then,) = [a for a in tables if "after generation 1, best first" in a["description"]]
    printed = then["data"] if isinstance(then["data"], list) else json.loads(then["data"])
    r = run_darwin(["leaderboard", store.run_id, "--at-generation", "1", "--json"],
                   cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto"))
    now = json.loads(r.stdout)["candidates"]
    assert leaderboard_table(now) == printed  # rounded and labelled as the CLI prints it
    assert printed[0]["val loss"].count(".") == 1 and len(printed[0]["val loss"]) <= 7
    assert {row["generation"] for row in now} == {0, 1}


def test_export_to_s3_and_back_is_identical_and_resumes(reference_run, prefect_server, s3_env,
                                                        tmp_path):
    import uuid

    home, summary = reference_run
    store = _store(home)
    bucket = f"s3://{s3_env['bucket']}/exported-{uuid.uuid4().hex[:8]}"
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto")
    for src, dest in ((None, bucket), (bucket, str(tmp_path / "back"))):
        args = ["export", store.run_id, dest, "--json"] + (["--storage-url", src] if src else [])
        r = run_darwin(args, env)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["verified"] > 20
    back = tmp_path / "back" / store.run_id
    original = Path(store.root)
    def objects(root: Path) -> set:  # a lock or a lease is the store's, not the run's
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file()
                and p.name not in ("LEASE", "run.lock") and not p.name.startswith(".")}

    names = objects(original)
    assert names == objects(back) and len(names) > 20
    for name in names:
        assert (back / name).read_bytes() == (original / name).read_bytes(), name
    again = run_darwin(["export", store.run_id, bucket], env)  # nothing left to copy
    assert again.returncode == 0 and "0 objects copied" in again.stdout
    # The re-imported run resumes on another machine (a fresh DARWIN_HOME): nothing trains.
    log = tmp_path / "trainings.log"
    resumed = run_darwin(["run", "--resume", store.run_id, "--json"],
                         cli_env(tmp_path / "elsewhere", prefect=prefect_server,
                                 DARWIN_SANDBOX="auto", DARWIN_STORAGE_URL=str(tmp_path / "back"),
                                 DARWIN_TRAINING_LOG=str(log)),
                         timeout=RUN_TIMEOUT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout)["best"] == summary["best"]
    assert not log.exists() or not log.read_text().strip()


def test_the_run_ends_with_a_report(reference_run):
    """A real tiny 2-generation run: its report holds the leaderboard, the best program and
    every figure, drawn from timings and loss curves the trusted side recorded."""
    home, summary = reference_run
    store = _store(home)
    page = Path(summary["report"])
    assert page == home / "reports" / store.run_id / "report.html"
    html = page.read_text()
    for name in ("fitness", "lineage", "curves", "pareto", "time", "kinds"):
        # interactive where the run has its data (hover, click), else the picture inline
        assert (f'<div class="plot" id="plot-{name}">' in html) != (
            f'<figure id="{name}"><img src="data:image/png;base64,' in html), name
        assert (page.parent / f"{name}.png").stat().st_size > 10_000
    assert '<div class="plot" id="plot-fitness">' in html
    for c in store.candidates():
        assert f'<td><a href="#c-{c.id}">{c.id}</a></td>' in html and f'id="c-{c.id}"' in html
    assert f"Best program: <a href=\"#c-{summary['best']}\">{summary['best']}</a>" in html
    assert (home / "reports" / "index.html").is_file()  # the runs index beside it
    assert "Test split (never used for selection)" in html and "Not measured yet" not in html
    env = store.meta()["environment"]
    assert env["sandbox"] == _auto_backend() and len(env["dataset_sha256"]) == 64
    assert env["packages"]["torch"] and env["device"] == "cpu"
    # What the figures are drawn from: each training's curve, stamped by us as we read it.
    seed_run = store.evaluation("seed", 0)
    steps, secs = [p[0] for p in seed_run.curve], [p[1] for p in seed_run.curve]
    assert len(steps) >= 10 and steps == sorted(steps) and secs == sorted(secs)
    # Stamped while it trained: the last one before the run was scored (an ordering, no slack).
    assert seed_run.train_started_at > 0 and seed_run.scored_at > seed_run.train_started_at
    assert 0 < secs[-1] <= seed_run.scored_at - seed_run.train_started_at
    child = store.candidate("g001-c00")
    assert child.mutate_s > 0 and child.llm_latency_s == []  # offline: no LLM call


def test_reading_a_run_back(reference_run, prefect_server):
    home, summary = reference_run
    env = cli_env(home, prefect=prefect_server, DARWIN_SANDBOX="auto")
    runs = json.loads(run_darwin(["runs", "--json"], env).stdout)
    assert runs[0]["best"] == summary["best"] and runs[0]["generations"] == "2/2"
    board = json.loads(run_darwin(["leaderboard", "--json"], env).stdout)["candidates"]
    assert board[0]["val_loss"] <= board[-1]["val_loss"] or board[-1]["val_loss"] is None
    assert {r["candidate"] for r in board} >= {"seed", "g001-c00", "g002-c01"}
    shown = run_darwin(["show", summary["best"], "--json"], env)
    detail = json.loads(shown.stdout)
    assert detail["candidate"]["id"] == summary["best"] and detail["evaluations"]
    if summary["best"] != "seed":
        assert detail["candidate"]["diff"].startswith("--- parent/train.py")
    human = run_darwin(["show", "g001-c00"], env)
    assert human.returncode == 0 and "kind of change" in human.stdout
    missing = run_darwin(["show", "g999-c00"], env)
    assert missing.returncode == 2 and "no candidate 'g999-c00'" in missing.stderr


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, start time) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[19])


def _tree(root: int) -> dict[int, int]:
    """``root`` and its live descendants: pid -> start time (a pid reused later is not them)."""
    stats = {int(e): st for e in os.listdir("/proc") if e.isdigit() and (st := _stat(int(e)))}
    children: dict[int, list[int]] = {}
    for pid, (state, ppid, _) in stats.items():
        if state not in "ZX":
            children.setdefault(ppid, []).append(pid)
    tree, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in stats:
            tree[pid] = stats[pid][2]
            todo.extend(children.get(pid, []))
    return tree


def _alive(procs: dict[int, int]) -> list[int]:
    return [pid for pid, start in procs.items()
            if (st := _stat(pid)) and st[2] == start and st[0] not in "ZX"]


def _sandboxed(pids) -> list[int]:
    """Those in a PID namespace other than ours: the sandboxed programs."""
    ours = os.readlink("/proc/self/ns/pid")
    found = []
    for pid in pids:
        try:
            if os.readlink(f"/proc/{pid}/ns/pid") != ours:
                found.append(pid)
        except OSError:
            pass
    return found


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(prefect_server, sandbox, tmp_path):
    """On the local backend: Ctrl-C while a sandbox trains leaves nothing running."""
    env = cli_env(tmp_path, prefect=prefect_server, DARWIN_SANDBOX="local")
    err_path = tmp_path / "stderr.txt"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen([*DARWIN, *SMALL, "--mutator", "offline"], env=env,
                                stdout=subprocess.DEVNULL, stderr=err)
    seen: dict[int, int] = {}  # everything the run started, as we saw it
    deadline = time.monotonic() + 300
    while True:  # until generation 0 is committed and a sandbox of generation 1 is running
        tree = _tree(proc.pid)
        seen.update(tree)
        if (_sandboxed(tree) and (tmp_path / "runs").exists() and list_runs(tmp_path / "runs")
                and _store(tmp_path).head() is not None):
            break
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            pytest.fail(f"no sandbox training after generation 0 (exit {proc.returncode}):\n"
                        + err_path.read_text(errors="replace")[-2000:])
        time.sleep(0.1)
    # (The scan that must find nothing at the end has just found a live sandbox: its control.)
    proc.send_signal(signal.SIGINT)
    stop_by = time.monotonic() + 120
    while proc.poll() is None:  # whatever it starts while stopping counts too
        seen.update(_tree(proc.pid))
        if time.monotonic() > stop_by:
            proc.kill()
            proc.wait()
            pytest.fail("darwin run did not stop within 120 s of Ctrl-C")
        time.sleep(0.1)
    err = err_path.read_text(errors="replace")
    assert proc.returncode == 130, err[-2000:]
    store = _store(tmp_path)
    assert f"darwin run --resume {store.run_id}" in err
    assert "Traceback" not in err
    assert store.head() is not None  # the committed generation is intact and resumable
    assert _ran_on(store) == "local"
    gone_by = time.monotonic() + 10  # the kernel may take a moment to tear a namespace down
    while (left := _alive(seen)) and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not left, "left running after Ctrl-C: " + ", ".join(map(_describe, left))


def _describe(pid: int) -> str:
    try:
        return f"{pid} {Path(f'/proc/{pid}/cmdline').read_bytes()[:100]!r}"
    except OSError:
        return f"{pid} (gone)"


def test_a_generation_shows_the_cards_steps_as_tasks(reference_run, prefect_server):
    """Each step of the design card is a task of its own in the Prefect UI, named by child."""
    import urllib.request

    home, _ = reference_run
    store = _store(home)
    (gen2,) = [fr for fr in _flow_runs(prefect_server, store.run_id) if fr["name"] == "gen-002"]
    body = json.dumps({"flow_runs": {"id": {"any_": [gen2["id"]]}}, "limit": 200}).encode()
    req = urllib.request.Request(f"{prefect_server['url']}/task_runs/filter", data=body,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        names = {t["name"] for t in json.loads(r.read())}
    children = store.generation(2).children
    assert {"select-g002", "commit-g002", "publish-g002"} <= names, sorted(names)
    for i in range(2):
        assert {f"prompt-g002-c{i:02d}", f"mutate-g002-c{i:02d}"} <= names, sorted(names)
    for cid in children:
        assert {f"train-{cid}-s0", f"score-{cid}-s0"} <= names, sorted(names)
