from __future__ import annotations

from aisle.common.v1 import common_pb2 as common
from services.gateway.catalog import ItemCatalog
from services.gateway.pipeline import Candidate, merge
from services.gateway.reasons import reasons_for

TWO_TOWER, I2I, POPULAR = (
    common.CANDIDATE_SOURCE_TWO_TOWER,
    common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
    common.CANDIDATE_SOURCE_POPULARITY,
)


def candidate(item, source, rank, anchor=""):
    return Candidate(item, sources=[source], anchors={source: anchor} if anchor else {}, source_rank=rank)


def test_merge_keeps_every_source_and_interleaves_by_rank():
    merged = merge(
        [
            [candidate("a", TWO_TOWER, 0, "h1"), candidate("b", TWO_TOWER, 1, "h2")],
            [candidate("p", POPULAR, 0), candidate("a", POPULAR, 1)],
        ],
        limit=10,
    )
    assert [m.item_id for m in merged] == ["a", "p", "b"]
    assert merged[0].sources == [TWO_TOWER, POPULAR] and merged[0].anchors == {TWO_TOWER: "h1"}
    assert merged[0].source_rank == 0


def test_merge_stops_at_the_limit_but_still_records_sources_of_kept_items():
    merged = merge(
        [
            [candidate("a", TWO_TOWER, 0), candidate("b", TWO_TOWER, 1), candidate("c", TWO_TOWER, 2)],
            [candidate("b", POPULAR, 3)],
        ],
        limit=2,
    )
    assert [m.item_id for m in merged] == ["a", "b"] and merged[1].sources == [TWO_TOWER, POPULAR]


def test_reasons_name_the_anchor_by_title_and_the_event():
    item = Candidate("x", [TWO_TOWER, POPULAR], anchors={TWO_TOWER: "mug"})
    catalog = ItemCatalog({"mug": {"title": "Blue Mug"}})
    reasons = reasons_for(item, {"mug": common.EVENT_TYPE_PURCHASE}, "GB", catalog)
    assert [(r.code, r.text) for r in reasons] == [
        (common.REASON_CODE_SIMILAR_TO_HISTORY, "Because you bought Blue Mug"),
        (common.REASON_CODE_POPULAR_IN_REGION, "Popular in GB"),
    ]
    assert reasons[0].related_item_id == "mug"


def test_an_item_from_the_history_itself_is_a_buy_again_reason():
    item = Candidate("mug", [TWO_TOWER], anchors={TWO_TOWER: "mug"})
    [reason] = reasons_for(item, {"mug": common.EVENT_TYPE_PURCHASE}, "")
    assert reason.code == common.REASON_CODE_BUY_AGAIN and reason.text == "Buy it again"


def test_item_to_item_and_new_arrival_reasons():
    catalog = ItemCatalog({"x": {"new": True}, "lamp": {"new": False}})
    reasons = reasons_for(Candidate("x", [I2I], anchors={I2I: "lamp"}), {}, "", catalog)
    assert [r.code for r in reasons] == [common.REASON_CODE_BOUGHT_TOGETHER, common.REASON_CODE_NEW_ARRIVAL]
    assert reasons[0].related_item_id == "lamp"


def test_co_visitation_and_buy_again_reasons():
    co_visit, buy_again = common.CANDIDATE_SOURCE_CO_VISITATION, common.CANDIDATE_SOURCE_BUY_AGAIN
    catalog = ItemCatalog({"saucer": {"title": "Blue Saucer"}})
    [together] = reasons_for(Candidate("cup", [co_visit], anchors={co_visit: "saucer"}), {}, "", catalog)
    assert (together.code, together.text, together.related_item_id) == (
        common.REASON_CODE_BOUGHT_TOGETHER,
        "Often bought with Blue Saucer",
        "saucer",
    )
    history = {"mug": common.EVENT_TYPE_PURCHASE, "lamp": common.EVENT_TYPE_VIEW}
    [bought] = reasons_for(Candidate("mug", [buy_again]), history, "")
    [viewed] = reasons_for(Candidate("lamp", [buy_again]), history, "")
    assert (bought.code, bought.text, bought.related_item_id) == (common.REASON_CODE_BUY_AGAIN, "Buy it again", "mug")
    assert (viewed.code, viewed.text) == (common.REASON_CODE_BUY_AGAIN, "You looked at this recently")
