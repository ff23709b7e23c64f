from __future__ import annotations

import numpy as np
import pytest

from services.ranking.features import (
    CANDIDATE_FEATURES,
    PADDING_TOKEN,
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


def test_request_features_count_and_recency():
    history = np.array([[0, 0, 5, 7, 5]])
    got = request_features(history, np.array([[5, 7, 9, 0]]))
    assert np.allclose(got[0, :, 0], np.log1p([2, 1, 0, 0]))
    assert np.allclose(got[0, :, 1], [1.0, 0.8, 0.0, 0.0])  # padding never matches


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
