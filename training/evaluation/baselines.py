"""Baselines measured on the same split as Aisle: popularity, item-to-item co-occurrence and buy-again.

Each is built from training data only (``Split.train``) and scores every catalog item for a batch of users. The
popularity each case sees (the popularity baseline, and the fill after the other baselines' own items) is counted
as of the case's day (:meth:`training.features.RecentSales.to_date`): the split holds out per customer, so the
training part also holds other customers' baskets bought after a test basket, which ``Split.popularity()`` counts.
The co-occurrence matrix is counted over the whole training part (see docs/evaluation.md, "Protocol").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.retrieval.covisitation import basket_pairs
from training.data.splits import EvalCase, Split
from training.features import RecentSales


@dataclass
class ScoredBatch:
    scores: np.ndarray  # float32 [users, items]; higher ranks first
    probabilities: np.ndarray | None = None  # P(purchase) [users, items], NaN where the model scored nothing


#: Every popularity fill score is below it; a model's own items score more (this plus their own score).
FILL_CEILING = 1e-3


def _popularity_fill(popularity: np.ndarray) -> np.ndarray:
    """Scores in [0, FILL_CEILING) that order items by popularity (ties by row), for filling a list after a model's
    own items; ``popularity`` [items] or one row per case [cases, items]."""
    ranks = np.argsort(np.argsort(-popularity, axis=-1, kind="stable"), axis=-1, kind="stable")
    return (FILL_CEILING * (1.0 - (ranks + 1) / (popularity.shape[-1] + 1))).astype(np.float32)


def dated_fill(sales: RecentSales, cases: list[EvalCase]) -> np.ndarray:
    """[cases, items] :func:`_popularity_fill` of the popularity as of each case's day (``RecentSales.to_date``)."""
    counts, rows = sales.to_date([c.time for c in cases])
    return _popularity_fill(counts)[rows]


class Popularity:
    name = "popularity"

    def __init__(self, split: Split):
        self.sales = RecentSales.from_split(split)

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch:
        return ScoredBatch(dated_fill(self.sales, cases))


def cooccurrence(split: Split) -> np.ndarray:
    """Cosine-normalised basket co-occurrence [items, items] (float32, zero diagonal) from training baskets: the
    dense form of :func:`services.retrieval.covisitation.basket_pairs`."""
    anchors, rows, scores = basket_pairs((b for user in split.train for b in user.baskets), split.popularity())
    matrix = np.zeros((split.num_items, split.num_items), dtype=np.float32)
    matrix[anchors, rows] = scores
    return matrix


class ItemToItem:
    """Sum of co-occurrence similarities to the user's most recent distinct items (newer weigh more); popularity as
    of the case's day fills the rest of the list."""

    name = "item_to_item"

    def __init__(self, split: Split, recent: int = 10, decay: float = 0.8):
        self.similarity = cooccurrence(split)
        self.sales = RecentSales.from_split(split)
        self.recent, self.decay = recent, decay

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch:
        scores = dated_fill(self.sales, cases)
        for u, case in enumerate(cases):
            recent = _recent_distinct(case.history, self.recent)
            if len(recent):
                weights = self.decay ** np.arange(len(recent), dtype=np.float32)
                _own_then_fill(scores[u], weights @ self.similarity[recent])
        return ScoredBatch(scores)


class BuyAgain:
    """The customer's own past purchases by frequency (baskets holding the item), ties by recency; popularity as of
    the case's day fills the rest of the list."""

    name = "buy_again"

    def __init__(self, split: Split):
        self.sales = RecentSales.from_split(split)

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch:
        scores = dated_fill(self.sales, cases)
        for u, case in enumerate(cases):
            if len(case.history):
                _own_then_fill(scores[u], repeat_scores(case.history, scores.shape[1]))
        return ScoredBatch(scores)


def _own_then_fill(row: np.ndarray, own: np.ndarray) -> None:
    """``row`` (a case's popularity fill) with the items a baseline scored itself (``own`` > 0) above every filled
    one and in its own order: its fill is not added to them, where it would outweigh a small co-occurrence or one
    step of recency (a best seller bought with nothing in the history outranked an item bought with the oldest
    one)."""
    mine = own > 0
    row[mine] = FILL_CEILING + own[mine]


def repeat_scores(history: np.ndarray, num_items: int) -> np.ndarray:
    """count + recency (in (0, 1]: 1 for the newest item), zero for items never bought."""
    counts = np.bincount(history, minlength=num_items).astype(np.float32)
    recency = np.zeros(num_items, dtype=np.float32)
    recency[history] = (np.arange(len(history)) + 1) / len(history)  # later positions overwrite earlier ones
    return counts + recency


def _recent_distinct(history: np.ndarray, count: int) -> np.ndarray:
    """The newest ``count`` distinct items, newest first."""
    reversed_history = history[::-1]
    _, first = np.unique(reversed_history, return_index=True)
    return reversed_history[np.sort(first)][:count]
