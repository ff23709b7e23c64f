from __future__ import annotations

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.gateway.merge import MergedCandidate, by_ranking, by_retrieval, merge_candidates
from services.gateway.reasons import reasons_for

TWO_TOWER, I2I, POPULAR = (
    common.CANDIDATE_SOURCE_TWO_TOWER,
    common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
    common.CANDIDATE_SOURCE_POPULARITY,
)


def candidate(item, source, rank, anchor=""):
    return retrieval_pb.Candidate(item_id=item, source=source, source_rank=rank, anchor_item_id=anchor)


def test_merge_keeps_every_source_and_interleaves_by_rank():
    merged = merge_candidates(
        [
            candidate("a", TWO_TOWER, 0, "h1"),
            candidate("b", TWO_TOWER, 1, "h2"),
            candidate("p", POPULAR, 0),
            candidate("a", POPULAR, 1),
        ],
        limit=10,
    )
    assert [m.item_id for m in merged] == ["a", "p", "b"]
    assert merged[0].sources == [TWO_TOWER, POPULAR] and merged[0].anchors == {TWO_TOWER: "h1"}
    assert merged[0].best_rank == 0


def test_merge_stops_at_the_limit_but_still_records_sources_of_kept_items():
    merged = merge_candidates(
        [
            candidate("a", TWO_TOWER, 0),
            candidate("b", TWO_TOWER, 1),
            candidate("c", TWO_TOWER, 2),
            candidate("b", POPULAR, 3),
        ],
        limit=2,
    )
    assert [m.item_id for m in merged] == ["a", "b"] and merged[1].sources == [TWO_TOWER, POPULAR]


def test_orderings():
    items = [
        MergedCandidate("a", [TWO_TOWER], best_rank=0, purchase_probability=0.1),
        MergedCandidate("b", [TWO_TOWER, POPULAR], best_rank=3, purchase_probability=0.9),
        MergedCandidate("c", [POPULAR], best_rank=1, purchase_probability=0.1),
    ]
    assert [m.item_id for m in by_ranking(items)] == ["b", "a", "c"]
    assert [m.item_id for m in by_retrieval(items)] == ["b", "a", "c"]
    assert [m.item_id for m in by_retrieval(items[::2])] == ["a", "c"]


def test_reasons_name_the_anchor_and_the_event():
    item = MergedCandidate("x", [TWO_TOWER, POPULAR], anchors={TWO_TOWER: "mug"})
    reasons = reasons_for(item, {"mug": common.EVENT_TYPE_PURCHASE}, "GB")
    assert [(r.code, r.text) for r in reasons] == [
        (common.REASON_CODE_SIMILAR_TO_HISTORY, "Because you bought mug"),
        (common.REASON_CODE_POPULAR_IN_REGION, "Popular in GB"),
    ]
    assert reasons[0].related_item_id == "mug"


def test_an_item_from_the_history_itself_is_a_buy_again_reason():
    item = MergedCandidate("mug", [TWO_TOWER], anchors={TWO_TOWER: "mug"})
    [reason] = reasons_for(item, {"mug": common.EVENT_TYPE_PURCHASE}, "")
    assert reason.code == common.REASON_CODE_BUY_AGAIN and reason.text == "Buy it again"


def test_item_to_item_reason():
    [reason] = reasons_for(MergedCandidate("x", [I2I], anchors={I2I: "lamp"}), {}, "")
    assert reason.code == common.REASON_CODE_BOUGHT_TOGETHER and reason.related_item_id == "lamp"
