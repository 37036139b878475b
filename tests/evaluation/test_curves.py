"""Loss curves read from a child's log by the trusted side: which lines count, the clock, and
what a program printing without end costs."""

from __future__ import annotations

import threading
import time

import pytest

from darwin.evaluation.curves import MAX_POINTS, LogCurve, decimate, parse_loss_line


@pytest.mark.parametrize("line, expected", [
    ("iter 40/200: loss 2.4321, lr 1.0e-03, 12.3ms", (40, 2.4321)),  # the seed
    ("iter 10: loss 3.1416, time 12.34ms, mfu 1.23%", (10, 3.1416)),  # nanoGPT
    ("step 100: train loss 2.3100, val loss 2.4000", (100, 2.31)),  # nanoGPT eval lines
    ("step 100: val loss 2.40, train loss 2.31", (100, 2.31)),  # order does not matter
    ("step=7 loss=1.5e+00", (7, 1.5)),
    ("Step 12 | training_loss: 2.0 | lr 3e-4", (12, 2.0)),
])
def test_loss_lines_are_read(line, expected):
    assert parse_loss_line(line) == expected


@pytest.mark.parametrize("line", [
    "step 100: val loss 2.40",  # a val loss is not a training loss
    "loss 2.5 without a step",
    "iter 10: loss nan",
    "iter 10: loss inf",
    "iter 10: loss -1.0",  # not a cross-entropy
    "iter 10: loss 1e9",
    "done: 200 iterations in 3.1s, final train loss 2.2",  # no step number
    "iter 1: loss 2.0 " + "x" * 1000,  # too long to be a progress line
    "",
])
def test_other_lines_are_not(line):
    assert parse_loss_line(line) is None


def test_lines_are_stamped_when_written_not_when_read(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"")

    def child():
        with open(log, "a") as f:
            for step in range(6):
                f.write(f"noise line\niter {step}: loss {3 - 0.1 * step:.2f}\n")
                f.flush()
                time.sleep(0.2)
            f.write("iter 6: loss 2.3")  # the last line, without its newline

    with LogCurve(log) as curve:
        writer = threading.Thread(target=child)
        writer.start()
        writer.join()
    steps = [p[0] for p in curve.points]
    secs = [p[1] for p in curve.points]
    assert steps == list(range(7)) and curve.lines == 13
    assert secs == sorted(secs) and secs[5] - secs[0] >= 0.5  # 5 gaps of 0.2 s, our clock
    assert [p[2] for p in curve.points][:2] == [3.0, 2.9]


def test_a_program_printing_without_end_keeps_a_bounded_curve(tmp_path):
    log = tmp_path / "train.log"
    log.write_bytes(b"")

    def child(curve):
        with open(log, "a") as f:
            for chunk in range(20):
                f.write("".join(f"iter {10_000 * chunk + i}: loss 2.5\n" for i in range(10_000)))
                f.flush()
                time.sleep(0.02)
            deadline = time.monotonic() + 30  # until the follower has read them (it parses
            while time.monotonic() < deadline and (  # at its own pace, under load too)
                    not curve.points or curve.points[-1][0] != 199_999):
                time.sleep(0.05)
            f.write("x" * 5_000_000)  # and one endless line

    with LogCurve(log) as curve:
        writer = threading.Thread(target=child, args=(curve,))
        writer.start()
        writer.join()
    assert 0 < len(curve.points) <= MAX_POINTS
    assert curve.points[0][0] == 0 and curve.points[-1][0] == 199_999  # the whole run, coarser


def test_a_log_too_big_to_read_at_the_end_keeps_its_last_points(tmp_path):
    log = tmp_path / "train.log"
    with open(log, "w") as f:  # all of it written before we could follow (60 MB)
        f.write("".join(f"iter {i}: loss 2.5, lr 1e-3, {i % 97}.0ms\n" for i in range(1_500_000)))
    started = time.monotonic()
    with LogCurve(log, poll_s=60) as curve:
        pass
    assert time.monotonic() - started < 3  # only the end is parsed
    assert 0 < len(curve.points) <= MAX_POINTS and curve.points[-1][0] == 1_499_999


def test_decimate_keeps_the_ends():
    pts = [[i] for i in range(1001)]
    kept = decimate(pts, 100)
    assert len(kept) <= 100 and kept[0] == [0] and kept[-1] == [1000]
    assert decimate(pts[:10], 100) == pts[:10]
