"""darwin_io: the training program's side of the DARWIN data contract.

This file is trusted code that DARWIN mounts read-only inside the training sandbox and puts on
PYTHONPATH, so a program can simply ``import darwin_io``. It has no dependency beyond numpy and
the standard library. A program may also speak the protocol itself (see seed/README.md):

    request : 8 bytes, little-endian uint32 batch_size, uint32 block_size
    reply   : 4 bytes, little-endian uint32 n_rows (0 = refused: the budget cannot cover it)
              then n_rows * (block_size + 1) little-endian uint16 tokens

Each row is a window of block_size + 1 consecutive training tokens: inputs are row[:-1], targets
row[1:]. Every reply spends batch_size * block_size tokens of the budget. Once the budget is
spent, no more training data arrives.

Extra text sources a person approved (``sources()`` lists them; "shakespeare" is the default)
are asked for by name: bit 31 of batch_size set, then one byte with the name's length and the
name. They share the same budget and the same vocabulary.
"""

from __future__ import annotations

import json
import os
import socket
import struct

import numpy as np

_sock: socket.socket | None = None


def budget() -> dict:
    """What this run may spend, as DARWIN set it from outside."""
    return {
        "name": os.environ.get("DARWIN_BUDGET", "tiny"),
        "tokens": int(os.environ["DARWIN_BUDGET_TOKENS"]),
        "deadline_s": float(os.environ["DARWIN_DEADLINE_S"]),
        "eval_context": int(os.environ["DARWIN_EVAL_CONTEXT"]),
        "vocab_size": int(os.environ["DARWIN_VOCAB_SIZE"]),
        "seed": int(os.environ.get("DARWIN_SEED", "0")),
        "device": os.environ.get("DARWIN_DEVICE", "cpu"),
        "out_dir": os.environ.get("DARWIN_OUT_DIR", "."),
    }


def sources() -> list[str]:
    """The text sources this run may read: "shakespeare", then any approved extra ones."""
    names = os.environ.get("DARWIN_DATA_SOURCES", "shakespeare")
    return [n for n in names.split(",") if n]


def _connection() -> socket.socket:
    global _sock
    if _sock is None:
        _sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        _sock.connect(os.environ["DARWIN_DATA_SOCKET"])
    return _sock


def _read_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise ConnectionError("the DARWIN data server closed the connection")
        buf += chunk
    return bytes(buf)


def get_batch(batch_size: int, block_size: int, source: str | None = None) -> np.ndarray | None:
    """Return a (batch_size, block_size + 1) int64 array of training tokens (of ``source``, one
    of ``sources()``; default the corpus), or None once the remaining budget cannot cover
    batch_size * block_size more tokens."""
    sock = _connection()
    if source is None or source == "shakespeare":
        sock.sendall(struct.pack("<II", batch_size, block_size))
    else:
        if source not in sources():
            raise ValueError(f"unknown data source {source!r}; this run has {sources()}")
        name = source.encode()
        sock.sendall(struct.pack("<II", batch_size | (1 << 31), block_size)
                     + bytes([len(name)]) + name)
    (rows,) = struct.unpack("<I", _read_exact(sock, 4))
    if rows == 0:
        return None
    raw = _read_exact(sock, rows * (block_size + 1) * 2)
    return np.frombuffer(raw, dtype="<u2").reshape(rows, block_size + 1).astype(np.int64)


def write_claims(**claims: float | int | str) -> None:
    """Record what the program believes about itself (kept as claims, never trusted)."""
    path = os.path.join(os.environ.get("DARWIN_OUT_DIR", "."), "claims.json")
    with open(path, "w") as f:
        json.dump(claims, f)
