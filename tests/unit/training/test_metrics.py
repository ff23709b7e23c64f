"""Metric math on hand-checked examples."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.evaluation.metrics import (
    calibration,
    coverage,
    intra_list_diversity,
    novelty,
    paired_bootstrap,
    top_k,
    user_metrics,
)


def ranked(first: list[int], width: int = 100, offset: int = 1000) -> np.ndarray:
    """A ranked list starting with ``first`` and filled with items that are never relevant."""
    return np.array(first + list(range(offset, offset + width - len(first))))


def test_ndcg_hr_recall_by_hand():
    # User 0: target {7, 9}; 7 at rank 1, 9 at rank 3. User 1: target {5}; not in the top 10, at rank 50.
    top = np.stack([ranked([7, 1, 9]), ranked([1] * 49 + [5])])
    got = user_metrics(top, [np.array([7, 9]), np.array([5])], k=10, k_recall=100)
    ideal = 1 + 1 / math.log2(3)
    assert got["ndcg@10"] == pytest.approx([(1 + 1 / math.log2(4)) / ideal, 0.0])
    assert got["hr@10"].tolist() == [1.0, 0.0]
    assert got["recall@10"].tolist() == [1.0, 0.0]
    assert got["recall@100"].tolist() == [1.0, 1.0]


def test_ndcg_ideal_is_capped_at_k():
    # 12 relevant items, all in the top 10: a perfect list, NDCG 1 (the ideal counts only 10 slots).
    target = np.arange(12)
    got = user_metrics(ranked(list(range(10)))[None], [target], k=10, k_recall=100)
    assert got["ndcg@10"][0] == pytest.approx(1.0)
    assert got["recall@10"][0] == pytest.approx(10 / 12)


def test_a_user_without_targets_is_refused():
    with pytest.raises(ValueError, match="target"):
        user_metrics(ranked([1])[None], [np.array([], dtype=np.int64)])


def test_top_k_orders_by_score_then_row():
    scores = np.array([[0.1, 0.9, 0.5, 0.9]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2]]


def test_top_k_breaks_ties_at_the_cut_off_by_row():
    scores = np.zeros((2, 1000), dtype=np.float32)
    scores[1, 500] = 1.0  # one clear winner, the other 999 tied
    assert top_k(scores, 10).tolist() == [list(range(10)), [500] + list(range(9))]
    # The evaluation ranks the top 100 and reads its first 10: the same 10 as asking for 10.
    assert (top_k(scores, 100)[:, :10] == top_k(scores, 10)).all()


def test_top_k_is_a_stable_sort_by_descending_score():
    rng = np.random.default_rng(0)
    for width, k in ((1, 1), (7, 3), (50, 10), (300, 100), (40, 40), (5, 9)):
        scores = rng.integers(0, 4, size=(6, width)).astype(np.float32)  # many ties everywhere
        scores[rng.random(scores.shape) < 0.2] = -np.inf  # excluded items (discovery) tie too
        want = np.argsort(-scores, axis=1, kind="stable")[:, : min(k, width)]
        assert top_k(scores, k).tolist() == want.tolist()


def test_coverage_novelty_diversity_by_hand():
    top = np.array([[0, 1], [0, 2]])
    assert coverage(top, 10) == pytest.approx(0.3)
    # Three training baskets: item 0 in all three, item 1 in one (with 0), item 2 in none; 4 (basket, item) pairs.
    # p = (baskets holding the item + 1) / (training baskets + catalog size) = 4/6, 2/6, 1/6.
    popularity = np.array([3.0, 1.0, 0.0])
    want = np.mean([-math.log2(4 / 6), -math.log2(2 / 6), -math.log2(4 / 6), -math.log2(1 / 6)])
    assert novelty(top, popularity, baskets=3) == pytest.approx(want)
    categories = np.array([0, 0, 1])
    # List [0, 1]: same category -> 0; list [0, 2]: different -> 1.
    assert intra_list_diversity(top, categories) == pytest.approx(0.5)


def test_calibration_of_a_perfect_and_a_biased_predictor():
    probabilities = np.array([0.0, 0.0, 1.0, 1.0])
    labels = np.array([0, 0, 1, 1])
    assert calibration(probabilities, labels, bins=2)["ece"] == pytest.approx(0.0)
    # Always 0.5 while half are bought: calibrated on average (ECE over one bin is 0).
    assert calibration(np.full(4, 0.5), np.array([0, 1, 0, 1]), bins=1)["ece"] == pytest.approx(0.0)
    # Predicts 0.8 where the rate is 0.25: ECE 0.55.
    biased = calibration(np.full(4, 0.8), np.array([1, 0, 0, 0]), bins=1)
    assert biased["ece"] == pytest.approx(0.55) and biased["bins"][0]["observed"] == pytest.approx(0.25)


def test_paired_bootstrap_ratio_and_interval():
    rng = np.random.default_rng(0)
    b = rng.random(500)
    a = b * 1.2
    result = paired_bootstrap(a, b, samples=500)
    assert result["ratio"] == pytest.approx(1.2)
    # Perfectly paired: every resample gives the same ratio.
    assert result["low"] == pytest.approx(1.2) and result["high"] == pytest.approx(1.2)
    noisy = paired_bootstrap(b + rng.normal(0, 0.3, 500), b, samples=500)
    assert noisy["low"] < noisy["ratio"] < noisy["high"]
    with pytest.raises(ValueError):
        paired_bootstrap(a[:3], b[:4])
