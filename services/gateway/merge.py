"""Merging candidates from several sources, and ordering them when ranking could not score them."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb


@dataclass
class MergedCandidate:
    """One item with every source that proposed it (in the order they did) and its best position."""

    item_id: str
    sources: list[int] = field(default_factory=list)
    anchors: dict[int, str] = field(default_factory=dict)  # source -> anchor item id
    best_rank: int = 0
    purchase_probability: float | None = None


def merge_candidates(candidates: Iterable[retrieval_pb.Candidate], limit: int) -> list[MergedCandidate]:
    """De-duplicates by item, keeping every source; interleaves sources by rank so each is represented.

    The result is in retrieval order (source rank, then the order sources were asked) and at most ``limit`` long.
    """
    merged: dict[str, MergedCandidate] = {}
    ordered = sorted(enumerate(candidates), key=lambda pair: (pair[1].source_rank, pair[0]))
    for _, candidate in ordered:
        entry = merged.get(candidate.item_id)
        if entry is None:
            if len(merged) >= limit:
                continue
            entry = merged[candidate.item_id] = MergedCandidate(candidate.item_id, best_rank=candidate.source_rank)
        if candidate.source not in entry.sources:
            entry.sources.append(candidate.source)
            if candidate.anchor_item_id:
                entry.anchors[candidate.source] = candidate.anchor_item_id
    return list(merged.values())


def by_ranking(candidates: Sequence[MergedCandidate]) -> list[MergedCandidate]:
    """Highest purchase probability first; ties keep retrieval order."""
    return sorted(candidates, key=lambda c: -(c.purchase_probability or 0.0))


def by_retrieval(candidates: Sequence[MergedCandidate]) -> list[MergedCandidate]:
    """The degraded order when ranking is down: items several sources agree on first, then retrieval rank."""
    return sorted(candidates, key=lambda c: (-len(c.sources), c.best_rank))
