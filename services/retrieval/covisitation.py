"""Co-visitation: the items bought together with a customer's newest items, as a candidate source.

The table holds, per anchor item, its strongest neighbours by cosine-normalised basket co-occurrence (computed
from training baskets by ``aisle train``), packed CSR-style: the neighbours of anchor ``a`` are
``rows[indptr[a]:indptr[a + 1]]`` with ``scores`` alongside, best first. A request's candidates are scored by
the sum over its newest distinct anchors, newest first, weighted ``decay ** i``; the anchor that contributed most
to an item is its explanation ("bought with ...").

One function, :func:`co_visited`, serves both the retrieval service and offline evaluation (and the ranker's
training lists), so the candidate set measured offline is the one served.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: Anchors read per request (the newest distinct history items) and the weight of each older one.
MAX_ANCHORS = 10
DECAY = 0.8
#: Baskets larger than this contribute only their first items to co-occurrence (wholesale orders of hundreds of
#: lines would otherwise dominate it).
MAX_BASKET_FOR_PAIRS = 100


@dataclass(frozen=True)
class CoVisitationTable:
    """Neighbours per anchor position: ``rows``/``scores`` of anchor ``a`` are ``[indptr[a]:indptr[a + 1]]``."""

    indptr: np.ndarray  # int64 [anchors + 1]
    rows: np.ndarray  # int64 [entries]: rows of the index the table belongs to
    scores: np.ndarray  # float32 [entries], > 0, descending per anchor

    def __post_init__(self) -> None:
        if self.indptr.ndim != 1 or self.indptr.size < 1 or self.indptr[0] != 0:
            raise ValueError("indptr must be a 1-d array starting at 0")
        if np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != self.rows.size:
            raise ValueError("indptr must be non-decreasing and end at the number of entries")
        if self.rows.shape != self.scores.shape or self.rows.ndim != 1:
            raise ValueError("rows and scores must be 1-d arrays of the same length")
        if self.scores.size and not (np.isfinite(self.scores).all() and (self.scores > 0).all()):
            raise ValueError("co-visitation scores must be finite and positive")

    @property
    def anchors(self) -> int:
        return int(self.indptr.size - 1)

    @classmethod
    def from_similarity(cls, similarity: np.ndarray, neighbours: int) -> CoVisitationTable:
        """The ``neighbours`` strongest positive entries of each row of a dense [items, items] similarity."""
        count = similarity.shape[0]
        take = max(0, min(neighbours, count - 1))
        indptr = np.zeros(count + 1, dtype=np.int64)
        rows, scores = [], []
        for anchor in range(count):
            values = np.where(np.arange(count) == anchor, 0, similarity[anchor])  # never its own neighbour
            if take == 0:
                top = np.empty(0, dtype=np.int64)
            elif take < count:
                # The ``take`` largest, ties at the cut going to the lower rows (answers stay stable).
                cut = np.partition(values, count - take)[count - take]
                above = np.flatnonzero(values > cut)
                top = np.concatenate([above, np.flatnonzero(values == cut)[: take - above.size]])
            else:
                top = np.arange(count)
            top = top[values[top] > 0]
            top = top[np.lexsort((top, -values[top]))]
            rows.append(top)
            scores.append(values[top])
            indptr[anchor + 1] = indptr[anchor] + top.size
        return cls(
            indptr,
            np.concatenate(rows).astype(np.int64) if rows else np.empty(0, np.int64),
            np.concatenate(scores).astype(np.float32) if scores else np.empty(0, np.float32),
        )

    @classmethod
    def from_baskets(
        cls,
        baskets: Iterable[np.ndarray],
        popularity: np.ndarray,
        neighbours: int,
        max_basket: int = MAX_BASKET_FOR_PAIRS,
        chunk_pairs: int = 5_000_000,
    ) -> CoVisitationTable:
        """The table straight from baskets (catalog rows), never holding an [items, items] matrix: pair counts over
        each basket's first ``max_basket`` items, cosine-normalised by ``popularity`` (baskets holding each item),
        the ``neighbours`` best per item, ties to the lower row (:func:`basket_pairs`). Equal to
        :meth:`from_similarity` of the dense co-occurrence built from the same baskets, at any catalog size."""
        count = int(popularity.size)
        anchors, rows, scores = basket_pairs(baskets, popularity, max_basket, chunk_pairs)
        order = np.lexsort((rows, -scores, anchors))
        anchors, rows, scores = anchors[order], rows[order], scores[order]
        starts = np.searchsorted(anchors, np.arange(count))
        keep = (np.arange(anchors.size) - starts[anchors]) < max(0, min(neighbours, count - 1))
        anchors, rows, scores = anchors[keep], rows[keep], scores[keep]
        indptr = np.concatenate([[0], np.cumsum(np.bincount(anchors, minlength=count))]).astype(np.int64)
        return cls(indptr, rows.astype(np.int64), scores)

    def restricted(self, kept_rows: np.ndarray, total_rows: int) -> CoVisitationTable:
        """The same anchors, keeping only neighbours among ``kept_rows`` (renumbered to their position there):
        a shard's table, whose anchors may live on any shard but whose candidates are its own items."""
        local = np.full(total_rows, -1, dtype=np.int64)
        local[kept_rows] = np.arange(kept_rows.size)
        mapped = local[self.rows]
        keep = mapped >= 0
        owner = np.repeat(np.arange(self.anchors), np.diff(self.indptr))
        counts = np.bincount(owner[keep], minlength=self.anchors)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return CoVisitationTable(indptr, mapped[keep], self.scores[keep])


