"""Candidates as columns (take, scores, merge) and the reasons given for the items of an answer."""

from __future__ import annotations

import numpy as np

from aisle.common.v1 import common_pb2 as common
from services.gateway.candidates import Candidate, Candidates, merge
from services.gateway.catalog import ItemCatalog
from services.gateway.reasons import reasons_for

TWO_TOWER, I2I, POPULAR = (
    common.CANDIDATE_SOURCE_TWO_TOWER,
    common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
    common.CANDIDATE_SOURCE_POPULARITY,
)


def retrieved(*rows):
    """Candidates from (item, source, rank[, anchor]) rows, as one Retrieve answer gives them."""
    rows = [(*row, "")[:4] for row in rows]
    return Candidates.from_columns(
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
        [float(-r[2]) for r in rows],
        [r[3] for r in rows],
    )


def test_merge_keeps_every_source_and_interleaves_by_rank():
    merged = merge(
        [
            retrieved(("a", TWO_TOWER, 0, "h1"), ("b", TWO_TOWER, 1, "h2")),
            retrieved(("p", POPULAR, 0), ("a", POPULAR, 1)),
        ],
        limit=10,
    )
    assert merged.ids() == ["a", "p", "b"]
    first = merged.row(0)
    assert first.sources == [TWO_TOWER, POPULAR] and first.anchors == {TWO_TOWER: "h1"}
    assert first.source_rank == 0 and first.scores == {"retrieval": 0.0}
    assert merged.row(2).anchors == {TWO_TOWER: "h2"} and merged.row(1).anchors == {}


def test_merge_stops_at_the_limit_but_still_records_sources_of_kept_items():
    merged = merge(
        [
            retrieved(("a", TWO_TOWER, 0), ("b", TWO_TOWER, 1), ("c", TWO_TOWER, 2)),
            retrieved(("b", POPULAR, 3)),
        ],
        limit=2,
    )
    assert merged.ids() == ["a", "b"] and merged.row(1).sources == [TWO_TOWER, POPULAR]


def test_merge_adds_a_later_sources_anchor_without_touching_shared_maps():
    co_visit = common.CANDIDATE_SOURCE_CO_VISITATION
    first = retrieved(("a", POPULAR, 0), ("b", POPULAR, 1))
    second = retrieved(("a", co_visit, 2, "mug"))
    merged = merge([first, second], limit=10)
    assert merged.row(0).anchors == {co_visit: "mug"} and merged.row(0).sources == [POPULAR, co_visit]
    assert first.row(0).anchors == {} and first.row(1).anchors == {}  # the inputs are as they were
    assert merge([first], limit=1).ids() == ["a"] and len(merge([], limit=5)) == 0


def test_one_answer_with_an_item_anchored_by_two_sources_keeps_both_anchors():
    co_visit = common.CANDIDATE_SOURCE_CO_VISITATION
    answer = retrieved(("a", TWO_TOWER, 0, "h1"), ("b", TWO_TOWER, 1, "h2"), ("a", co_visit, 0, "mug"))
    merged = merge([answer], limit=10)
    assert merged.ids() == ["a", "b"] and merged.row(0).sources == [TWO_TOWER, co_visit]
    assert merged.row(0).anchors == {TWO_TOWER: "h1", co_visit: "mug"} and merged.row(1).anchors == {TWO_TOWER: "h2"}


def test_take_selects_reorders_and_copies_every_column():
    items = Candidates.of(["a", "b", "c"], POPULAR, scores={"relevance": [0.1, 0.9, 0.5]})
    order = np.argsort(-items.final, kind="stable")
    top = items.take(order)
    assert top.ids() == ["b", "c", "a"] and top.scores["relevance"].tolist() == [0.9, 0.5, 0.1]
    top.exploration[0] = True
    assert not items.exploration.any()  # a new column, not a view
    assert items.take(np.array([True, False, True])).ids() == ["a", "c"]
    assert items.take(slice(0, 2)).ids() == ["a", "b"]


def test_final_prefers_final_then_relevance_and_reads_nan_as_missing():
    items = Candidates.of(["a", "b"], POPULAR)
    assert items.final.tolist() == [0.0, 0.0]
    items.scores["relevance"] = np.array([0.2, 0.4])
    assert items.final.tolist() == [0.2, 0.4]
    items.scores["final"] = np.array([0.9, np.nan])
    assert items.final.tolist() == [0.9, 0.0]
    items.scores["return"] = np.array([np.nan, 0.3])
    assert "return" not in items.row(0).scores and items.row(1).scores["return"] == 0.3
    assert items.has_source(POPULAR).tolist() == [True, True] and items.source_counts().tolist() == [1, 1]


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


def test_a_reason_two_sources_give_alike_is_given_once():
    popular, cold, trending = (
        common.CANDIDATE_SOURCE_POPULARITY,
        common.CANDIDATE_SOURCE_COLD_START,
        common.CANDIDATE_SOURCE_TRENDING,
    )
    reasons = reasons_for(Candidate("x", [popular, trending, cold]), {}, "GB")
    assert [r.text for r in reasons] == ["Popular in GB", "Trending now"]
    buy_again = common.CANDIDATE_SOURCE_BUY_AGAIN
    mine = Candidate("mug", [TWO_TOWER, buy_again], anchors={TWO_TOWER: "mug"})
    [reason] = reasons_for(mine, {"mug": common.EVENT_TYPE_PURCHASE}, "")
    assert (reason.code, reason.text, reason.related_item_id) == (common.REASON_CODE_BUY_AGAIN, "Buy it again", "mug")


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


def _merged_by_definition(parts: list[list[tuple]], limit: int) -> list[tuple]:
    """(item, sources, anchors) of each merged row, by the definition: rows in rank order (earlier part, then
    earlier row, on ties), an item's first row kept, its further sources in the order met, and for each source the
    anchor of the item's first row from it that has one."""
    rows = sorted(
        (
            (rank, p, r, item, source, anchor)
            for p, part in enumerate(parts)
            for r, (item, source, rank, anchor) in enumerate(part)
        ),
        key=lambda row: row[:3],
    )
    merged: dict[str, tuple[list[int], dict[int, str]]] = {}
    for _, _, _, item, source, anchor in rows:
        sources, anchors = merged.setdefault(item, ([], {}))
        if source not in sources:
            sources.append(source)
        if anchor and source not in anchors:
            anchors[source] = anchor
    return [(item, sources, anchors) for item, (sources, anchors) in list(merged.items())[:limit]]


def test_merge_matches_its_definition_on_random_answers():
    rng = np.random.default_rng(7)
    sources = [TWO_TOWER, I2I, POPULAR, common.CANDIDATE_SOURCE_CO_VISITATION]
    for _ in range(300):
        parts = []
        for _ in range(int(rng.integers(1, 4))):
            part = []
            for source in rng.choice(sources, size=int(rng.integers(1, 4)), replace=False).tolist():
                items = rng.choice(12, size=int(rng.integers(1, 8)), replace=False)
                part += [
                    (f"i{item}", source, rank, f"h{rng.integers(3)}" if rng.random() < 0.5 else "")
                    for rank, item in enumerate(items.tolist())
                ]
            parts.append(part)
        limit = int(rng.integers(1, 15))
        merged = merge([retrieved(*part) for part in parts], limit)
        got = [(row.item_id, row.sources, row.anchors) for row in merged.rows()]
        assert got == _merged_by_definition(parts, limit)
