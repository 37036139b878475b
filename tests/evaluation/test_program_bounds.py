"""The bounds on a program's size and literal data: the seed and a long program of plain code
pass; tens of KB of high-entropy literal data, or a file past the size bound, are refused with
the numbers (the scorer applies them: tests/evaluation/test_scorer_attacks.py)."""

from __future__ import annotations

import base64
import os

import pytest

from darwin.evaluation.failures import Failure, Rejected
from darwin.evaluation.program_bounds import (
    MAX_LITERAL_BYTES,
    MAX_PROGRAM_BYTES,
    check_program,
    literal_bytes,
)
from darwin.evaluation.training import seed_program


def test_the_seed_is_well_inside_both_bounds():
    seed = seed_program().read_bytes()
    assert len(seed) * 3 < MAX_PROGRAM_BYTES
    assert literal_bytes(seed) * 4 < MAX_LITERAL_BYTES
    check_program([seed_program()])


def test_a_long_program_of_code_passes(tmp_path):
    code = "".join(f"def f{i}(x):\n    return x * {i % 7} + g{i % 5}(x)\n\n" for i in range(800))
    path = tmp_path / "train.py"
    path.write_text(code)
    assert 30_000 < len(code) < MAX_PROGRAM_BYTES
    check_program([path])


@pytest.mark.parametrize("kind", ["str", "bytes", "numbers"])
def test_tens_of_kb_of_high_entropy_literals_are_refused(tmp_path, kind):
    data = os.urandom(20_000)
    literal = {"str": repr(base64.b85encode(data).decode()), "bytes": repr(data[:9500]),
               "numbers": "[" + ", ".join(str(int.from_bytes(data[i:i + 8], "little"))
                                          for i in range(0, 10_000, 8)) + "]"}[kind]
    path = tmp_path / "train.py"
    path.write_text(seed_program().read_text() + f"\nNOTES = {literal}\n")
    assert len(path.read_bytes()) < MAX_PROGRAM_BYTES  # the literal bound is what refuses it
    with pytest.raises(Rejected) as refused:
        check_program([path])
    assert refused.value.failure is Failure.program_too_large
    assert "train.py carries" in refused.value.detail and "literal data" in refused.value.detail


def test_a_file_past_the_size_bound_is_refused(tmp_path):
    path = tmp_path / "model.py"
    path.write_text("x = 1\n" * (MAX_PROGRAM_BYTES // 6 + 1))
    with pytest.raises(Rejected) as refused:
        check_program([path])
    assert "model.py is" in refused.value.detail and "bytes" in refused.value.detail
