"""Leave-own-basket-out: the offset turns the ranker's co-occurrence score into the score of a table built without
the example's own basket, computed here the long way (the pairs recounted from the other baskets)."""

from __future__ import annotations

import numpy as np
import torch

from services.retrieval.covisitation import basket_pairs
from training.leave_out import CooccurrenceLeaveOut
from training.models.sequence_ranker import CooccurrenceScore, SequenceRanker

ITEMS = 12
MAX_BASKET = 4  # smaller than some baskets, so the counted pairs stop at a basket's first items


def _table(baskets: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    popularity = np.bincount(np.concatenate(baskets), minlength=ITEMS).astype(np.float64)
    anchors, rows, scores = basket_pairs(baskets, popularity, max_basket=MAX_BASKET)
    table = np.zeros((ITEMS, ITEMS), dtype=np.float32)
    table[anchors, rows] = scores
    return table, popularity


def _baskets(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.choice(ITEMS, size=int(rng.integers(2, 7)), replace=False) for _ in range(40)]


def test_offset_gives_the_score_of_the_table_without_the_examples_basket():
    rng = np.random.default_rng(3)
    baskets = _baskets(rng)
    similarity, popularity = _table(baskets)
    score = CooccurrenceScore(similarity, recent=5, decay=0.8)
    leave_out = CooccurrenceLeaveOut(similarity, popularity, score, max_basket=MAX_BASKET)
    targets = [0, 7, 21]  # the baskets three examples predict
    history = np.zeros((3, 9), dtype=np.int64)
    for e, t in enumerate(targets):  # histories reuse the target's items (a repeat purchase) and others
        history[e, -6:] = np.concatenate([baskets[t][:2], rng.choice(ITEMS, 4)]) + 1
    candidates = np.stack([np.concatenate([baskets[t][:3], rng.choice(ITEMS, 2), [-1]]) + 1 for t in targets])
    got = leave_out.offsets(history, candidates, [baskets[t] for t in targets])
    with torch.no_grad():
        served = score(torch.from_numpy(history), torch.from_numpy(candidates)).numpy()
    for e, t in enumerate(targets):
        without, _ = _table(baskets[:t] + baskets[t + 1 :])
        # The long way, in float64 from the recounted table (the graph reads float16; the offset removes that too).
        weights = 0.8 ** np.arange(5)[::-1]
        recent = history[e, -5:]
        want = [
            sum(w * without[h - 1, c - 1] for w, h in zip(weights, recent, strict=True) if h > 0) if c > 0 else 0.0
            for c in candidates[e]
        ]
        assert np.allclose(served[e] + got[e], want, atol=1e-5), (e, served[e] + got[e], want)
    assert np.abs(got).max() > 0.01  # the own basket did change scores
    assert got[:, -1].tolist() == [0.0, 0.0, 0.0]  # padding candidate


def test_offset_is_zero_where_the_examples_basket_holds_neither_item():
    rng = np.random.default_rng(4)
    baskets = _baskets(rng)
    similarity, popularity = _table(baskets)
    score = CooccurrenceScore(similarity, recent=4)
    leave_out = CooccurrenceLeaveOut(similarity, popularity, score, max_basket=MAX_BASKET)
    target = baskets[5]
    others = np.setdiff1d(np.arange(ITEMS), target)
    history = (rng.choice(others, (1, 4)) + 1).astype(np.int64)
    candidates = (rng.choice(others, (1, 3)) + 1).astype(np.int64)
    got = leave_out.offsets(history, candidates, [target])
    table16 = similarity.astype(np.float16).astype(np.float64)
    rounding = sum(
        w * (similarity[h - 1, candidates[0] - 1] - table16[h - 1, candidates[0] - 1])
        for w, h in zip(score.weights.numpy(), history[0], strict=True)
    )
    assert np.allclose(got[0], rounding, atol=1e-6)  # only the float16 rounding of the served table


def test_ranker_adds_the_offset_to_the_cooccurrence_score_only():
    rng = np.random.default_rng(5)
    similarity, _ = _table(_baskets(rng))
    torch.manual_seed(0)
    model = SequenceRanker(
        ITEMS, num_features=2, dim=8, history_length=6, layers=1, cooccurrence=CooccurrenceScore(similarity)
    )
    history = torch.randint(1, ITEMS + 1, (2, 6))
    candidates = torch.randint(1, ITEMS + 1, (2, 3))
    offset = torch.full((2, 3), 0.25)
    plain = model.scores(history, candidates)
    shifted = model.scores(history, candidates, offset)
    assert torch.allclose(shifted - plain, offset[..., None])
    features = torch.zeros(2, 3, 2)
    with torch.no_grad():
        assert not torch.allclose(
            model.logits(history, candidates, features)[0], model.logits(history, candidates, features, offset)[0]
        )


def test_popularity_of_the_examples_basket_items_leaves_that_basket_out():
    from services.ranking.features import CANDIDATE_FEATURES, ItemFeatureSnapshot
    from training.leave_out import leave_popularity_out

    popularity = np.array([5.0, 1.0, 0.0, 12.0])
    ones = np.ones(4)
    snapshot = ItemFeatureSnapshot.from_catalog(ones, ones, popularity, ones * 0.1, ones)
    without = ItemFeatureSnapshot.from_catalog(ones, ones, np.maximum(popularity - 1, 0), ones * 0.1, ones)
    candidates = np.array([[0, 1, 3], [3, 2, 0]])
    bought = np.array([[True, True, False], [False, False, True]])
    column = CANDIDATE_FEATURES.index("log_popularity")
    features = np.zeros((2, 3, len(CANDIDATE_FEATURES)))
    features[..., : len(snapshot.names)] = snapshot.values[candidates + 1]
    before = features.copy()
    leave_popularity_out(features, candidates, bought, popularity)
    assert np.allclose(features[..., column][bought], without.values[candidates[bought] + 1, column])
    assert np.array_equal(features[..., column][~bought], before[..., column][~bought])  # other candidates as served
    other = np.arange(features.shape[-1]) != column
    assert np.array_equal(features[..., other], before[..., other])
