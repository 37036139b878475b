"""Which saved tensors the model multiplies by, from evidence the model cannot buy cheaply: the
FLOPs per token behind MFU count 6 x the elements of those tensors only.

- Only floating-point tensors with two or more dimensions can count. An integer or bool tensor
  cannot be perturbed, so nothing could ever show it matters (and a mask is not a matmul).
- A tensor counts when moving a SECRET random block of it (a sixteenth of its rows, first
  dimension, by a sixteenth of its columns, last dimension) moves the log-probabilities at every
  early position of every test row, twice in a row on fresh blocks. A matmul does that: every
  position multiplies by every row. A table read by index (an embedding, a position table, any
  lookup) does not: the block's rows are drawn outside the token ids of the early positions and
  outside the first positions, so those positions read none of them and stay put.
- The perturbation happens inside the candidate's process, so a model could watch its weights
  and fake dependence when they change. Whole-tensor noise was seen by checking any one element;
  a secret block is seen by a fixed element with probability 1/256 per draw, and the count needs
  two draws in a row. A model that reads every element each forward can still fake it, so MFU
  built on this count is labelled estimated (see docs/scoring.md).
- Position 0 is left out of the "every position" test: a causal attention's first position
  attends to itself alone, so its query and key weights never move it.

An honest model's tensors that move the output but not at every early position (an untied
embedding, a position table) are listed as read by index; one that moves nothing at any gain,
even as a whole, is unused. Neither counts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

GAINS = (1.0, 10.0, 100.0, 1000.0)  # noise gains, each tried until the output moves
EARLY = 8  # positions 1..EARLY-1 must all move for a matmul
BLOCK = 16  # a block is 1/BLOCK of the rows by 1/BLOCK of the columns (at least one of each)
CONFIRM = 2  # consecutive fresh blocks that must move every early position

# perturb(name, seed, gain, rows, cols) -> log-probabilities of the test rows, or None where the
# logits turned non-finite (a -inf or finfo.min mask pushed over: the tensor is used)
Perturb = Callable[[str, int, float, list[int], list[int]], np.ndarray | None]


def is_float(dtype: str) -> bool:
    """A safetensors dtype that noise can move (F16, F32, F64, BF16, F8_*)."""
    return dtype.startswith(("F", "BF"))


def may_count(dtype: str, shape: list[int]) -> bool:
    """Whether a tensor could count toward FLOPs at all: floating point, two or more dims."""
    return is_float(dtype) and len(shape) >= 2


@dataclass
class Uses:
    matmul: list[str] = field(default_factory=list)  # counted toward FLOPs
    index_read: list[str] = field(default_factory=list)  # moved the output, not as a matmul
    unused: list[str] = field(default_factory=list)  # moved nothing, even as a whole
    nonfinite: list[str] = field(default_factory=list)  # made the logits non-finite: used


def _pick(size: int, avoid: set[int], rng: np.random.Generator) -> list[int]:
    """A secret 1/BLOCK of ``range(size)`` (at least one), outside ``avoid`` when enough is left."""
    pool = np.array([i for i in range(size) if i not in avoid], dtype=np.int64)
    if len(pool) < 4:  # a small dimension (model width, a few heads): no index to read there
        pool = np.arange(size)
    n = max(1, len(pool) // BLOCK)
    return sorted(int(i) for i in rng.choice(pool, size=n, replace=False))


def moved(logp: np.ndarray, reference: np.ndarray, tol: float) -> np.ndarray:
    """(rows, positions): where any log-probability moved past ``tol``."""
    return np.max(np.abs(logp - reference), axis=-1) > tol


def classify(tensors: dict, rows: np.ndarray, reference: np.ndarray, perturb: Perturb,
             rng: np.random.Generator, tol: float) -> Uses:
    """Sort the floating-point tensors of ``tensors`` (name -> (dtype, shape)) into matmuls, reads
    by index and unused, perturbing each in the candidate's process through ``perturb``."""
    uses = Uses()
    early = min(EARLY, rows.shape[1])
    avoid = {int(t) for t in np.unique(rows[:, :early])} | set(range(early))
    for name in sorted(tensors):
        dtype, shape = tensors[name]
        if not is_float(dtype) or 0 in shape:  # nothing to move (and no FLOPs in it)
            continue
        if len(shape) >= 2 and early >= 2 and _is_matmul(name, shape, avoid, early, reference,
                                                          perturb, rng, tol):
            uses.matmul.append(name)
        elif not _moves_at_all(name, reference, perturb, rng, tol, uses):
            uses.unused.append(name)
        elif len(shape) >= 2:
            uses.index_read.append(name)
    return uses


def _is_matmul(name: str, shape: list[int], avoid: set[int], early: int, reference: np.ndarray,
               perturb: Perturb, rng: np.random.Generator, tol: float) -> bool:
    """Secret blocks at rising gains: a matmul moves every early position (but 0) of every row,
    ``CONFIRM`` fresh blocks in a row; a read by index leaves the early positions where they are."""
    for gain in GAINS:
        streak = 0
        while streak < CONFIRM:
            rows, cols = _pick(shape[0], avoid, rng), _pick(shape[-1], avoid, rng)
            logp = perturb(name, int(rng.integers(1 << 62)), gain, rows, cols)
            if logp is None or not moved(logp, reference, tol)[:, 1:early].all():
                break  # non-finite logits show use, not a matmul
            streak += 1
        if streak == CONFIRM:
            return True
    return False


def _moves_at_all(name: str, reference: np.ndarray, perturb: Perturb,
                  rng: np.random.Generator, tol: float, uses: Uses) -> bool:
    """Whole-tensor noise at rising gains: an unused tensor moves nothing at any gain, a used one
    moves in proportion, far past the tolerance by the last gain. (Noise of the tensor's own scale
    moves a near-zero LayerNorm bias by about the CPU tolerance, so one draw is not enough.)"""
    for gain in GAINS:
        logp = perturb(name, int(rng.integers(1 << 62)), gain, [], [])
        if logp is None:  # non-finite logits: it moved (named in the checks, for audit)
            uses.nonfinite.append(name)
            return True
        if moved(logp, reference, tol).any():
            return True
    return False
