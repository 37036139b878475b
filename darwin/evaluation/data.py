"""The dataset, its vocabulary and its fixed train / val / test split (trusted side only).

Tiny Shakespeare, character-level: the vocabulary is the sorted set of the corpus' characters
(65 symbols). The split is by position and never changes: the first 90 % trains (the only part a
program ever sees, served token by token), the next 5 % is val (scores every child, drives
selection), the last 5 % is test (final reports only).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

from darwin.errors import UserError

CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
TRAIN_FRACTION = 0.90
VAL_FRACTION = 0.05  # test is the rest


def corpus_path() -> Path:
    return Path(str(resources.files("darwin.seed") / "data" / "tinyshakespeare.txt"))


@dataclass(frozen=True)
class Dataset:
    vocab: str
    train: np.ndarray  # uint16 token ids
    val: np.ndarray
    test: np.ndarray
    sha256: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def text(self, tokens: np.ndarray) -> str:
        return "".join(self.vocab[int(i)] for i in tokens)

    def split(self, name: str) -> np.ndarray:
        if name not in ("val", "test"):
            raise ValueError(f"unknown held-out split {name!r}")
        return self.val if name == "val" else self.test


@lru_cache(maxsize=1)
def load_dataset() -> Dataset:
    path = corpus_path()
    if not path.is_file():
        raise UserError(
            f"dataset missing: {path} not found; reinstall DARWIN (pip install -e .) to restore it"
        )
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != CORPUS_SHA256:
        raise UserError(
            f"dataset changed: {path} has sha256 {digest[:12]}…, expected {CORPUS_SHA256[:12]}…; "
            "restore the original file"
        )
    text = raw.decode("utf-8")
    vocab = "".join(sorted(set(text)))
    lookup = np.zeros(max(map(ord, vocab)) + 1, dtype=np.uint16)
    for i, ch in enumerate(vocab):
        lookup[ord(ch)] = i
    ids = lookup[np.frombuffer(text.encode("ascii"), dtype=np.uint8)]
    n_train = int(len(ids) * TRAIN_FRACTION)
    n_val = int(len(ids) * VAL_FRACTION)
    return Dataset(
        vocab=vocab,
        train=ids[:n_train],
        val=ids[n_train : n_train + n_val],
        test=ids[n_train + n_val :],
        sha256=digest,
    )


def eval_windows(tokens: np.ndarray, context: int, max_windows: int) -> np.ndarray:
    """Fixed evaluation windows of context + 1 tokens (inputs [:-1], targets [1:]).

    Non-overlapping and evenly spread over the split, so every child is scored on exactly the
    same tokens and no target is ever an input of another row.
    """
    starts = window_starts(len(tokens), context, max_windows)
    return np.stack([tokens[s : s + context + 1] for s in starts]).astype(np.int64)


def window_starts(length: int, context: int, max_windows: int) -> np.ndarray:
    """Where ``eval_windows`` takes its windows in a text of ``length`` tokens: multiples of
    ``context``, so windows touch only when their starts are ``context`` apart."""
    n_max = (length - 1) // context
    n = min(n_max, max_windows)
    return np.linspace(0, (n_max - 1) * context, n).astype(np.int64) // context * context
