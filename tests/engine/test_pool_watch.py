"""When is a child on another machine done, lost, or waiting for a worker that does not exist?
The orchestrator's decisions (darwin.engine.pool_watch), on its own clock, in milliseconds."""

from __future__ import annotations

import pytest

from darwin.engine import ChildWatch, beat_interval, idempotency_key


def watch(**kw) -> ChildWatch:
    return ChildWatch(submitted=0.0, lost_after_s=10.0, no_worker_after_s=30.0, **kw)


def test_a_record_in_the_store_is_done_whatever_prefect_says():
    w = watch()
    for state in ("RUNNING", "CRASHED", "COMPLETED", "SCHEDULED"):
        assert w.verdict(5.0, evaluated=True, state=state).what == "done"


def test_a_beating_child_is_never_lost_however_long_it_trains():
    w = watch()
    for t in range(0, 600, 5):  # ten minutes of training, a beat every 5 s
        assert w.verdict(float(t), evaluated=False, state="RUNNING", beat=f"etag-{t}").what \
            == "wait"


def test_a_heartbeat_that_stands_still_is_a_lost_child():
    w = watch(start_s=60.0)
    assert w.verdict(1.0, evaluated=False, state="RUNNING", beat="a").what == "wait"
    assert w.verdict(2.0, evaluated=False, state="RUNNING", beat="b").what == "wait"
    assert w.verdict(11.9, evaluated=False, state="RUNNING", beat="b").what == "wait"
    v = w.verdict(12.0, evaluated=False, state="RUNNING", beat="b")
    assert v.what == "lost" and "heartbeat stopped for 10 s" in v.why


def test_a_run_a_worker_took_that_never_beats_is_lost_after_its_start_up_time():
    """Killed between taking the flow run and its first beat (Prefect still says Pending); a
    new process importing torch on a busy machine is given ``start_s`` more to beat at all."""
    w = watch(start_s=60.0)
    assert w.verdict(1.0, evaluated=False, state="PENDING").what == "wait"
    assert w.verdict(70.5, evaluated=False, state="PENDING").what == "wait"
    v = w.verdict(71.0, evaluated=False, state="RUNNING")
    assert v.what == "lost" and "no heartbeat at all for 70 s" in v.why


def test_the_lost_clock_starts_when_a_worker_takes_it_not_at_submission():
    """Queued behind other children for minutes: not lost. An earlier attempt's beat, still in
    the store, does not count as this one's."""
    w = watch()
    for t in (1.0, 100.0, 200.0):
        assert w.verdict(t, evaluated=False, state="SCHEDULED", beat="stale",
                         workers_online=True).what == "wait"
    assert w.verdict(201.0, evaluated=False, state="RUNNING", beat="stale").what == "wait"
    assert w.verdict(210.5, evaluated=False, state="RUNNING", beat="stale").what == "wait"
    assert w.verdict(211.0, evaluated=False, state="RUNNING", beat="stale").what == "lost"
    w = watch(start_s=5.0)
    w.verdict(1.0, evaluated=False, state="RUNNING", beat="stale")
    assert w.verdict(14.0, evaluated=False, state="RUNNING", beat="new").what == "wait"
    assert w.verdict(23.9, evaluated=False, state="RUNNING", beat="new").what == "wait"
    assert w.verdict(24.0, evaluated=False, state="RUNNING", beat="new").what == "lost"


@pytest.mark.parametrize("state", ["FAILED", "CRASHED", "CANCELLED"])
def test_a_flow_run_that_ended_without_a_record_is_lost_at_once(state):
    v = watch().verdict(1.0, evaluated=False, state=state, message="exit code -9")
    assert v.what == "lost" and state.lower() in v.why and "exit code -9" in v.why


def test_completed_without_a_record_is_lost():
    assert watch().verdict(1.0, evaluated=False, state="COMPLETED").what == "lost"


def test_no_worker_only_after_the_wait_and_only_when_none_is_online():
    w = watch()
    assert w.verdict(29.0, evaluated=False, state="SCHEDULED", workers_online=False).what \
        == "wait"
    assert not w.needs_workers(29.0) and w.needs_workers(30.0)
    assert w.verdict(31.0, evaluated=False, state="SCHEDULED", workers_online=True).what \
        == "wait"  # busy workers: the child queues
    assert w.verdict(31.0, evaluated=False, state="SCHEDULED", workers_online=None).what \
        == "wait"  # not asked
    assert w.verdict(32.0, evaluated=False, state="LATE", workers_online=False).what \
        == "no_worker"


def test_what_we_could_not_see_is_not_held_against_a_child():
    w = watch()
    w.verdict(-1.0, evaluated=False, state="RUNNING", beat="0")
    w.verdict(0.0, evaluated=False, state="RUNNING", beat="a")
    w.excuse(9.0)  # the store did not answer for 9 s
    assert w.verdict(15.0, evaluated=False, state="RUNNING", beat="a").what == "wait"
    assert w.verdict(19.5, evaluated=False, state="RUNNING", beat="a").what == "lost"


def test_one_flow_run_per_attempt_and_beats_well_inside_the_lost_time():
    assert idempotency_key("r1", "g001-c00", 3, 2) == "r1/g001-c00/3/2"
    assert len({idempotency_key("r", "c", s, a) for s in (0, 1) for a in (1, 2)}) == 4
    assert beat_interval(90.0) == 15.0 and beat_interval(1.0) == 0.5


def test_a_machine_slot_is_held_across_processes_and_freed_by_the_kernel(tmp_path):
    """Each child a worker starts is a process of its own: slot i is a lock file, so two at
    once get different cores, and a holder killed with -9 frees its slot."""
    import subprocess
    import sys

    from darwin.engine import MachineSlot
    from darwin.engine.slots import slot_cpus

    cores = slot_cpus("cpu", 1, 2)
    with MachineSlot(tmp_path, "cpu", 1, 2) as first, MachineSlot(tmp_path, "cpu", 1, 2) as second:
        assert [first, second] == cores
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time\nfrom darwin.engine import MachineSlot\n"
        f"with MachineSlot({str(tmp_path)!r}, 'cpu', 1, 2):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with MachineSlot(tmp_path, "cpu", 1, 2) as other:
        assert other == cores[1]
    holder.kill()
    holder.wait()
    with MachineSlot(tmp_path, "cpu", 1, 2) as freed:
        assert freed == cores[0]
