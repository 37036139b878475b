"""Loss lines are stamped as the program prints them on every backend, not when its log is
finally flushed: a program that prints, sleeps, and prints again gets stamps that far apart."""

from __future__ import annotations

import pytest

from darwin.evaluation.curves import LogCurve
from darwin.sandbox import OUT_DIR, PROGRAM_DIR, Mount, SandboxSpec

pytestmark = pytest.mark.sandbox

SLOW_PRINTER = """
import sys, time
for step in range(3):
    print(f"iter {step}: loss {3 - 0.1 * step:.2f}", file=sys.stderr if step % 2 else sys.stdout)
    time.sleep(0.5)
"""


@pytest.mark.parametrize("backend", ["sandbox", "docker_sandbox"])
def test_a_slow_printers_lines_are_stamped_as_they_come(backend, request, tmp_path):
    box = request.getfixturevalue(backend)
    prog, out = tmp_path / "program", tmp_path / "out"
    prog.mkdir(mode=0o755)
    out.mkdir()
    (prog / "train.py").write_text(SLOW_PRINTER)
    (prog / "train.py").chmod(0o644)
    log = tmp_path / "log.txt"
    spec = SandboxSpec(argv=["python", f"{PROGRAM_DIR}/train.py"],
                       mounts=[Mount(prog, PROGRAM_DIR), Mount(out, OUT_DIR, writable=True)],
                       cwd=OUT_DIR, log_path=log, deadline_s=60)
    with LogCurve(log) as curve:
        result = box.start(spec).wait()
    assert result.outcome.value == "ok", log.read_text()
    secs = [p[1] for p in curve.points]
    assert [p[0] for p in curve.points] == [0, 1, 2]
    # Two sleeps of 0.5 s between the three lines: stamped at the end, they would be ~0 apart.
    assert secs[1] - secs[0] >= 0.3 and secs[2] - secs[1] >= 0.3, secs
