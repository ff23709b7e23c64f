"""Aisle's own pipeline as a recommender for offline evaluation: retrieval (two-tower) -> ranker -> top K.

Candidates per customer, as the serving path forms them: the two-tower's top ``retrieve`` items, the top
``co_visit`` items bought together with the customer's newest items (the retrieval service's co-visitation
source, same function), the customer's own past purchases (repeat protocol only: in the discovery protocol they
are excluded before retrieval), the ``trending`` items most bought in the days before the case (the retrieval
service's trending source reads the same counts, as of its index's export) and the ``popular`` most popular
items. The ranker scores them with P(purchase);
items that are not candidates follow in popularity order (they only matter for Recall@100 when there are fewer
than 100 candidates). With recent sales (dated cases, as training and the offline evaluation give), "popular" is
as of the case's day too (``RecentSales.to_date``: baskets of the days before it), so no case sees sales made after
it; without, the static ``popularity`` counts are read, as serving reads its index's column.

The towers and the ranker come in as functions, so the same code evaluates the torch models during training and
the exported ONNX files (what is served) in ``aisle evaluate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from services.ranking.features import ItemFeatureSnapshot
from services.retrieval.covisitation import MAX_ANCHORS, CoVisitationTable, co_visited
from training.data.splits import EvalCase
from training.evaluation.baselines import FILL_CEILING, ScoredBatch, _popularity_fill, _recent_distinct, dated_fill
from training.features import RecentSales, history_tokens, ranker_inputs

QueryFn = Callable[[np.ndarray], np.ndarray]  # history tokens [B, L] -> query vectors [B, D]
RankFn = Callable[[np.ndarray, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


class TwoTowerRetriever:
    """The retrieval stage alone: items by dot product with the query vector."""

    name = "two_tower"

    def __init__(self, query_fn: QueryFn, item_vectors: np.ndarray, history_length: int = 50):
        self.query_fn, self.item_vectors, self.history_length = query_fn, item_vectors, history_length

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch:
        queries = self.query_fn(history_tokens([c.history for c in cases], self.history_length))
        return ScoredBatch((queries @ self.item_vectors.T).astype(np.float32))


class AisleRecommender:
    name = "aisle"

    def __init__(
        self,
        query_fn: QueryFn,
        item_vectors: np.ndarray,
        rank_fn: RankFn,
        snapshot: ItemFeatureSnapshot,
        popularity: np.ndarray,
        retrieve: int = 200,
        repeat: int = 100,
        popular: int = 50,
        history_length: int = 50,
        ranker_history_length: int | None = None,
        covisitation: CoVisitationTable | None = None,
        co_visit: int = 0,
        recent: RecentSales | None = None,
        trending: int = 0,
    ):
        self.retriever = TwoTowerRetriever(query_fn, item_vectors, history_length)
        self.rank_fn, self.snapshot = rank_fn, snapshot
        # The ranker's history window (its contract's history length): the towers read the newest
        # ``history_length`` items, the ranker's repeat features count over the whole window.
        self.history_length = ranker_history_length or history_length
        self.fill = _popularity_fill(popularity)
        self.popular_order = np.argsort(-popularity, kind="stable")
        self.retrieve, self.repeat, self.popular = retrieve, repeat, popular
        self.covisitation, self.co_visit = covisitation, co_visit if covisitation is not None else 0
        # Recent sales as of each case's day: the trending candidates, the ranker's log_trending feature, and the
        # popular source and fill (popularity to date). Without them the ranker reads the snapshot's own column and
        # the popular source the static ``popularity``, as serving does.
        self.recent, self.trending = recent, trending if recent is not None else 0

    @classmethod
    def from_config(
        cls,
        config: Mapping,
        query_fn: QueryFn,
        item_vectors: np.ndarray,
        rank_fn: RankFn | None,
        snapshot: ItemFeatureSnapshot | None,
        popularity: np.ndarray,
        covisitation: CoVisitationTable | None,
        recent: RecentSales | None = None,
    ) -> AisleRecommender:
        """The candidate set a training configuration (``FitConfig`` as a dict, or the one a run recorded) names."""
        return cls(
            query_fn,
            item_vectors,
            rank_fn,
            snapshot,
            popularity,
            config["retrieve"],
            config["repeat"],
            config["popular"],
            config["history_length"],
            config.get("ranker_history_length", config["history_length"]),
            covisitation,
            config.get("co_visit", 0),
            recent,
            config.get("trending", 0),
        )

    def co_visited(self, window: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """The co-visitation source's rows for a history window (oldest first), as retrieval serves them."""
        if not self.co_visit:
            return np.empty(0, dtype=np.int64)
        return co_visited(self.covisitation, _recent_distinct(window, MAX_ANCHORS), self.co_visit, allowed)[0]

    def bought_before(self, window: np.ndarray) -> np.ndarray:
        """The buy-again source's rows for a history window: its newest ``repeat`` distinct items."""
        return _recent_distinct(window, self.repeat)

    def popular_items(self, allowed: np.ndarray | None = None, order: np.ndarray | None = None) -> np.ndarray:
        """The popularity source's rows: the ``popular`` most popular ``allowed`` items, ties by row. ``order``:
        the items by descending popularity as of a case (default: the static ``popularity``'s)."""
        order = self.popular_order if order is None else order
        order = order if allowed is None else order[allowed[order]]
        return order[: self.popular]

    def popularity_fill(self, cases: list[EvalCase]) -> np.ndarray:
        """[cases, items] scores below every candidate's that order the rest of the catalog by popularity, as of
        each case's day when cases are dated (``recent``), else by the static counts."""
        if self.recent is None:
            return np.tile(self.fill, (len(cases), 1))
        return dated_fill(self.recent, cases)

    def _popular_orders(self, cases: list[EvalCase]) -> list[np.ndarray | None]:
        """Per case, the items by popularity as of its day (None: the static order)."""
        if self.recent is None or not self.popular:
            return [None] * len(cases)
        counts, rows = self.recent.to_date([c.time for c in cases])
        orders = np.argsort(-counts, axis=1, kind="stable")
        return [orders[r] for r in rows]

    def trending_items(self, sales: np.ndarray, allowed: np.ndarray | None = None) -> np.ndarray:
        """The trending source's rows for recent sales ``sales`` (``RecentSales.at``), as retrieval serves its
        index's ``trending`` column: the ``trending`` best-selling ``allowed`` items, ties by row, none unsold."""
        if allowed is not None:
            sales = np.where(allowed, sales, 0.0)
        order = np.argsort(-sales, kind="stable")[: self.trending]
        return order[sales[order] > 0]

    def candidates(self, cases: list[EvalCase], exclude_history: bool) -> np.ndarray:
        """[U, C] catalog rows, -1 padding."""
        similarity = self.retriever.score(cases).scores
        popular_orders = self._popular_orders(cases)
        rows = []
        for u, case in enumerate(cases):
            history = np.unique(case.history)
            # The newest ``history_length`` events: what the gateway keeps and sends retrieval (the ranker's window,
            # the gateway's max_history and session_max_events are one number; a test holds them together).
            window = case.history[-self.history_length :]
            scores = similarity[u]
            if exclude_history and len(history):
                scores = scores.copy()
                scores[history] = -np.inf
            k = min(self.retrieve, len(scores) - 1)
            retrieved = np.argpartition(-scores, k)[:k] if k > 0 else np.arange(len(scores))
            allowed = None  # as retrieval's allowed mask: the customer's items are out in discovery
            if exclude_history and len(history):
                allowed = np.ones(len(scores), dtype=bool)
                allowed[history] = False
            parts = [retrieved, self.popular_items(allowed, popular_orders[u])]
            if self.trending:
                parts.append(self.trending_items(self.recent.at(case.time), allowed))
            if self.co_visit:
                parts.append(self.co_visited(window, allowed))
            if not exclude_history:
                parts.append(self.bought_before(window))
            chosen = np.unique(np.concatenate(parts))
            if exclude_history and len(history):
                chosen = chosen[~np.isin(chosen, history)]
            rows.append(chosen)
        width = max((len(r) for r in rows), default=0)
        out = np.full((len(cases), width), -1, dtype=np.int64)
        for u, r in enumerate(rows):
            out[u, : len(r)] = r
        return out

    def dated(self, cases: list[EvalCase]) -> tuple[RecentSales | None, list[int] | None]:
        """``ranker_inputs``' (recent, times) for these cases: each case's features as of its own day."""
        return (self.recent, [c.time for c in cases]) if self.recent is not None else (None, None)

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch:
        candidates = self.candidates(cases, exclude_history)
        history, tokens, features = ranker_inputs(
            self.snapshot, [c.history for c in cases], candidates, self.history_length, *self.dated(cases)
        )
        purchase, _ = self.rank_fn(history, tokens, features)
        scores = self.popularity_fill(cases)
        probabilities = np.full(scores.shape, np.nan, dtype=np.float32)
        users, slots = np.nonzero(candidates >= 0)
        items = candidates[users, slots]
        # Above every fill score, by the least that keeps the ranker's own float32 order (1.0 + p merged
        # probabilities closer than 1.2e-7 into ties).
        scores[users, items] = FILL_CEILING + purchase[users, slots]
        probabilities[users, items] = purchase[users, slots]
        return ScoredBatch(scores, probabilities)
