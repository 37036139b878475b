"""Candidate ids, built, read and matched here only.

``seed`` is generation 0's program; child ``c`` of generation ``g`` is ``g002-c01``; its repair
tries are ``g002-c01-r1``, ``-r2``, … Ids are deterministic, so a resumed run finds what it
already made; they sort in the order they were made.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SEED_ID = "seed"
_CHILD = re.compile(r"g(?P<gen>\d{3,})-c(?P<index>\d{2,})(?:-r(?P<repair>[1-9]\d*))?")


@dataclass(frozen=True)
class CandidateId:
    generation: int
    index: int = 0  # the child's place in its generation (0 for the seed)
    repair: int = 0  # 0: the child itself; k: its k-th repair try

    def __str__(self) -> str:
        if self.generation == 0:
            return SEED_ID
        base = f"g{self.generation:03d}-c{self.index:02d}"
        return f"{base}-r{self.repair}" if self.repair else base

    def repaired(self, attempt: int) -> CandidateId:
        """The id of this child's repair try ``attempt`` (a repair of a repair stays a try of
        the same child)."""
        return CandidateId(self.generation, self.index, attempt)


def candidate_id(generation: int, index: int, repair: int = 0) -> str:
    return str(CandidateId(generation, index, repair))


def parse(cid: str) -> CandidateId:
    """The parts of ``cid``; ValueError naming the expected shape when it is not an id."""
    if cid == SEED_ID:
        return CandidateId(0)
    m = _CHILD.fullmatch(cid)
    if m is None:
        raise ValueError(f"not a candidate id: {cid!r} (expected seed, g002-c01 or g002-c01-r1)")
    return CandidateId(int(m["gen"]), int(m["index"]), int(m["repair"] or 0))


def in_generation(cid: str, generation: int) -> bool:
    """Whether ``cid`` (a child or one of its repairs) was made in ``generation``."""
    try:
        return parse(cid).generation == generation
    except ValueError:
        return False
