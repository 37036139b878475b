"""A private evaluation text: held-out text no candidate can know in advance.

The val and test splits are public: a program (or the LLM writing it) can carry them in an
encoding no scan reads and look each row's prefix up causally, and every check that compares a
model only with itself passes. The one measure such a model cannot game is text it has never
seen: a file the user keeps private (never in the corpus, never shown to the LLM or a program),
named by ``DARWIN_PRIVATE_EVAL`` on the machine that scores. Process A answers its windows beside
the held-out ones, in the same secret batching, and they are probed like the train sample; the
memorisation gap is the private loss minus the val loss.

What it proves: an honest model's val and private losses differ only by how far the private text
is from the corpus (a Shakespeare-like text: a few tenths of a nat at most), so a model whose val
loss sits ``GAP`` nats or more below its private loss (beyond the noise) learnt the val text, not
the language: flag ``heldout_gap``, which keeps it out of the population. What it does not prove:
a gap under ``GAP`` (partial memorisation) goes unflagged; text far from the corpus raises every
model's gap (calibrate: score the seed and read its ``private_loss``); and once a private file
has been used, anything that saw a scorer's inputs could know it (keep it off the run store and
out of prompts: only its sha256 is recorded).
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path

import numpy as np

ENV = "DARWIN_PRIVATE_EVAL"
WINDOWS = 64  # private windows scored (and probed) per scoring
GAP = 0.25  # nats: the least private-minus-val gap flagged, beyond 3 standard errors


def private_tokens() -> tuple[np.ndarray, str] | None:
    """The private text's token ids and its sha256, or None when no file is named."""
    path = os.environ.get(ENV, "").strip()
    if not path:
        return None
    p = Path(path).expanduser()
    return _load(str(p), p.stat().st_mtime_ns)


@lru_cache(maxsize=2)
def _load(path: str, _mtime: int) -> tuple[np.ndarray, str]:
    from darwin.evaluation.data import load_dataset

    vocab = load_dataset().vocab
    index = {ch: i for i, ch in enumerate(vocab)}
    text = Path(path).read_text("utf-8", errors="ignore")
    ids = np.fromiter((index[c] for c in text if c in index), dtype=np.int64)
    return ids, hashlib.sha256(text.encode()).hexdigest()


def gap_flag(val_loss: float, private_losses: np.ndarray) -> str | None:
    """``heldout_gap: ...`` when the val loss sits far below the private text's loss."""
    private = float(np.mean(private_losses))
    spread = float(np.std(private_losses)) / max(1.0, len(private_losses)) ** 0.5
    gap = private - val_loss
    if gap > max(3 * spread, GAP):
        return (f"heldout_gap: val loss {val_loss:.4f} is {gap:.3f} nats below the loss on "
                f"private text it could not know ({private:.4f}): it learnt the public val "
                "text, not the language")
    return None
