"""Leave-own-basket-out: what the ranker's co-occurrence score and popularity feature would have been for a training
example had the basket it predicts not been among the baskets counted.

The co-occurrence table (:func:`training.evaluation.baselines.cooccurrence`) is computed once from every training
basket, including the basket each training example predicts. For an item bought again in that basket, the basket's
other items then score higher against it in training than any basket's items can at serving or test time (the basket
served is never in the table). :class:`CooccurrenceLeaveOut` gives, per example and candidate, the offset that turns
the in-graph score (:class:`training.models.sequence_ranker.CooccurrenceScore`) into the score from the table without
the example's own basket; the trainer adds it to the score in training only (``SequenceRanker.logits``'s
``cooccurrence_offset``). The exported graph has no offsets: serving needs none. The same holds for the
``log_popularity`` feature (baskets holding the item): :func:`leave_popularity_out` takes one basket off the count
of every item in the example's basket.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.ranking.features import CANDIDATE_FEATURES, log_counts
from services.retrieval.covisitation import MAX_BASKET_FOR_PAIRS
from training.models.sequence_ranker import CooccurrenceScore


class CooccurrenceLeaveOut:
    """Offsets [B, C] for :class:`CooccurrenceScore` from training targets left out of the counts.

    ``similarity``: the float32 cosine-normalised co-occurrence [items, items] the score was built from; ``popularity``:
    training baskets holding each item (the normalisation); ``score``: the in-graph scorer (its window and weights,
    and its float16 table, whose rounding the offset also removes)."""

    def __init__(
        self,
        similarity: np.ndarray,
        popularity: np.ndarray,
        score: CooccurrenceScore,
        max_basket: int = MAX_BASKET_FOR_PAIRS,
    ):
        items = similarity.shape[0]
        # Token space (row + 1; token 0 is padding with no co-occurrence).
        self.baskets = np.concatenate([[0.0], np.maximum(np.asarray(popularity, dtype=np.float64), 1.0)])
        self.similarity = np.zeros((items + 1, items + 1), dtype=np.float32)
        self.similarity[1:, 1:] = similarity
        self.served = score.similarity.numpy().reshape(items + 1, items + 1)  # what the graph reads (float16)
        # Times bought together, recovered from the normalised table (an integer count per pair).
        self.together = np.rint(self.similarity * np.sqrt(np.outer(self.baskets, self.baskets))).astype(np.float32)
        self.recent = score.recent
        self.weights = score.weights.numpy().astype(np.float64)
        self.max_basket = max_basket

    def offsets(self, history: np.ndarray, candidates: np.ndarray, targets: Sequence[np.ndarray]) -> np.ndarray:
        """``history`` [B, L] and ``candidates`` [B, C] tokens (0 = padding), ``targets`` each example's basket
        (catalog rows, in basket order): the leave-own-basket-out score minus the in-graph score, float32 [B, C]."""
        recent = history[:, -self.recent :]
        weights = self.weights[-recent.shape[1] :]
        count = len(targets)
        held = np.zeros((count, self.baskets.size), dtype=bool)  # the item is in the example's basket
        paired = np.zeros_like(held)  # ... and among the basket's first max_basket items (the pairs counted)
        for e, target in enumerate(targets):
            rows = np.asarray(target, dtype=np.int64) + 1
            held[e, rows] = True
            paired[e, rows[: self.max_basket]] = True
        held[:, 0] = paired[:, 0] = False
        examples = np.arange(count)[:, None]
        h_held, c_held = held[examples, recent], held[examples, candidates]  # [B, R], [B, C]
        h_pair, c_pair = paired[examples, recent], paired[examples, candidates]
        h, c = recent[:, :, None], candidates[:, None, :]
        together = self.together[h, c] - (h_pair[:, :, None] & c_pair[:, None, :] & (h != c))
        baskets = np.maximum(self.baskets[h] - h_held[:, :, None], 1.0) * np.maximum(
            self.baskets[c] - c_held[:, None, :], 1.0
        )
        left_out = np.where((h > 0) & (c > 0) & (h != c), together / np.sqrt(baskets), 0.0)
        change = left_out - self.served[h, c].astype(np.float64)
        return np.einsum("r,brc->bc", weights, change).astype(np.float32)


def leave_popularity_out(
    features: np.ndarray, candidates: np.ndarray, bought: np.ndarray, popularity: np.ndarray
) -> None:
    """In place: ``log_popularity`` of each candidate in its example's basket (``bought`` [B, C]) from its count
    less that basket. ``features`` [B, C, len(CANDIDATE_FEATURES)], ``candidates`` [B, C] catalog rows, ``popularity``
    the counts the snapshot was built from."""
    column = CANDIDATE_FEATURES.index("log_popularity")
    rows = candidates[bought]
    counts = np.maximum(np.asarray(popularity, dtype=np.float64)[rows] - 1.0, 0.0)
    features[..., column][bought] = log_counts(counts)
