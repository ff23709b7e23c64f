"""Each re-ranking component alone, on hand-made inputs."""

from __future__ import annotations

import pytest

from aisle.common.v1 import common_pb2 as common
from services.gateway.components.base import Params
from services.gateway.components.filters import (
    ComplianceFilter,
    ComplianceParams,
    InStockFilter,
    RecentlyBoughtFilter,
    RecentlyBoughtParams,
    RequestExclusionFilter,
)
from services.gateway.components.scorers import (
    ExpectedProfitParams,
    ExpectedProfitScorer,
    RankingParams,
    RankingScorer,
)
from services.gateway.components.selectors import (
    BrandQuotaParams,
    BrandQuotaSelector,
    DiversityParams,
    ExplorationParams,
    ExplorationSelector,
    ExposureCapParams,
    ExposureCapSelector,
    FeedbackStats,
    MMRDiversitySelector,
    SortSelector,
    TruncateSelector,
)
from tests.unit.gateway.helpers import CATALOG, candidates, deps, state

IDS = [f"i{n}" for n in range(10)]


def ids(items):
    return [c.item_id for c in items]


def test_request_exclusions_remove_items_brands_categories_and_anchors():
    exclusions = common.Exclusions(item_ids=["i1"], brands=["b1"], categories=["c2"])
    kept, removed = RequestExclusionFilter("x", Params(), deps()).apply(state(exclusions=exclusions), candidates(*IDS))
    # b1 = odd items; c2 = items 2, 5, 8; i1 explicitly.
    assert ids(kept) == ["i0", "i4", "i6"] and len(removed) == 7


def test_compliance_list_from_the_policy():
    params = ComplianceParams(blocked_items=["i0"], blocked_categories=["c1"])
    kept, _ = ComplianceFilter("x", params, deps()).apply(state(), candidates(*IDS))
    assert ids(kept) == ["i2", "i3", "i5", "i6", "i8", "i9"]


def test_recently_bought_uses_the_event_time_window():
    from datetime import UTC, datetime, timedelta

    old, new = (
        common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE),
        common.Interaction(item_id="i2", event_type=common.EVENT_TYPE_PURCHASE),
    )
    old.event_time.FromDatetime(datetime.now(UTC) - timedelta(days=40))
    new.event_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    viewed = common.Interaction(item_id="i3", event_type=common.EVENT_TYPE_VIEW)
    kept, removed = RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps()).apply(
        state(history=[old, new, viewed]), candidates("i1", "i2", "i3")
    )
    assert ids(kept) == ["i1", "i3"] and ids(removed) == ["i2"]


def test_in_stock_filter_reads_the_catalog():
    kept, removed = InStockFilter("x", Params(), deps()).apply(state(), candidates("i3", "i4", "unknown"))
    assert ids(kept) == ["i3", "unknown"] and ids(removed) == ["i4"]


async def test_expected_profit_blends_contribution_with_relevance():
    items = candidates("i1", "i4", relevance=[0.5, 0.5])
    items[0].scores["purchase"], items[1].scores["purchase"] = 0.5, 0.5
    items[1].scores["return"] = 0.5
    scorer = ExpectedProfitScorer("x", ExpectedProfitParams(weight=1.0, return_cost_share=0.1), deps())
    await scorer.score(state(), items)
    # i1: 0.5 x 11 x 0.1 = 0.55; i4: 0.5 x 14 x 0.4 - 0.5 x 0.5 x 1.4 = 2.45
    assert items[0].scores["profit"] == pytest.approx(0.55)
    assert items[1].scores["profit"] == pytest.approx(2.45)
    assert items[1].final > items[0].final
    relevance_only = ExpectedProfitScorer("x", ExpectedProfitParams(weight=0.0), deps())
    items = candidates("i1", "i4", relevance=[0.9, 0.1])
    await relevance_only.score(state(), items)
    assert items[0].final > items[1].final


class DownRanking:
    async def Rank(self, request, timeout):  # noqa: N802
        import grpc

        class Unavailable(grpc.aio.AioRpcError):
            def __init__(self):
                super().__init__(grpc.StatusCode.UNAVAILABLE, None, None, "down")

        raise Unavailable()


