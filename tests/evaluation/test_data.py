"""The dataset split and evaluation windows (pure, no sandbox)."""

import numpy as np

from darwin.evaluation.data import corpus_path, eval_windows, load_dataset


def test_split_is_fixed_and_disjoint():
    ds = load_dataset()
    assert ds.vocab_size == 65
    n = len(ds.train) + len(ds.val) + len(ds.test)
    assert n == 1_115_394
    assert len(ds.train) == int(n * 0.9)
    assert len(ds.val) == int(n * 0.05)
    # The splits are consecutive slices of the corpus: train, then val, then test.
    text = corpus_path().read_text()
    decode = lambda ids: "".join(ds.vocab[i] for i in ids)  # noqa: E731
    assert decode(ds.train[:30]) == text[:30]
    assert decode(ds.val[:30]) == text[len(ds.train) : len(ds.train) + 30]
    assert decode(ds.test[-30:]) == text[-30:]


def test_eval_windows_are_fixed_and_do_not_overlap():
    ds = load_dataset()
    w1 = eval_windows(ds.val, 64, 512)
    w2 = eval_windows(ds.val, 64, 512)
    assert w1.shape == (512, 65)
    assert np.array_equal(w1, w2)
    starts = []
    for row in w1[:50]:
        # find where each window starts in val
        idx = np.flatnonzero(
            np.all(np.lib.stride_tricks.sliding_window_view(ds.val, 65)[::64] == row, axis=1)
        )
        starts.append(int(idx[0]) * 64)
    assert all(b - a >= 64 for a, b in zip(starts, starts[1:]))


def test_eval_windows_cap_at_what_the_split_holds():
    ds = load_dataset()
    w = eval_windows(ds.val, 256, 10_000)
    assert w.shape[0] == (len(ds.val) - 1) // 256
