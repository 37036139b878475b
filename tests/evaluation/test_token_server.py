"""The token server charges every batch against the budget and refuses what it cannot cover."""

import socket
import struct

import numpy as np

from darwin.evaluation.token_server import TokenServer


def _ask(sock, batch, block, source: str | None = None):
    """One request (of a named source when given); the rows, None when refused, or "hung up"."""
    head = struct.pack("<II", batch | (1 << 31 if source else 0), block)
    sock.sendall(head + (bytes([len(source)]) + source.encode() if source else b""))
    got = sock.recv(4, socket.MSG_WAITALL)
    if len(got) < 4:
        return "hung up"
    (rows,) = struct.unpack("<I", got)
    if rows == 0:
        return None
    n = rows * (block + 1) * 2
    buf = b""
    while len(buf) < n:
        buf += sock.recv(n - len(buf))
    return np.frombuffer(buf, dtype="<u2").reshape(rows, block + 1)


def test_budget_is_enforced_and_windows_come_from_train(tmp_path):
    train = np.arange(10_000, dtype=np.uint16) % 65
    with TokenServer(tmp_path / "s.sock", train, budget_tokens=1000, seed=0) as server:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(tmp_path / "s.sock"))
        batch = _ask(sock, 4, 100)  # 400 tokens
        assert batch.shape == (4, 101)
        # every row is a contiguous window of the train split
        for row in batch:
            assert np.array_equal(np.diff(row.astype(int)) % 65, np.ones(100) % 65)
        assert _ask(sock, 8, 100) is None  # 800 > 600 left: refused, nothing served
        assert _ask(sock, 6, 100).shape == (6, 101)  # exactly what is left
        assert _ask(sock, 1, 1) is None  # spent
        assert server.tokens_served == 1000
        assert server.refused == 2
        sock.close()


def test_same_seed_same_batches(tmp_path):
    train = np.arange(5_000, dtype=np.uint16)
    got = []
    for i in range(2):
        with TokenServer(tmp_path / f"s{i}.sock", train, budget_tokens=100, seed=7):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(tmp_path / f"s{i}.sock"))
            got.append(_ask(sock, 2, 10))
            sock.close()
    assert np.array_equal(got[0], got[1])


def test_an_over_long_block_tells_nothing_a_served_one_would_not(tmp_path):
    """A block longer than the source gets the budget's refusal, after the budget check and at
    a served reply's cost: probing lengths costs what asking for data costs, and a hang-up (a
    length for free) never happens."""
    train = np.arange(10_000, dtype=np.uint16) % 65
    extra = np.arange(500, dtype=np.uint16) % 65
    with TokenServer(tmp_path / "s.sock", train, budget_tokens=3000, seed=0,
                     sources={"poems": extra}) as server:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(tmp_path / "s.sock"))
        assert _ask(sock, 1, 600, source="poems") is None  # longer than the source: refused...
        assert server.tokens_served == 600  # ...and charged like a served block
        assert _ask(sock, 1, 5000, source="poems") is None  # over the budget: refused, free
        assert server.tokens_served == 600
        assert _ask(sock, 1, 400, source="poems").shape == (1, 401)  # the connection lives on
        assert _ask(sock, 1, 20_000) is None  # the default source too
        sock.close()