def basket_pairs(
    baskets: Iterable[np.ndarray],
    popularity: np.ndarray,
    max_basket: int = MAX_BASKET_FOR_PAIRS,
    chunk_pairs: int = 5_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every pair of different items bought in one basket (catalog rows; each basket's first ``max_basket``
    items), as (anchors, rows, scores) sorted by anchor then row: the times bought together divided by
    sqrt(baskets holding the anchor x baskets holding the row) (``popularity``, at least 1), float32 — the
    cosine-normalised co-occurrence, without an [items, items] matrix."""
    count = int(popularity.size)
    keys: list[np.ndarray] = []
    counts: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    pending_size = 0

    def flush() -> None:
        nonlocal pending, pending_size
        if pending:
            unique, found = np.unique(np.concatenate(pending), return_counts=True)
            keys.append(unique)
            counts.append(found)
            pending, pending_size = [], 0

    for basket in baskets:
        rows = np.asarray(basket, dtype=np.int64)[:max_basket]
        if rows.size > 1:
            pairs = (rows[:, None] * count + rows[None, :]).ravel()
            pending.append(pairs)
            pending_size += pairs.size
            if pending_size > chunk_pairs:
                flush()
    flush()
    if not keys:
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.float32)
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    totals = np.bincount(inverse, weights=np.concatenate(counts).astype(np.float64))
    anchors, rows = unique // count, unique % count
    off_diagonal = anchors != rows
    anchors, rows, totals = anchors[off_diagonal], rows[off_diagonal], totals[off_diagonal]
    seen = np.maximum(np.asarray(popularity, dtype=np.float64), 1.0)
    return anchors, rows, (totals / np.sqrt(seen[anchors] * seen[rows])).astype(np.float32)


def co_visited(
    table: CoVisitationTable,
    anchors: Sequence[int],
    k: int,
    allowed: np.ndarray | None = None,
    decay: float = DECAY,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top ``k`` rows by decayed co-visitation with ``anchors`` (positions in the table, newest first).

    Returns (rows, scores, anchor index into ``anchors`` that contributed most to each row); rows outside
    ``allowed`` (a boolean mask over rows) are never returned. Ties go to the lower row, so answers are stable.
    """
    empty = np.empty(0, dtype=np.int64)
    anchors = list(anchors)[:MAX_ANCHORS]
    if k <= 0 or not anchors:
        return empty, np.empty(0, dtype=np.float32), empty
    indptr = table.indptr
    spans = [(int(indptr[a]), int(indptr[a + 1])) for a in anchors]
    rows = np.concatenate([table.rows[s:e] for s, e in spans])
    if rows.size == 0:
        return empty, np.empty(0, dtype=np.float32), empty
    weights = decay ** np.arange(len(anchors), dtype=np.float64)
    values = np.concatenate([table.scores[s:e] * weights[i] for i, (s, e) in enumerate(spans)])
    which = np.repeat(np.arange(len(anchors)), [e - s for s, e in spans])
    if allowed is not None:
        keep = allowed[rows]
        rows, values, which = rows[keep], values[keep], which[keep]
        if rows.size == 0:
            return empty, np.empty(0, dtype=np.float32), empty
    unique, inverse = np.unique(rows, return_inverse=True)
    totals = np.bincount(inverse, weights=values, minlength=unique.size).astype(np.float32)  # ranked as returned
    strongest = np.lexsort((-values, inverse))  # per row, its largest contribution first
    firsts = strongest[np.r_[0, np.flatnonzero(np.diff(inverse[strongest])) + 1]]
    best_anchor = which[firsts]
    top = np.lexsort((unique, -totals))[:k]
    return unique[top].astype(np.int64), totals[top].astype(np.float32), best_anchor[top].astype(np.int64)
