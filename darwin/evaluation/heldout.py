"""Finding held-out (val or test) text where it must never be: a program and its output folder.

A program that carries held-out text (in its source, its weights, its config) could score on
memory instead of modelling. Every file is read as characters and as token ids stored in the
common widths (u8/u16/u32/u64 little-endian at every byte offset, and float32 / float16 / bfloat16
values that are whole token ids); any run of ``RUN`` or more held-out tokens in one of those views
is found.

How, fast: every ``GRAM``-token piece of the held-out text is hashed once. A run of ``RUN`` =
2 x ``GRAM`` tokens anywhere in a view contains a piece that starts at a multiple of ``GRAM``, so
only those positions are looked up (vectorised), and each hit is verified and extended by hand.

Bounded: a file is read in chunks of ``CHUNK`` bytes that overlap by ``OVERLAP`` (any run of
``RUN`` tokens in any view spans at most ``8 * RUN`` bytes, so it lies whole in some chunk), so
memory stays near 20 x ``CHUNK`` whatever the file's size; and the scan has a
deadline: past it, the candidate gets a typed failure (never an unbounded wait in the
orchestrator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from darwin.evaluation.data import Dataset, load_dataset
from darwin.evaluation.failures import Failure, Rejected

RUN = 32
GRAM = RUN // 2
CHUNK = 4 << 20  # bytes read and viewed at a time (peak memory about 20 x this)
OVERLAP = 8 * RUN + 16  # the widest run (u64 ids) at any alignment, with room for escapes
NONE = 255  # "not a token" in a view
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _gram_hashes(seq: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hashes of the GRAM-token pieces of ``seq`` at ``positions`` (pieces holding NONE are
    dropped); returns (hashes, the positions kept)."""
    if len(positions) == 0:
        return np.zeros(0, np.uint64), positions
    if positions[0] == 0 and len(positions) > 1 and positions[1] == GRAM \
            and len(positions) * GRAM <= len(seq):  # every GRAM-th piece: a reshape, no index
        grams = seq[: len(positions) * GRAM].reshape(-1, GRAM)
    else:
        grams = seq[positions[:, None] + np.arange(GRAM)]
    keep = ~(grams == NONE).any(axis=1)
    grams, positions = np.ascontiguousarray(grams[keep]), positions[keep]
    halves = grams.view(np.uint64).reshape(-1, 2)
    with np.errstate(over="ignore"):
        return halves[:, 0] * _MIX + halves[:, 1], positions


def views(data: bytes, vocab_size: int):
    """(name, token-id sequence) for each way ``data`` could hold token ids."""
    raw = np.frombuffer(data, dtype=np.uint8)
    for width, kinds in ((1, "u"), (2, "uf"), (4, "uf"), (8, "u")):
        for offset in range(width):
            n = (len(raw) - offset) // width
            if n < RUN:
                continue
            chunk = raw[offset : offset + n * width]
            for kind in kinds:
                if kind == "u":
                    values = chunk.view(f"<u{width}")
                    ids = np.where(values < vocab_size, values, NONE).astype(np.uint8)
                    yield f"u{8 * width} ids", ids
                else:
                    floats = [("float16" if width == 2 else "float32",
                               chunk.view("<f2" if width == 2 else "<f4").astype(np.float32))]
                    if width == 2:  # bfloat16: the top half of a float32
                        top = chunk.view("<u2").astype(np.uint32) << 16
                        floats.append(("bfloat16", top.view(np.float32)))
                    for name, values in floats:
                        # Whole values in [0, vocab) (NaN compares false), without an int64
                        # copy of the chunk.
                        with np.errstate(invalid="ignore", over="ignore"):
                            whole = (values >= 0) & (values < vocab_size) \
                                & (np.floor(values) == values)
                        yield f"{name} ids", np.where(whole, values, NONE).astype(np.uint8)


