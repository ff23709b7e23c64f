"""The candidates of one request, held as columns: what the pipeline's components pass to each other.

A request carries hundreds of candidates through merge, filters, scorers and selectors, and only k of them reach
the answer. With one Python object per candidate, building, copying and reading those objects was the larger
part of the gateway's own CPU per request (docs/benchmarks.md, the 2026-12-05 profiles). :class:`Candidates`
keeps each attribute as one numpy column instead, so a filter is a boolean mask, a scorer writes a score column
and a selector is an index order: a few array operations per component whatever the number of candidates.
Per-item objects (:class:`Candidate`) are made only for the items of the answer.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from aisle.common.v1 import common_pb2 as common


class UnequalColumns(ValueError):
    """An answer's candidate columns have different lengths: no row can be trusted."""


@dataclass(slots=True)
class Candidate:
    """One item of the answer, as the response and its reasons read it."""

    item_id: str
    sources: list[int] = field(default_factory=list)
    anchors: dict[int, str] = field(default_factory=dict)  # source -> the item that led to it
    source_rank: int = 0  # best position within any source
    scores: dict[str, float] = field(default_factory=dict)  # "purchase", "return", "relevance", "final", ...
    reasons: list[common.Reason] = field(default_factory=list)
    exploration: bool = False

    @property
    def final(self) -> float:
        return self.scores.get("final", self.scores.get("relevance", 0.0))


