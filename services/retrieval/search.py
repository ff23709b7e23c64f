"""Nearest-neighbour search over an index version, with business filters that keep recall.

ScaNN has no filtered search, so :class:`FilteredSearch` over-fetches from the ANN searcher in proportion to how
much of the catalog the filters allow, and switches to exact search over the allowed rows when they are few
(cheap then, and exact). Exact search also serves small catalogs and indexes built without ScaNN.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` highest scores among ``allowed`` rows, sorted best first (ties by row)."""
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
        k = min(k, int(np.count_nonzero(allowed)))
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    rows = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((rows, -scores[rows]))
    rows = rows[order]
    return rows.astype(np.int64), scores[rows].astype(np.float32)


class Searcher(Protocol):
    name: str

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best rows for one query, best first."""


class ExactSearcher:
    """Top-k by exact dot product: the reference every approximate searcher is measured against."""

    name = "exact"

    def __init__(self, embeddings: np.ndarray):
        self.embeddings = embeddings

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return top_k(self.embeddings @ query.astype(np.float32, copy=False), k)

    def search_rows(self, query: np.ndarray, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k among ``rows`` only."""
        found, scores = top_k(self.embeddings[rows] @ query.astype(np.float32, copy=False), k)
        return rows[found], scores


@dataclass(frozen=True)
class ScannSearchParams:
    leaves_to_search: int
    pre_reorder_num_neighbors: int
    num_leaves: int = 0  # of the tree; 0 if unknown


class ScannSearcher:
    """A serialized ScaNN searcher (tree + asymmetric hashing + exact reordering)."""

    name = "scann"

    def __init__(self, directory: Path, params: ScannSearchParams):
        import scann

        self._searcher = scann.scann_ops_pybind.load_searcher(str(directory))
        self.params = params

    def search(self, query: np.ndarray, k: int, widen: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """``widen`` > 1 searches proportionally more leaves (for deep over-fetches, whose tail needs them)."""
        leaves = self.params.leaves_to_search
        if widen > 1:
            leaves = int(leaves * widen)
            if self.params.num_leaves:
                leaves = min(leaves, self.params.num_leaves)
        rows, scores = self._searcher.search(
            query.astype(np.float32, copy=False),
            final_num_neighbors=k,
            # An over-fetch re-scores twice what it keeps: the quantised scores are least reliable in the tail.
            pre_reorder_num_neighbors=max(k if widen <= 1 else 2 * k, self.params.pre_reorder_num_neighbors),
            leaves_to_search=leaves,
        )
        return rows.astype(np.int64), scores.astype(np.float32)

    def search_batched(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self._searcher.search_batched(
            queries.astype(np.float32, copy=False),
            final_num_neighbors=k,
            pre_reorder_num_neighbors=max(k, self.params.pre_reorder_num_neighbors),
            leaves_to_search=self.params.leaves_to_search,
        )
        return rows.astype(np.int64), scores.astype(np.float32)


class FilteredSearch:
    """Top-k among the rows a mask allows, keeping recall when filters are tight.

    - nothing filtered out: the searcher as is;
    - few rows allowed (at most ``exact_threshold``): exact search over exactly those rows;
    - otherwise: ask the searcher for ``k / allowed fraction x overfetch`` rows, or ``k`` plus the number of rows
      filtered out when that is fewer (then ``k`` allowed rows are certain to be among them), keep the allowed
      ones, and grow the request until ``k`` are found; past ``max_fetch`` rows, exact search over the allowed
      rows.

    A tree searcher answers at most the points of the leaves it searches: few leaves searched on a clustered
    catalog (an index tuned to a recall target) can hold fewer than ``k``. An answer short of ``min(k, allowed
    rows)`` is never returned: the search is widened to more leaves, and then made exact.
    """

    def __init__(
        self,
        searcher: Searcher,
        exact: ExactSearcher,
        exact_threshold: int = 20_000,
        overfetch: float = 1.5,
        max_fetch: int = 20_000,
    ):
        self.searcher, self.exact = searcher, exact
        self.exact_threshold, self.overfetch, self.max_fetch = exact_threshold, overfetch, max_fetch

    def search(
        self, query: np.ndarray, k: int, allowed: np.ndarray | None = None, allowed_count: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        total = self.exact.embeddings.shape[0]
        if allowed is None:
            return self._unfiltered(query, k, total)
        allowed_count = int(np.count_nonzero(allowed)) if allowed_count is None else allowed_count
        if allowed_count == 0:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
        if allowed_count == total and self.searcher is not self.exact:
            return self._unfiltered(query, k, total)
        if self.searcher is self.exact or allowed_count <= self.exact_threshold:
            return self.exact.search_rows(query, np.flatnonzero(allowed), k)
        # The filters remove `total - allowed_count` rows in all, so fetching k more than that always leaves k:
        # a few excluded items (the history, the cart) cost a few more rows, not an over-fetch in proportion.
        fetch = int(min(total, max(2 * k, k * total / allowed_count * self.overfetch), k + total - allowed_count))
        while True:
            # A deep over-fetch reaches far-away neighbours: search more leaves in proportion (sqrt keeps it cheap).
            widen = (fetch / k) ** 0.5
            if isinstance(self.searcher, ScannSearcher):
                rows, scores = self.searcher.search(query, min(fetch, total), widen=widen)
            else:
                rows, scores = self.searcher.search(query, min(fetch, total))
            keep = allowed[rows]
            if keep.sum() >= min(k, allowed_count):
                return rows[keep][:k], scores[keep][:k]
            if fetch >= self.max_fetch or fetch >= total:  # (at total: the leaves searched hold too few points)
                return self.exact.search_rows(query, np.flatnonzero(allowed), k)
            fetch = min(fetch * 4, self.max_fetch, total)

    def _unfiltered(self, query: np.ndarray, k: int, total: int) -> tuple[np.ndarray, np.ndarray]:
        rows, scores = self.searcher.search(query, k)
        wanted = min(k, total)
        if rows.size >= wanted or self.searcher is self.exact:
            return rows, scores
        if isinstance(self.searcher, ScannSearcher):  # more leaves, in proportion to what was missing
            rows, scores = self.searcher.search(query, wanted, widen=4.0 * wanted / max(rows.size, 1))
            if rows.size >= wanted:
                return rows, scores
        return self.exact.search(query, wanted)