async def test_ranking_down_blends_retrieval_order_with_popularity_and_flags_it():
    class Downstream:
        ranking = DownRanking()

    items = candidates("i1", "i2", "i3")
    items[0].sources = [common.CANDIDATE_SOURCE_TWO_TOWER]
    request_state = state()
    await RankingScorer("Ranking", RankingParams(), deps(Downstream())).score(request_state, items)
    assert [d.reason for d in request_state.degradations] == [common.DEGRADATION_REASON_RANKING_UNAVAILABLE]
    assert all("relevance" in c.scores and "purchase" not in c.scores for c in items)
    assert items[1].scores["relevance"] > items[0].scores["relevance"] - 0.3  # popular items are not buried


def test_sort_and_truncate():
    items = candidates("a", "b", "c", relevance=[0.1, 0.9, 0.5])
    assert ids(SortSelector("s", Params(), deps()).select(state(), items)) == ["b", "c", "a"]
    assert ids(TruncateSelector("t", Params(), deps()).select(state(k=2), items)) == ["a", "b"]


def test_exposure_cap_demotes_items_seen_too_often():
    selector = ExposureCapSelector("x", ExposureCapParams(max_exposures=2), deps())
    got = selector.select(state(exposures={"i0": 2, "i1": 1}), candidates("i0", "i1", "i2"))
    assert ids(got) == ["i1", "i2", "i0"]


def test_mmr_spreads_categories_in_the_top():
    items = candidates("i0", "i3", "i6", "i1", "i2", relevance=[1.0, 0.99, 0.98, 0.5, 0.4])  # i0,i3,i6 all c0
    got = MMRDiversitySelector("x", DiversityParams(relevance_weight=0.5), deps()).select(state(k=3), items)
    assert ids(got)[:3] == ["i0", "i1", "i2"]
    unchanged = MMRDiversitySelector("x", DiversityParams(relevance_weight=1.0), deps()).select(state(k=3), items)
    assert ids(unchanged) == ids(items)


def test_brand_quota_moves_the_excess_after_the_top():
    got = BrandQuotaSelector("x", BrandQuotaParams(max_per_brand=1), deps()).select(
        state(k=3), candidates("i0", "i2", "i1", "i3", "i4")
    )
    # One b0 and one b1 fill the quota; the third slot cannot be filled within it, so the rest follow in order.
    assert ids(got) == ["i0", "i1", "i2", "i3", "i4"]


def test_exploration_takes_bounded_slots_for_new_items_and_marks_them():
    shared = deps()
    for item in IDS[:8]:
        shared.feedback.shown[item] = 1000  # well exposed: only the "new" items 8 and 9 are eligible
    selector = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1), shared)
    got = selector.select(state(k=4), candidates(*IDS))
    explored = [c for c in got[:4] if c.exploration]
    assert len(explored) == 1 and explored[0].item_id in {"i8", "i9"} and got[1].exploration
    assert explored[0].reasons[0].code == common.REASON_CODE_EXPLORATION
    assert len(got) == len(IDS) and sorted(ids(got)) == sorted(IDS)
    # Same subject and surface: the same choice (deterministic per request key).
    again = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1), shared).select(
        state(k=4), candidates(*IDS)
    )
    assert ids(again) == ids(got)
    # Only the first ``pool`` candidates after the top compete: with i8 and i9 beyond it, nothing is explored.
    narrow = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1, pool=3), shared)
    assert not any(c.exploration for c in narrow.select(state(k=4), candidates(*IDS)))


def test_the_catalog_fixture_has_the_features_components_need():
    assert {"price", "margin", "category", "brand", "stock"} <= CATALOG.features


async def test_ranking_asks_for_the_variants_model_version():
    from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb

    seen = []

    class Ranking:
        async def Rank(self, request, timeout):  # noqa: N802
            seen.append(request)
            return ranking_pb.RankResponse(
                scored_items=[
                    ranking_pb.ScoredItem(item_id=i, purchase_probability=0.5) for i in request.candidate_item_ids
                ]
            )

    class Downstream:
        ranking = Ranking()

    request_state = state()
    request_state.model = ("sequence_ranker", "7")
    await RankingScorer("Ranking", RankingParams(), deps(Downstream())).score(request_state, candidates("i1"))
    assert (seen[0].model_name, seen[0].model_version) == ("sequence_ranker", "7")


def test_bandit_counts_successes_only_for_items_it_showed():
    stats = FeedbackStats()
    stats.exposed(["i1", "i2"])
    stats.succeeded("i1")
    stats.succeeded("never-shown")  # no evidence, and fresh ids must not grow memory
    assert stats.successes == {"i1": 1}
