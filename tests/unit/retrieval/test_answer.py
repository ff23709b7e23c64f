"""A Retrieve answer's candidates as messages and as columns: the same candidates, in the same order."""

from __future__ import annotations

import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.answer import add_candidates, add_columns, move_to_columns

CO_VISIT, POPULAR = common.CANDIDATE_SOURCE_CO_VISITATION, common.CANDIDATE_SOURCE_POPULARITY


def fill(add) -> pb.RetrieveResponse:
    response = pb.RetrieveResponse()
    add(response, CO_VISIT, ["a", "b"], [0.5, 0.25], ["h1", "h2"])
    add(response, POPULAR, ["c", "a"], [9.0, 8.0], None)
    return response


def rows_of_columns(response: pb.RetrieveResponse) -> list[tuple]:
    c = response.columns
    return list(zip(c.item_ids, c.sources, c.source_ranks, c.scores, c.anchor_item_ids, strict=True))


def test_columns_hold_the_messages_candidates_in_order():
    messages, columns = fill(add_candidates), fill(add_columns)
    want = [(c.item_id, c.source, c.source_rank, c.score, c.anchor_item_id) for c in messages.candidates]
    assert want == [
        ("a", CO_VISIT, 0, 0.5, "h1"),
        ("b", CO_VISIT, 1, 0.25, "h2"),
        ("c", POPULAR, 0, 9.0, ""),
        ("a", POPULAR, 1, 8.0, ""),
    ]
    assert not columns.candidates and rows_of_columns(columns) == want
    move_to_columns(messages)  # what a router does with the answer it merged
    assert not messages.candidates and rows_of_columns(messages) == want


def test_columns_of_unequal_lengths_are_refused():
    with pytest.raises(ValueError, match="2 items but 1 scores"):
        add_columns(pb.RetrieveResponse(), POPULAR, ["a", "b"], [1.0], None)
    with pytest.raises(ValueError, match="1 anchors"):
        add_columns(pb.RetrieveResponse(), CO_VISIT, ["a", "b"], [1.0, 0.5], ["h1"])
