"""Extra training text a person approved (trusted side only): checked, cleaned, and refused when
it would contaminate the score.

A file is refused when it is missing, binary, too large or too small, or when it shares any run of
``CONTAMINATION_RUN`` characters with the val or test split: the complete works of Shakespeare
would teach a model the very passages it is scored on. Characters outside the corpus' vocabulary
are dropped and counted. What passes is served by the token server as an extra named source,
within the same token budget (token_server.py).

The contamination check is exact and linear: every shared run of 64 characters contains one of
the held-out text's 32-character blocks at a multiple of 32, so hashing those blocks (tens of
thousands) and every 32-character window of the file (vectorised, in chunks) finds each
candidate; candidates are then confirmed by comparing the characters themselves.

An exact run is beaten by light changes (re-indented lines, changed case, other punctuation), so
both texts are also compared after normalising: lowercase letters and digits only (whitespace,
line breaks and punctuation dropped). A file is refused when it holds more than
``MAX_OVERLAP`` of a held-out split's normalised ``_BLOCK``-character pieces (about seven words
each): the held-out text lightly changed holds nearly all of them, other English text next to
none (a share, not one run, so a shared proverb is no contamination). What it does not catch: a
paraphrase, or under ``MAX_OVERLAP`` of the text (a few hundred words).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from darwin.evaluation.data import load_dataset

MAX_BYTES = 16 << 20
MIN_CHARS = 10_000  # enough windows of any sensible block size
CONTAMINATION_RUN = 64
MAX_OVERLAP = 0.01  # the most of a held-out split's normalised pieces a dataset may hold
_BLOCK = CONTAMINATION_RUN // 2
_CHUNK = 1 << 20
_BASE = np.uint64(0x9E3779B97F4A7C15)


class DatasetRefused(ValueError):
    """Why an extra dataset cannot be used (one line, with the fix)."""


@dataclass(frozen=True)
class CleanDataset:
    name: str
    text: str
    dropped: int  # characters outside the vocabulary, removed
    sha256: str

    def tokens(self) -> np.ndarray:
        return encode(self.text)


def source_name(path: str | Path) -> str:
    """The name a program asks for: the file's stem, lowercase letters, digits and _."""
    name = re.sub(r"[^a-z0-9_]+", "_", Path(path).stem.lower()).strip("_")[:40]
    return name or "extra"


def encode(text: str) -> np.ndarray:
    vocab = load_dataset().vocab
    lookup = np.full(128, 255, dtype=np.uint8)
    for i, ch in enumerate(vocab):
        lookup[ord(ch)] = i
    return lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)].astype(np.uint16)


def local_file(path: str | Path) -> Path:
    """The local file ``path`` names, or DatasetRefused (a URL, nothing there)."""
    if re.match(r"^[a-z][a-z0-9+.-]*://", str(path), re.I):
        raise DatasetRefused(f"{path} is a URL; these machines fetch nothing: name a local file")
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetRefused(f"no file {path}: name an existing local text file")
    return p


def check_dataset(path: str | Path, name: str | None = None) -> CleanDataset:
    """The cleaned dataset, or DatasetRefused saying why."""
    p = local_file(path)
    size = p.stat().st_size
    if size > MAX_BYTES:
        raise DatasetRefused(f"{path} is {size >> 20} MB; the limit is {MAX_BYTES >> 20} MB")
    raw = p.read_bytes()
    if b"\0" in raw[:1 << 16]:
        raise DatasetRefused(f"{path} is binary (NUL bytes): give a text file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DatasetRefused(f"{path} is not UTF-8 text (byte {e.start}): give a text "
                             "file") from None
    vocab = set(load_dataset().vocab)
    kept = "".join(ch for ch in text if ch in vocab)
    if len(kept) < MIN_CHARS:
        raise DatasetRefused(f"{path} has {len(kept)} usable characters; at least {MIN_CHARS} "
                             "are needed")
    share, split = normalised_overlap(kept)
    if share > MAX_OVERLAP:
        raise DatasetRefused(f"{path} is contaminated: once case, spacing, line breaks and "
                             f"punctuation are set aside it holds {share:.1%} of the {split} "
                             f"split (at most {MAX_OVERLAP:.0%}); a score measured on text the "
                             "model trained on means nothing")
    shared = shared_passage(encode(kept))
    if shared is not None:
        passage, split = shared
        raise DatasetRefused(f"{path} is contaminated: it shares a passage of {len(passage)} "
                             f"characters with the {split} split ({passage[:48]!r}…); "
                             "a score measured on text the model trained on means nothing")
    return CleanDataset(name=name or source_name(p), text=kept, dropped=len(text) - len(kept),
                        sha256=hashlib.sha256(kept.encode()).hexdigest())


