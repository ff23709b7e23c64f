from __future__ import annotations

import numpy as np
import pytest

from services.ranking.features import (
    CANDIDATE_FEATURES,
    PADDING_TOKEN,
    REQUEST_FEATURES,
    STATIC_FEATURES,
    ItemFeatureSnapshot,
    ItemVocabulary,
    candidate_features,
    encode_history,
    request_features,
)


def test_tokens_start_at_one_and_unknown_is_padding():
    vocabulary = ItemVocabulary(["a", "b", "c"])
    assert vocabulary.tokens(["c", "a", "zzz"]).tolist() == [3, 1, PADDING_TOKEN]
    assert len(vocabulary) == 3


def test_duplicate_ids_are_refused():
    with pytest.raises(ValueError):
        ItemVocabulary(["a", "a"])


def test_history_is_left_padded_and_unknown_items_dropped():
    assert encode_history(np.array([5, 0, 7]), 4).tolist() == [0, 0, 5, 7]


def test_long_history_keeps_the_newest():
    assert encode_history(np.arange(1, 11), 3).tolist() == [8, 9, 10]


def test_empty_history_is_all_padding():
    assert encode_history(np.array([], dtype=np.int64), 3).tolist() == [0, 0, 0]


def test_request_features_count_recency_share_and_items_since():
    history = np.array([[0, 0, 5, 7, 5]])
    got = request_features(history, np.array([[5, 7, 9, 0]]))
    assert got.shape == (1, 4, len(REQUEST_FEATURES))
    assert np.allclose(got[0, :, 0], np.log1p([2, 1, 0, 0]))
    assert np.allclose(got[0, :, 1], [1.0, 0.8, 0.0, 0.0])  # padding never matches
    assert np.allclose(got[0, :, 2], [2 / 3, 1 / 3, 0.0, 0.0])  # share of the 3 known items
    assert np.allclose(got[0, :, 3], np.log1p([0, 1, 5, 5]))  # absent: the window's length


def test_request_features_use_the_whole_window():
    """An item bought only at the oldest slot of a long window still counts (buy-again's frequency and recency)."""
    history = np.zeros((2, 200), dtype=np.int64)
    history[0] = np.arange(200) % 40 + 1  # item 1 at slots 0, 40, ..., 160
    got = request_features(history, np.array([[1, 40], [1, 40]]))
    assert np.allclose(got[0, :, 0], np.log1p([5, 5]))
    assert np.allclose(got[0, :, 1], [161 / 200, 1.0])
    assert np.allclose(got[0, :, 3], np.log1p([39, 0]))
    assert np.allclose(got[1], [[0.0, 0.0, 0.0, np.log1p(200)]] * 2)  # an empty history: no division by zero


def test_snapshot_defaults_serve_unknown_items(tmp_path):
    snapshot = ItemFeatureSnapshot.from_catalog(
        prices=np.array([1.0, 3.0, 100.0]),
        margins=np.array([0.1, 0.2, 0.3]),
        popularity=np.array([0, 10, 5]),
        return_rates=np.array([0.0, 0.3, 0.0]),
        in_stock=np.array([1, 0, 4]),
    )
    path = tmp_path / "item_features.npz"
    snapshot.save(path)
    loaded = ItemFeatureSnapshot.load(path)
    assert loaded.names == STATIC_FEATURES and len(loaded) == 3
    features = candidate_features(loaded, np.zeros((1, 4), dtype=np.int64), np.array([[2, 0, 99]]))
    assert features.shape == (1, 3, len(CANDIDATE_FEATURES))
    assert np.allclose(features[0, 0, :5], [np.log1p(3.0), 0.2, np.log1p(10), 0.3, 0.0])
    defaults = [np.log1p(3.0), 0.2, 0.0, 0.1, 1.0]
    assert np.allclose(features[0, 1, :5], defaults) and np.allclose(features[0, 2, :5], defaults)


def test_snapshot_refuses_non_finite_values():
    with pytest.raises(ValueError, match="NaN"):
        ItemFeatureSnapshot(("a",), np.array([[0.0], [np.nan]]))


def test_request_features_equal_the_plain_comparison_on_random_windows():
    """The sort-based join against the obvious L x C comparison, on seeded windows with repeats and padding."""
    rng = np.random.default_rng(7)
    history = rng.integers(0, 12, size=(6, 30))  # small vocabulary: many repeats; 0 = padding anywhere
    history[0] = 0  # an empty window
    candidates = rng.integers(0, 14, size=(6, 9))  # some absent, some unknown (0)
    length = history.shape[1]
    matches = (candidates[:, :, None] == history[:, None, :]) & (history != 0)[:, None, :]
    count = matches.sum(axis=2)
    newest = np.where(count > 0, length - 1 - np.argmax(matches[:, :, ::-1], axis=2), -1)
    recency = np.where(newest >= 0, (newest + 1) / length, 0.0)
    share = count / np.maximum((history != 0).sum(axis=1, keepdims=True), 1)
    since = np.where(newest >= 0, length - 1 - newest, length)
    expected = np.stack([np.log1p(count), recency, share, np.log1p(since)], axis=2).astype(np.float32)
    np.testing.assert_allclose(request_features(history, candidates), expected, rtol=0, atol=1e-7)


class _SameHash(str):
    def __hash__(self) -> int:
        return 7


def test_a_vocabulary_whose_ids_share_a_hash_still_tells_them_apart():
    # Its id table refuses ids with one hash; the vocabulary falls back to a dict.
    vocabulary = ItemVocabulary([_SameHash("a"), _SameHash("b")])
    assert vocabulary.tokens([_SameHash("b"), _SameHash("a"), _SameHash("c")]).tolist() == [2, 1, PADDING_TOKEN]
    assert len(vocabulary) == 2 and vocabulary.token(_SameHash("b")) == 2