@dataclass
class HeldoutIndex:
    held: np.ndarray  # val ids, NONE, test ids
    n_val: int
    hashes: np.ndarray  # sorted hashes of every GRAM-piece of ``held``
    where: dict[int, list[int]]  # hash -> positions in ``held``
    char_ids: np.ndarray  # byte -> token id (NONE for bytes outside the vocabulary)
    vocab_size: int

    @classmethod
    def of(cls, dataset: Dataset) -> HeldoutIndex:
        return _index(dataset.sha256)

    def find(self, paths: list[Path], deadline_s: float = float("inf")) -> str:
        """A one-line description of the first held-out run found in ``paths`` ("" if none).
        It names the file, the view and the length, never the text. Past ``deadline_s``
        seconds the scan stops with a typed failure (``bad_output``)."""
        stop = _Deadline(deadline_s)
        for path in paths:
            for data in _chunks(Path(path)):
                stop.check()
                found = self._find_in(data, stop)
                if found:
                    length, split, view = found
                    return (f"{Path(path).name} holds {length} tokens of {split} text in a row "
                            f"(as {view}): held-out text must never be in a program or its output")
        return ""

    def _find_in(self, data: bytes, stop: _Deadline) -> tuple[int, str, str] | None:
        # As characters, also with Python/JSON escapes undone (a string literal in a program).
        unescaped = data.replace(b"\\n", b"\n").replace(b"\\'", b"'").replace(b'\\"', b'"')
        texts = [("text", lambda: self.char_ids[np.frombuffer(data, dtype=np.uint8)]),
                 ("escaped text", lambda: self.char_ids[np.frombuffer(unescaped, dtype=np.uint8)])]
        for view, seq in (*((v, make()) for v, make in texts), *views(data, self.vocab_size)):
            length, pos = self._longest(seq, stop)
            if length >= RUN:
                return length, "val" if pos < self.n_val else "test", view
        return None

    def _longest(self, seq: np.ndarray, stop: _Deadline) -> tuple[int, int]:
        positions = np.arange(0, len(seq) - GRAM + 1, GRAM, dtype=np.int64)
        hashes, positions = _gram_hashes(seq, positions)
        at = np.minimum(np.searchsorted(self.hashes, hashes), len(self.hashes) - 1)
        hits = positions[self.hashes[at] == hashes]
        best = (0, 0)
        # Hits are checked by hand: a file made of held-out pieces shorter than RUN (each a hit,
        # some held-out many times) costs seconds per MB here, so the deadline is checked inside.
        for k, (q, h) in enumerate(zip(hits, _gram_hashes(seq, hits)[0])):
            if k % 256 == 255:
                stop.check()
            for p in self.where.get(int(h), ()):
                if not np.array_equal(seq[q : q + GRAM], self.held[p : p + GRAM]):
                    continue
                lo = 0
                while q - lo > 0 and p - lo > 0 and seq[q - lo - 1] == self.held[p - lo - 1] \
                        and seq[q - lo - 1] != NONE:
                    lo += 1
                hi = GRAM
                while q + hi < len(seq) and p + hi < len(self.held) \
                        and seq[q + hi] == self.held[p + hi] and seq[q + hi] != NONE:
                    hi += 1
                if lo + hi > best[0]:
                    best = (lo + hi, p - lo)
                if best[0] >= RUN:
                    return best
        return best


class _Deadline:
    def __init__(self, seconds: float):
        self.seconds, self.at = seconds, time.monotonic() + seconds

    def check(self) -> None:
        if time.monotonic() > self.at:
            raise Rejected(Failure.bad_output,
                           f"the outputs took over {self.seconds:.0f} s to scan for held-out "
                           "text (this budget's limit)")


def _chunks(path: Path):
    """``path``'s bytes in chunks of CHUNK that overlap by OVERLAP (one chunk if it is small)."""
    with open(path, "rb") as f:
        data = f.read(CHUNK)
        yield data
        while len(data) == CHUNK:
            more = f.read(CHUNK - OVERLAP)
            if not more:
                return
            data = data[-OVERLAP:] + more
            yield data


@lru_cache(maxsize=2)
def _index(_sha: str) -> HeldoutIndex:
    dataset = load_dataset()
    held = np.concatenate([dataset.val, [NONE], dataset.test]).astype(np.uint8)
    positions = np.arange(0, len(held) - GRAM + 1, dtype=np.int64)
    hashes, positions = _gram_hashes(held, positions)
    where: dict[int, list[int]] = {}
    for h, p in zip(hashes.tolist(), positions.tolist()):
        where.setdefault(h, []).append(p)
    char_ids = np.full(256, NONE, dtype=np.uint8)
    for i, ch in enumerate(dataset.vocab):
        char_ids[ord(ch)] = i
    return HeldoutIndex(held, len(dataset.val), np.unique(hashes), where, char_ids,
                        dataset.vocab_size)
