"""Candidate sources: each turns a request into scored candidates from one signal, tagged with its source.

Sources search within the ``allowed`` mask the servicer builds (business filters); they never filter themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aisle.common.v1 import common_pb2
from services.retrieval.covisitation import MAX_ANCHORS, co_visited
from services.retrieval.state import ServingIndex

#: Anchors (page product, cart items) searched per request: the most recent ones.
MAX_SEARCHED_ANCHORS = 10


@dataclass(frozen=True)
class Query:
    """What the sources need from a request, already resolved against the index."""

    history_rows: Sequence[int]  # oldest first, consented items this index holds
    history_vector: np.ndarray | None  # the encoded query (None without usable history)
    anchors: Sequence[tuple[str, np.ndarray]]  # (item id, vector) of the page's product / the cart's items
    region_column: int | None
    allowed: np.ndarray  # boolean mask over index rows
    allowed_count: int
    k: int
    #: Consented history item ids, oldest first, whether or not this index (shard) holds them; returned items left
    #: out.
    history_items: Sequence[str] = ()


@dataclass(frozen=True)
class Sourced:
    """One source's candidates, best first: index rows, scores, and (optionally) the item that led to each."""

    source: int  # common_pb2.CandidateSource value
    rows: np.ndarray
    scores: np.ndarray
    anchors: list[str] | None = None

    def __len__(self) -> int:
        return int(self.rows.size)

    def anchor(self, i: int) -> str:
        return self.anchors[i] if self.anchors is not None else ""


class Source(Protocol):
    """One candidate source. ``name`` shows up in logs and spans."""

    name: str
    source: int

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced: ...


