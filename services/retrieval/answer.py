"""How a Retrieve answer carries its candidates: one ``Candidate`` message each, or parallel arrays.

A caller that sets ``RetrieveRequest.columnar`` (the gateway does) gets ``RetrieveResponse.columns`` instead of
``candidates``: with hundreds of candidates per answer, adding and reading one message each cost both processes
more than the search (docs/benchmarks.md). Both forms hold the same candidates in the same order.
"""

from __future__ import annotations

from aisle.retrieval.v1 import retrieval_service_pb2 as pb


def add_candidates(
    response: pb.RetrieveResponse, source: int, items: list[str], scores: list[float], anchors: list[str] | None
) -> None:
    """One source's candidates as ``Candidate`` messages, in rank order (``anchors`` empty: none has one)."""
    add = response.candidates.add
    if anchors:
        for rank, (item, score, anchor) in enumerate(zip(items, scores, anchors, strict=True)):
            add(item_id=item, score=score, source=source, source_rank=rank, anchor_item_id=anchor)
    else:
        for rank, (item, score) in enumerate(zip(items, scores, strict=True)):
            add(item_id=item, score=score, source=source, source_rank=rank)


def add_columns(
    response: pb.RetrieveResponse, source: int, items: list[str], scores: list[float], anchors: list[str] | None
) -> None:
    """The same candidates appended to ``response.columns``: five array extensions instead of a message each."""
    columns, count = response.columns, len(items)
    if len(scores) != count or (anchors and len(anchors) != count):
        raise ValueError(f"{count} items but {len(scores)} scores and {len(anchors or ())} anchors")
    columns.item_ids.extend(items)
    columns.scores.extend(scores)
    columns.sources.extend([source] * count)
    columns.source_ranks.extend(range(count))
    columns.anchor_item_ids.extend(anchors if anchors else [""] * count)


def move_to_columns(response: pb.RetrieveResponse) -> None:
    """Rewrites ``response.candidates`` as ``response.columns`` (for an answer merged from messages)."""
    candidates = list(response.candidates)
    columns = response.columns
    columns.item_ids.extend([c.item_id for c in candidates])
    columns.scores.extend([c.score for c in candidates])
    columns.sources.extend([c.source for c in candidates])
    columns.source_ranks.extend([c.source_rank for c in candidates])
    columns.anchor_item_ids.extend([c.anchor_item_id for c in candidates])
    del response.candidates[:]