def _window_hashes(codes: np.ndarray, step: int) -> np.ndarray:
    """Hashes of the 32-character windows of ``codes`` starting every ``step`` characters
    (Horner's rule over the window's offsets, chunk by chunk: 32 passes over small arrays;
    uint64 arithmetic wraps, which is the modulus)."""
    n = len(codes) - _BLOCK + 1
    if n <= 0:
        return np.zeros(0, dtype=np.uint64)
    wide = codes.astype(np.uint64)
    out = []
    for start in range(0, n, _CHUNK):
        stop = min(n, start + _CHUNK)
        h = np.zeros(stop - start, dtype=np.uint64)
        for j in range(_BLOCK):
            h *= _BASE
            h += wide[start + j:stop + j]
        out.append(h)
    return np.concatenate(out)[::step]


def shared_passage(codes: np.ndarray) -> tuple[str, str] | None:
    """A passage of >= 64 characters ``codes`` shares with val or test: (its text, the split),
    or None."""
    data = load_dataset()
    mine = _window_hashes(codes, 1)
    for split in ("val", "test"):
        held = data.split(split)
        blocks = _window_hashes(held, _BLOCK)
        ordered = np.sort(blocks)  # a binary search per window: np.isin sorts both sides
        at = np.minimum(np.searchsorted(ordered, mine), len(ordered) - 1)
        hits = np.flatnonzero(ordered[at] == mine)
        if not len(hits):
            continue
        where = {int(h): k for k, h in enumerate(blocks)}
        for i in hits[:10_000]:
            p = where[int(mine[i])] * _BLOCK
            if not np.array_equal(codes[i:i + _BLOCK], held[p:p + _BLOCK]):
                continue  # a hash collision
            left = 0
            while i - left > 0 and p - left > 0 and codes[i - left - 1] == held[p - left - 1]:
                left += 1
            right = 0
            end_c, end_h = i + _BLOCK, p + _BLOCK
            while (end_c + right < len(codes) and end_h + right < len(held)
                   and codes[end_c + right] == held[end_h + right]):
                right += 1
            if left + _BLOCK + right >= CONTAMINATION_RUN:
                return data.text(held[p - left:end_h + right]), split
    return None


def normalise(text: str) -> np.ndarray:
    """``text`` as lowercase letters and digits only (as bytes): what light editing keeps."""
    return np.frombuffer(re.sub(r"[^a-z0-9]+", "", text.lower()).encode("ascii", "ignore"),
                         dtype=np.uint8)


def normalised_overlap(text: str) -> tuple[float, str]:
    """The largest share of a held-out split's normalised pieces (every ``_BLOCK``-character
    window) found in ``text`` normalised, and that split."""
    data = load_dataset()
    mine = np.unique(_window_hashes(normalise(text), 1))
    best = (0.0, "val")
    for split in ("val", "test"):
        held = _window_hashes(normalise(data.text(data.split(split))), 1)
        if len(held) and len(mine):
            share = float(np.isin(held, mine, assume_unique=False).mean())
            best = max(best, (share, split))
    return best
