"""The trusted token server: the only way training data reaches a program.

It listens on a unix socket that is bind-mounted into the sandbox (no network needed) and answers
``get_batch`` requests (protocol in darwin/evaluation/runtime/darwin_io.py) with random windows of the train
split, drawn from an RNG seeded by the run's seed. Every reply is charged against the budget; a
request the remaining budget cannot cover gets nothing (and costs nothing): once the budget is
spent, no more data arrives. Extra named sources a person approved (extra_data.py) are served the
same way, from the same budget: a request naming a source sets bit 31 of its batch size and
follows the 8-byte header with one length byte and the source's name.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
from pathlib import Path

import numpy as np

MAX_TOKENS_PER_REQUEST = 1 << 23  # keeps one request from making us allocate gigabytes
NAMED = 1 << 31  # a batch size with this bit set: a source name follows the header
DEFAULT_SOURCE = "shakespeare"


class TokenServer:
    def __init__(self, socket_path: Path, train: np.ndarray, budget_tokens: int, seed: int,
                 sources: dict | None = None):
        self.socket_path = Path(socket_path)
        self._train = train.astype("<u2", copy=False)
        self._sources = {DEFAULT_SOURCE: self._train, **{
            name: tokens.astype("<u2", copy=False) for name, tokens in (sources or {}).items()}}
        self.served_by_source: dict[str, int] = {}
        self.budget_tokens = budget_tokens
        self.tokens_served = 0
        self.requests = 0
        self.refused = 0
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> TokenServer:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        if self.socket_path.exists():
            self.socket_path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(self.socket_path))
        # The sandboxed program runs as another uid and must be able to connect.
        os.chmod(self.socket_path, 0o666)
        listener.listen(8)
        self._listener = listener
        t = threading.Thread(target=self._accept_loop, name="darwin-token-server", daemon=True)
        t.start()
        self._threads.append(t)
        return self

    def close(self) -> None:
        self._closed = True
        for s in [self._listener, *self._conns]:
            if s is not None:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()
        for t in self._threads:
            t.join(timeout=2)
        try:
            self.socket_path.unlink()
        except FileNotFoundError:
            pass

    def __enter__(self) -> TokenServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def remaining(self) -> int:
        return self.budget_tokens - self.tokens_served

    # -- serving -----------------------------------------------------------------------------
    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            while not self._closed:
                try:
                    header = _recv_exact(conn, 8)
                except OSError:
                    return
                if header is None:
                    return
                batch, block = struct.unpack("<II", header)
                tokens = self._train
                if batch & NAMED:
                    batch &= ~NAMED
                    size = _recv_exact(conn, 1)
                    name = _recv_exact(conn, size[0]) if size and size[0] else None
                    tokens = self._sources.get(name.decode(errors="replace")) if name else None
                    if tokens is None:
                        return  # an unknown source: hang up, like any malformed request
                    source = name.decode()
                else:
                    source = DEFAULT_SOURCE
                if batch < 1 or block < 1:
                    return  # malformed: hang up
                # A block longer than the source is answered by _take like a request the budget
                # cannot cover, after the budget check and charged: hanging up here would tell
                # the program a source's length for free.
                payload = self._take(batch, block, tokens, source)
                try:
                    if payload is None:
                        conn.sendall(struct.pack("<I", 0))
                    else:
                        conn.sendall(struct.pack("<I", batch) + payload)
                except OSError:
                    return

    def _take(self, batch: int, block: int, tokens: np.ndarray, source: str) -> bytes | None:
        cost = batch * block
        with self._lock:
            self.requests += 1
            if cost > self.remaining or batch * (block + 1) > MAX_TOKENS_PER_REQUEST:
                self.refused += 1
                return None
            if block >= len(tokens) - 1:  # over-long: the same refusal, at a served reply's cost
                self.refused += 1
                self.tokens_served += cost
                return None
            self.tokens_served += cost
            self.served_by_source[source] = self.served_by_source.get(source, 0) + cost
            starts = self._rng.integers(0, len(tokens) - block - 1, size=batch)
        rows = np.stack([tokens[s : s + block + 1] for s in starts])
        return rows.astype("<u2", copy=False).tobytes()


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)
