"""Candidate sources: each turns a request into scored candidates from one index, tagged with its source.

A source never filters by business rules itself; it searches within the ``allowed`` mask the servicer builds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from aisle.common.v1 import common_pb2
from services.retrieval.index import ExactIndex, IndexArtifact, top_k


@dataclass(frozen=True)
class Query:
    """What the sources need from a request, already mapped to index rows."""

    history_rows: Sequence[int]  # oldest first; unknown items already dropped
    anchor_rows: Sequence[int]
    allowed: np.ndarray  # boolean mask over index rows
    k: int


@dataclass(frozen=True)
class SourcedCandidate:
    row: int
    score: float
    source: int  # common_pb2.CandidateSource value
    anchor_row: int | None = None


class Source(Protocol):
    """One candidate source. ``name`` shows up in logs and spans."""

    name: str
    source: int

    def retrieve(self, index: IndexArtifact, search: ExactIndex, query: Query) -> list[SourcedCandidate]: ...


def recency_weights(length: int, decay: float) -> np.ndarray:
    """Weights for a history of ``length`` items, oldest first: the newest weighs 1, each older one ``decay``x."""
    return decay ** np.arange(length - 1, -1, -1, dtype=np.float32)


def _anchor_for(index: IndexArtifact, rows: np.ndarray, anchors: Sequence[int]) -> list[int | None]:
    """For each candidate row, the anchor (history) row it is most similar to."""
    if not anchors or rows.size == 0:
        return [None] * int(rows.size)
    similarity = index.embeddings[rows] @ index.embeddings[list(anchors)].T
    best = similarity.argmax(axis=1)
    return [int(anchors[i]) for i in best]


class HistoryEmbeddingSource:
    """Nearest items to the recency-weighted mean embedding of the subject's history.

    The skeleton encodes the query from the item embeddings themselves; the query tower takes over in the
    retrieval issue, behind the same source.
    """

    name = "HistoryEmbeddingSource"
    source = common_pb2.CANDIDATE_SOURCE_TWO_TOWER

    def __init__(self, decay: float = 0.85):
        self.decay = decay

    def retrieve(self, index: IndexArtifact, search: ExactIndex, query: Query) -> list[SourcedCandidate]:
        if not query.history_rows:
            return []
        rows = list(query.history_rows)
        weights = recency_weights(len(rows), self.decay)
        vector = (index.embeddings[rows] * weights[:, None]).sum(axis=0) / weights.sum()
        found, scores = search.search(vector, query.k, query.allowed)
        anchors = _anchor_for(index, found, list(dict.fromkeys(rows)))
        return [
            SourcedCandidate(int(r), float(s), self.source, a) for r, s, a in zip(found, scores, anchors, strict=True)
        ]


class ItemToItemSource:
    """Neighbours of the anchor items (the product on the page, the cart), best match over all anchors."""

    name = "ItemToItemSource"
    source = common_pb2.CANDIDATE_SOURCE_ITEM_TO_ITEM

    def retrieve(self, index: IndexArtifact, search: ExactIndex, query: Query) -> list[SourcedCandidate]:
        anchors = list(dict.fromkeys(query.anchor_rows))
        if not anchors:
            return []
        similarity = index.embeddings @ index.embeddings[anchors].T  # [items, anchors]
        best = similarity.max(axis=1)
        found, scores = top_k(best, query.k, query.allowed)
        which = similarity[found].argmax(axis=1) if found.size else np.empty(0, dtype=np.int64)
        return [
            SourcedCandidate(int(r), float(s), self.source, anchors[int(w)])
            for r, s, w in zip(found, scores, which, strict=True)
        ]


class PopularitySource:
    """The most bought items in the training window (per-region popularity comes with the retrieval issue)."""

    name = "PopularitySource"
    source = common_pb2.CANDIDATE_SOURCE_POPULARITY

    def retrieve(self, index: IndexArtifact, search: ExactIndex, query: Query) -> list[SourcedCandidate]:
        found, scores = top_k(index.popularity, query.k, query.allowed)
        return [SourcedCandidate(int(r), float(s), self.source) for r, s in zip(found, scores, strict=True)]
