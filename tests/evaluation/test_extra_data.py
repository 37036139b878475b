"""Approved extra datasets: what is refused (contamination of the score first), what is cleaned,
and how the token server serves a named source within the one budget."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest

from darwin.evaluation.data import load_dataset
from darwin.evaluation.extra_data import (
    CONTAMINATION_RUN,
    MAX_OVERLAP,
    DatasetRefused,
    check_dataset,
    encode,
    normalised_overlap,
    shared_passage,
    source_name,
)
from darwin.evaluation.token_server import TokenServer
from tests.evaluation.test_token_server import _ask


@pytest.fixture(scope="module")
def corpus():
    return load_dataset()


def _write(tmp_path, name: str, data: str | bytes):
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_a_clean_text_passes_with_foreign_characters_dropped_and_counted(tmp_path, corpus):
    text = corpus.text(corpus.train[:30_000]) + "ünïcödé ~ {} ^ 😀"
    clean = check_dataset(_write(tmp_path, "Sonnets 2.txt", text))
    assert clean.name == "sonnets_2" and clean.dropped == 4 + 4 + 1  # üïöé ~{}^ 😀
    assert len(clean.text) == len(text) - clean.dropped
    assert set(clean.text) <= set(corpus.vocab)
    assert clean.tokens().max() < corpus.vocab_size


@pytest.mark.parametrize("split", ["val", "test"])
def test_a_text_sharing_a_passage_with_val_or_test_is_refused(tmp_path, corpus, split):
    held = corpus.split(split)
    passage = corpus.text(held[1234:1234 + CONTAMINATION_RUN])
    text = corpus.text(corpus.train[:20_000]) + passage + corpus.text(corpus.train[50_000:60_000])
    with pytest.raises(DatasetRefused, match=f"contaminated.*{split} split"):
        check_dataset(_write(tmp_path, "plays.txt", text))
    # One character short of the run is not contamination (and the passage may sit anywhere).
    short = passage[1:] + corpus.text(corpus.train[:20_000])
    assert check_dataset(_write(tmp_path, "plays2.txt", short)).text.startswith(passage[1:])


def test_the_complete_works_would_be_refused(tmp_path, corpus):
    # The corpus itself stands in for the complete works: it holds the held-out text.
    with pytest.raises(DatasetRefused, match="contaminated"):
        check_dataset(_write(tmp_path, "complete_works.txt", corpus.text(corpus.val)
                             + corpus.text(corpus.train[:20_000])))


def _lightly_changed(text: str, how: str) -> str:
    if how == "reindented":
        return "\n".join("    " + " ".join(line.split()) for line in text.splitlines())
    if how == "case":
        return text.swapcase()
    if how == "punctuation_and_breaks":  # line breaks as spaces, punctuation changed
        return text.replace("\n", " ").replace(",", ";").replace(".", "!").replace("'", "")
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["reindented", "case", "punctuation_and_breaks"])
def test_the_heldout_text_lightly_changed_is_refused_on_its_overlap(tmp_path, corpus, how):
    """Every line changed, so no exact run of 64 characters is shared: the normalised overlap
    refuses it (the exact check alone lets the case-changed one through)."""
    held = corpus.text(corpus.val[:40_000])
    text = _lightly_changed(held, how) + corpus.text(corpus.train[:20_000])
    with pytest.raises(DatasetRefused, match=r"contaminated.*holds \d+\.\d% of the val split"):
        check_dataset(_write(tmp_path, "plays.txt", text))
    if how == "case":
        assert shared_passage(encode("".join(c for c in text if c in set(corpus.vocab)))) \
            is None


def test_other_text_with_a_few_shared_phrases_passes(tmp_path, corpus):
    held = corpus.text(corpus.test)
    lines = [ln for ln in held.splitlines() if len(ln) > 40][:8]  # a few quoted lines
    text = corpus.text(corpus.train[:60_000]) + "\n" + "\n".join(ln.upper() for ln in lines)
    share, split = normalised_overlap(text)
    assert 0 < share < MAX_OVERLAP, share
    check_dataset(_write(tmp_path, "quotes.txt", text))


@pytest.mark.parametrize(("name", "data", "words"), [
    ("nothing.txt", None, "no file"),
    ("binary.bin", b"\x00\x01\x02" * 10_000, "binary"),
    ("latin1.txt", "caf\xe9 ".encode("latin-1") * 5_000, "not UTF-8"),
    ("tiny.txt", "to be or not to be\n", "usable characters"),
])
def test_bad_files_are_refused_with_the_reason(tmp_path, name, data, words):
    path = tmp_path / name if data is None else _write(tmp_path, name, data)
    with pytest.raises(DatasetRefused, match=words):
        check_dataset(path)
    with pytest.raises(DatasetRefused, match="URL"):
        check_dataset("https://example.org/works.txt")


def test_too_large_is_refused_before_reading(tmp_path, monkeypatch):
    from darwin.evaluation import extra_data

    monkeypatch.setattr(extra_data, "MAX_BYTES", 1000)
    with pytest.raises(DatasetRefused, match="limit"):
        check_dataset(_write(tmp_path, "big.txt", "a" * 5000))


def test_source_names_are_safe():
    assert source_name("/data/My Poems (v2).txt") == "my_poems_v2"
    assert source_name("???.txt") == "extra"


def test_a_named_source_is_served_from_the_same_budget(tmp_path):
    train = np.zeros(5_000, dtype=np.uint16)
    poems = np.full(5_000, 7, dtype=np.uint16)
    path = tmp_path / "s.sock"
    with TokenServer(path, train, budget_tokens=1000, seed=0, sources={"poems": poems}) as server:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(str(path))
        assert (_ask(sock, 4, 100, "poems") == 7).all()
        assert (_ask(sock, 4, 100) == 0).all()
        assert _ask(sock, 3, 100, "poems") is None  # 300 > the 200 left, whatever the source
        assert server.served_by_source == {"poems": 400, "shakespeare": 400}
        assert _ask(sock, 1, 10, "nope") == "hung up"  # an unknown source is malformed
        sock.close()


def test_darwin_io_asks_for_named_sources(tmp_path, monkeypatch):
    from darwin.evaluation.runtime import darwin_io

    poems = np.full(2_000, 3, dtype=np.uint16)
    path = tmp_path / "io.sock"
    monkeypatch.setenv("DARWIN_DATA_SOCKET", str(path))
    monkeypatch.setenv("DARWIN_DATA_SOURCES", "shakespeare,poems")
    monkeypatch.setattr(darwin_io, "_sock", None)
    with TokenServer(path, np.zeros(2_000, dtype=np.uint16), 10_000, 0, sources={"poems": poems}):
        assert darwin_io.sources() == ["shakespeare", "poems"]
        assert (darwin_io.get_batch(2, 16, source="poems") == 3).all()
        assert (darwin_io.get_batch(2, 16) == 0).all()
        with pytest.raises(ValueError, match="unknown data source 'essays'"):
            darwin_io.get_batch(2, 16, source="essays")
    if darwin_io._sock is not None:
        darwin_io._sock.close()
    os.environ.pop("DARWIN_DATA_SOURCES", None)