class Candidates:
    """Candidates of one request, row ``i`` of every column being one item.

    Columns (numpy arrays, one entry per row):

    - ``item_ids``: object array of str;
    - ``source``: int array, the ``CandidateSource`` that proposed the row (after :func:`merge`: the first one);
    - ``source_rank``: int array, the best position within any source;
    - ``scores``: name -> float array ("retrieval", "purchase", "return", "relevance", "profit", "final"). NaN
      means "none for this item" (P(return) of an item the model does not know);
    - ``exploration``: bool array, the items an exploration slot placed;
    - ``anchor``: object array of str, the history or page item that led the row's ``source`` to the item ("" for
      none).

    Sparse, by item id (few items have them, and they survive any reordering):

    - ``also``: the further sources that proposed an item, in the order the merge met them;
    - ``anchors``: ``{source: item id}`` for the further sources' anchors (the merge keeps them);
    - ``reasons``: extra reasons (what a selector wants said about an item it moved).

    Components never change an array or map in place that they did not make: :meth:`take` returns new columns,
    a scorer sets a new score column, and a selector that adds reasons sets a new map.
    """

    __slots__ = ("item_ids", "source", "source_rank", "scores", "exploration", "anchor", "also", "anchors", "reasons")

    def __init__(
        self,
        item_ids: np.ndarray,
        source: np.ndarray,
        source_rank: np.ndarray,
        scores: dict[str, np.ndarray] | None = None,
        exploration: np.ndarray | None = None,
        also: Mapping[str, tuple[int, ...]] | None = None,
        anchors: Mapping[str, Mapping[int, str]] | None = None,
        reasons: Mapping[str, Sequence[common.Reason]] | None = None,
        anchor: np.ndarray | None = None,
    ):
        self.item_ids = item_ids
        self.source = source
        self.source_rank = source_rank
        self.scores = scores if scores is not None else {}
        self.exploration = exploration if exploration is not None else np.zeros(len(item_ids), dtype=bool)
        self.anchor = anchor if anchor is not None else np.full(len(item_ids), "", dtype=object)
        self.also = also if also is not None else {}
        self.anchors = anchors if anchors is not None else {}
        self.reasons = reasons if reasons is not None else {}

    @classmethod
    def empty(cls) -> Candidates:
        return cls.of([], common.CANDIDATE_SOURCE_UNSPECIFIED)

    @classmethod
    def of(
        cls, item_ids: Iterable[str], source: int, scores: Mapping[str, Sequence[float] | np.ndarray] | None = None
    ) -> Candidates:
        """Items from one source, in its order."""
        item_ids = list(item_ids)
        count = len(item_ids)
        return cls(
            np.array(item_ids, dtype=object).reshape(count),
            np.full(count, source, dtype=np.int64),
            np.arange(count, dtype=np.int64),
            {name: np.asarray(values, dtype=np.float64) for name, values in (scores or {}).items()},
        )

    @classmethod
    def from_columns(
        cls,
        item_ids: list[str],
        sources: Sequence[int],
        source_rank: Sequence[int],
        retrieval_scores: Sequence[float],
        anchors: list[str],
    ) -> Candidates:
        """One row per retrieved candidate (one source each); ``anchors`` holds "" where there is none. An item that
        several rows propose keeps each row's anchor until :func:`merge` makes it one row."""
        count = len(item_ids)
        if not count == len(sources) == len(source_rank) == len(retrieval_scores) == len(anchors):
            raise UnequalColumns(f"columns of unequal lengths ({count} item ids)")
        return cls(
            np.array(item_ids, dtype=object).reshape(count),
            np.array(sources, dtype=np.int64),
            np.array(source_rank, dtype=np.int64),
            {"retrieval": np.array(retrieval_scores, dtype=np.float64)},
            anchor=np.array(anchors, dtype=object).reshape(count),
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def ids(self) -> list[str]:
        return self.item_ids.tolist()

    def take(self, rows: np.ndarray | slice) -> Candidates:
        """The rows selected by an index array (in its order), a boolean mask or a slice, as new columns."""
        if isinstance(rows, slice):
            rows = np.arange(len(self))[rows]
        return Candidates(
            self.item_ids[rows],
            self.source[rows],
            self.source_rank[rows],
            {name: values[rows] for name, values in self.scores.items()},
            self.exploration[rows],
            self.also,
            self.anchors,
            self.reasons,
            self.anchor[rows],
        )

    def score(self, name: str, default: float = 0.0) -> np.ndarray:
        """Score column ``name`` with NaN and a missing column read as ``default``."""
        values = self.scores.get(name)
        if values is None:
            return np.full(len(self), default, dtype=np.float64)
        return np.where(np.isnan(values), default, values)

    @property
    def final(self) -> np.ndarray:
        """The score selectors order by: "final" where a scorer set one, else "relevance", else 0."""
        for name in ("final", "relevance"):
            if name in self.scores:
                return self.score(name)
        return np.zeros(len(self), dtype=np.float64)

    def sources(self, row: int) -> tuple[int, ...]:
        """Every source that proposed the item of ``row``, first the one that proposed it first."""
        return (int(self.source[row]), *self.also.get(self.item_ids[row], ()))

    def has_source(self, source: int) -> np.ndarray:
        found = self.source == source
        for row in self._rows_with(self.also):
            found[row] |= source in self.also[self.item_ids[row]]
        return found

    def source_counts(self) -> np.ndarray:
        counts = np.ones(len(self), dtype=np.int64)
        for row in self._rows_with(self.also):
            counts[row] += len(self.also[self.item_ids[row]])
        return counts

    def _rows_with(self, sparse: Mapping[str, object]) -> list[int]:
        if not sparse:
            return []
        return [row for row, item in enumerate(self.ids()) if item in sparse]

    def row(self, i: int) -> Candidate:
        item_id = self.item_ids[i]
        anchors = dict(self.anchors.get(item_id, {}))
        if self.anchor[i]:
            anchors[int(self.source[i])] = self.anchor[i]
        return Candidate(
            item_id,
            list(self.sources(i)),
            anchors,
            int(self.source_rank[i]),
            {name: float(values[i]) for name, values in self.scores.items() if not np.isnan(values[i])},
            list(self.reasons.get(item_id, ())),
            bool(self.exploration[i]),
        )

    def rows(self) -> list[Candidate]:
        return [self.row(i) for i in range(len(self))]

    @classmethod
    def concat(cls, parts: Sequence[Candidates]) -> Candidates:
        """The rows of every part, in order. Sparse maps are joined; for one item and source the first part wins."""
        if len(parts) == 1:
            return parts[0]
        names = {name for part in parts for name in part.scores}
        scores = {name: np.concatenate([p.scores.get(name, np.full(len(p), np.nan)) for p in parts]) for name in names}
        also: dict[str, tuple[int, ...]] = {}
        anchors: dict[str, dict[int, str]] = {}
        reasons: dict[str, list[common.Reason]] = {}
        for part in parts:
            for item, more in part.also.items():
                also[item] = (*also.get(item, ()), *(s for s in more if s not in also.get(item, ())))
            for item, by_source in part.anchors.items():
                anchors[item] = {**by_source, **anchors.get(item, {})}
            for item, said in part.reasons.items():
                reasons[item] = [*reasons.get(item, ()), *said]
        return cls(
            np.concatenate([p.item_ids for p in parts]),
            np.concatenate([p.source for p in parts]),
            np.concatenate([p.source_rank for p in parts]),
            scores,
            np.concatenate([p.exploration for p in parts]),
            also,
            anchors,
            reasons,
            np.concatenate([p.anchor for p in parts]),
        )


def min_max_scaled(values: np.ndarray) -> np.ndarray:
    """Scores scaled to [0, 1] over the candidates (all 0 when they are equal); ``values`` must not be empty."""
    low, high = float(values.min()), float(values.max())
    return np.zeros_like(values) if high == low else (values - low) / (high - low)


def merge(results: Sequence[Candidates], limit: int) -> Candidates:
    """De-duplicates by item keeping every source, interleaving sources by rank, at most ``limit`` items.

    The first row seen for an item (best rank; earlier result on ties) is kept; the sources of the others are
    added to it (``also``), and so are their anchors (``anchors``): for each source, the anchor of the item's first
    row from it that has one (the kept row's own stays in its column).
    """
    parts = [result for result in results if len(result)]
    if not parts:
        return Candidates.empty()
    whole = Candidates.concat(parts)
    order = np.argsort(whole.source_rank, kind="stable")  # stable: ties keep the results' order
    ids = whole.item_ids[order].tolist()
    count = len(ids)
    # Position (in rank order) of each item's first row: a dict built from the reversed rows keeps the first.
    first = dict(zip(reversed(ids), range(count - 1, -1, -1), strict=True))
    if len(first) == count:
        return whole.take(order[:limit])
    firsts = np.sort(np.fromiter(first.values(), dtype=np.int64, count=len(first)))
    merged = whole.take(order[firsts[:limit]])
    # An item is kept when its first row is among the first `limit` items' first rows.
    last_kept = int(firsts[min(limit, firsts.size) - 1]) if limit > 0 else -1
    sources = whole.source[order].tolist()
    duplicate = np.ones(count, dtype=bool)
    duplicate[firsts] = False
    positions = np.flatnonzero(duplicate)
    anchored = whole.anchor[order[positions]].tolist()
    also, anchors = dict(whole.also), dict(whole.anchors)
    for position, anchor in zip(positions.tolist(), anchored, strict=True):
        item = ids[position]
        kept_row = first[item]
        if kept_row > last_kept:  # cut by the limit
            continue
        source = sources[position]
        same = source == sources[kept_row]
        if not same:
            have = also.get(item, ())
            if source not in have:
                also[item] = (*have, source)
        # A further row's anchor, unless the item has one for that source already (in the kept row, or sparse).
        if anchor and source not in anchors.get(item, ()) and not (same and whole.anchor[order[kept_row]]):
            anchors[item] = {**anchors.get(item, {}), source: anchor}
    merged.also, merged.anchors = also, anchors
    return merged
