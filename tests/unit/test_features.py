from __future__ import annotations

import numpy as np
import pytest

from services.ranking.features import PADDING_TOKEN, ItemVocabulary, encode_history


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