def ranked_rows(index: ServingIndex, key: str, scores: Callable[[], np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(rows by descending score, scores) for a static score vector, computed once per index version."""
    cached = index.orders.get(key)
    if cached is None:
        values = scores().astype(np.float32)
        order = np.lexsort((np.arange(values.size), -values))
        cached = index.orders[key] = (order, values)
    return cached


def first_allowed(order: np.ndarray, values: np.ndarray, allowed: np.ndarray, k: int):
    """The first ``k`` allowed rows of a precomputed order, scanning only as far as needed."""
    found: list[np.ndarray] = []
    needed, start, step = k, 0, max(4 * k, 1024)
    while needed > 0 and start < order.size:
        chunk = order[start : start + step]
        keep = chunk[allowed[chunk]][:needed]
        found.append(keep)
        needed -= keep.size
        start += step
        step *= 4
    rows = np.concatenate(found) if found else np.empty(0, dtype=np.int64)
    return rows.astype(np.int64), values[rows]


def nearest_history_item(index: ServingIndex, rows: np.ndarray, history_rows: Sequence[int]) -> list[str]:
    """For each candidate row, the history item (held by this index) its vector is closest to."""
    history = list(dict.fromkeys(history_rows))
    if not history or rows.size == 0:
        return [""] * int(rows.size)
    embeddings = index.artifact.embeddings
    best = (embeddings[rows] @ embeddings[history].T).argmax(axis=1)
    return [index.artifact.item_ids[history[i]] for i in best]


class TwoTowerSource:
    """Nearest items to the query tower's vector for the subject's history (ANN, filtered)."""

    name = "TwoTowerSource"
    source = common_pb2.CANDIDATE_SOURCE_TWO_TOWER

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        if query.history_vector is None:
            return _empty(self.source)
        rows, scores = index.search.search(query.history_vector, query.k, query.allowed, query.allowed_count)
        return Sourced(self.source, rows, scores, nearest_history_item(index, rows, query.history_rows))


class ItemToItemSource:
    """Neighbours of the anchor items (the product on the page, the cart): best score over anchors."""

    name = "ItemToItemSource"
    source = common_pb2.CANDIDATE_SOURCE_ITEM_TO_ITEM

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        anchors = list(dict(query.anchors).items())[-MAX_SEARCHED_ANCHORS:]
        if not anchors:
            return _empty(self.source)
        found = [index.search.search(vector, query.k, query.allowed, query.allowed_count) for _, vector in anchors]
        rows = np.concatenate([r for r, _ in found])
        scores = np.concatenate([s for _, s in found]).astype(np.float32, copy=False)
        which = np.repeat(np.arange(len(found)), [r.size for r, _ in found])
        # Each row once, with its best score over the anchors (the earlier anchor on a tie) ...
        by_row = np.lexsort((which, -scores, rows))
        first = np.ones(by_row.size, dtype=bool)
        first[1:] = rows[by_row[1:]] != rows[by_row[:-1]]
        best = by_row[first]
        # ... then best first (ties by row), k of them.
        best = best[np.lexsort((rows[best], -scores[best]))][: query.k]
        return Sourced(self.source, rows[best], scores[best], [anchors[i][0] for i in which[best].tolist()])


class CoVisitationSource:
    """Items bought in the same baskets as the request's anchors (the page's product, the cart's items) and the
    subject's newest distinct items, from the ``covisitation`` table the training export writes into the index;
    each candidate's anchor is the item that contributed most. Anchors first, then history, newest first."""

    name = "CoVisitationSource"
    source = common_pb2.CANDIDATE_SOURCE_CO_VISITATION

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        table, positions = index.artifact.covisitation, index.covisitation_positions
        if table is None:
            return _empty(self.source)
        newest_first = [item for item, _ in reversed(query.anchors)] + list(reversed(query.history_items))
        anchors = [item for item in dict.fromkeys(newest_first) if item in positions][:MAX_ANCHORS]
        rows, scores, which = co_visited(table, [positions[a] for a in anchors], query.k, query.allowed)
        return Sourced(self.source, rows, scores, [anchors[i] for i in which.tolist()])


class BuyAgainSource:
    """The subject's own earlier items: score = times seen + recency (1 for the newest, towards 0 for the oldest),
    as the buy-again baseline ranks them. Scores depend only on the request, so shards' answers merge as one."""

    name = "BuyAgainSource"
    source = common_pb2.CANDIDATE_SOURCE_BUY_AGAIN

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        history = query.history_items
        if not history:
            return _empty(self.source)
        counts: dict[str, int] = {}
        newest: dict[str, int] = {}
        for position, item in enumerate(history, start=1):
            counts[item] = counts.get(item, 0) + 1
            newest[item] = position
        rows_of, allowed, length = index.rows, query.allowed, len(history)
        found = [
            (counts[item] + newest[item] / length, rows_of[item])
            for item in counts
            if item in rows_of and allowed[rows_of[item]]
        ]
        found.sort(key=lambda pair: (-pair[0], pair[1]))
        found = found[: query.k]
        return Sourced(
            self.source,
            np.array([row for _, row in found], dtype=np.int64),
            np.array([score for score, _ in found], dtype=np.float32),
        )


class PopularitySource:
    """Most bought items in the training window, in the request's region when it has one."""

    name = "PopularitySource"
    source = common_pb2.CANDIDATE_SOURCE_POPULARITY

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        region = query.region_column
        artifact = index.artifact
        if region is None:
            order, values = ranked_rows(index, "popularity", lambda: artifact.popularity)
        else:
            order, values = ranked_rows(index, f"popularity:{region}", lambda: artifact.region_popularity[region])
        return Sourced(self.source, *first_allowed(order, values, query.allowed, query.k))


class TrendingSource:
    """Items most bought recently, by the index's ``trending`` column (recent sales counts: ``aisle train`` and
    ``aisle refresh-features --index`` write the baskets holding each item in the 7 days up to their data's end).
    Items with no recent sales are never trending."""

    name = "TrendingSource"
    source = common_pb2.CANDIDATE_SOURCE_TRENDING

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        order, values = ranked_rows(index, "trending", lambda: index.artifact.trending)
        rows, scores = first_allowed(order, values, query.allowed, query.k)
        sold = scores > 0
        return Sourced(self.source, rows[sold], scores[sold])


class ColdStartSource:
    """For subjects without usable history: regional popularity blended with what is trending."""

    name = "ColdStartSource"
    source = common_pb2.CANDIDATE_SOURCE_COLD_START

    def __init__(self, trending_weight: float = 0.3):
        self.trending_weight = trending_weight

    def retrieve(self, index: ServingIndex, query: Query) -> Sourced:
        artifact, region = index.artifact, query.region_column

        def blend() -> np.ndarray:
            popular = artifact.popularity if region is None else artifact.region_popularity[region]
            # Log counts, not shares of this index's maximum, so shards of one catalog score alike.
            return (1 - self.trending_weight) * np.log1p(np.maximum(popular, 0)) + self.trending_weight * np.log1p(
                np.maximum(artifact.trending, 0)
            )

        order, values = ranked_rows(index, f"cold_start:{region}", blend)
        return Sourced(self.source, *first_allowed(order, values, query.allowed, query.k))


def _empty(source: int) -> Sourced:
    return Sourced(source, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def default_sources() -> list[Source]:
    return [
        TwoTowerSource(),
        ItemToItemSource(),
        CoVisitationSource(),
        BuyAgainSource(),
        PopularitySource(),
        TrendingSource(),
        ColdStartSource(),
    ]
