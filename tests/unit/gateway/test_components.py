"""Each re-ranking component alone, on hand-made inputs."""

from __future__ import annotations

import numpy as np
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb_retrieval
from services.gateway.catalog import CatalogError, ItemCatalog
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
    return items.ids()


def split(items, keep):
    """(kept ids, removed ids) of a filter's keep mask (None keeps everything)."""
    if keep is None:
        return items.ids(), []
    assert keep.dtype == bool and len(keep) == len(items)
    return items.take(keep).ids(), items.take(~keep).ids()


def test_request_exclusions_remove_items_brands_categories_and_anchors():
    exclusions = common.Exclusions(item_ids=["i1"], brands=["b1"], categories=["c2"])
    items = candidates(*IDS)
    kept, removed = split(
        items, RequestExclusionFilter("x", Params(), deps()).apply(state(exclusions=exclusions), items)
    )
    # b1 = odd items; c2 = items 2, 5, 8; i1 explicitly.
    assert kept == ["i0", "i4", "i6"] and len(removed) == 7
    # Nothing excluded: nothing read, everything kept.
    assert RequestExclusionFilter("x", Params(), deps()).apply(state(), items) is None


def test_compliance_list_from_the_policy():
    params = ComplianceParams(blocked_items=["i0"], blocked_categories=["c1"])
    items = candidates(*IDS)
    kept, _ = split(items, ComplianceFilter("x", params, deps()).apply(state(), items))
    assert kept == ["i2", "i3", "i5", "i6", "i8", "i9"]


def test_recently_bought_uses_the_event_time_window():
    from datetime import UTC, datetime, timedelta

    old, new = (
        common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE),
        common.Interaction(item_id="i2", event_type=common.EVENT_TYPE_PURCHASE),
    )
    old.event_time.FromDatetime(datetime.now(UTC) - timedelta(days=40))
    new.event_time.FromDatetime(datetime.now(UTC) - timedelta(days=1))
    viewed = common.Interaction(item_id="i3", event_type=common.EVENT_TYPE_VIEW)
    items = candidates("i1", "i2", "i3")
    kept, removed = split(
        items,
        RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps()).apply(
            state(history=[old, new, viewed]), items
        ),
    )
    assert kept == ["i1", "i3"] and removed == ["i2"]


def test_recently_bought_counts_its_window_back_from_the_requests_own_time():
    from datetime import UTC, datetime

    bought = common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE)
    bought.event_time.FromDatetime(datetime(2026, 1, 10, tzinfo=UTC))
    items = candidates("i1", "i2")
    recently_bought = RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps())
    asked = state(history=[bought])
    asked.request.context.request_time.FromDatetime(datetime(2026, 1, 20, tzinfo=UTC))  # 10 days after: recent
    assert ids(candidates("i1", "i2").take(recently_bought.apply(asked, items))) == ["i2"]
    asked.request.context.request_time.FromDatetime(datetime(2026, 3, 1, tzinfo=UTC))  # 50 days after: not
    assert recently_bought.apply(asked, items) is None
    # Unset: the server's clock, by which January 2026 is more than 30 days ago.
    assert recently_bought.apply(state(history=[bought]), items) is None


def test_recently_bought_skips_a_stored_event_time_it_cannot_read():
    """A session store may hold events written before TrackEvents checked their time: such an event counts as
    neither recent nor old (it is skipped), and the filter does not fail the request."""
    from datetime import UTC, datetime

    from google.protobuf.timestamp_pb2 import Timestamp

    unreadable = [
        common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE, event_time=Timestamp(seconds=2**40)),
        common.Interaction(item_id="i2", event_type=common.EVENT_TYPE_PURCHASE, event_time=Timestamp(seconds=-(2**40))),
        common.Interaction(item_id="i3", event_type=common.EVENT_TYPE_PURCHASE, event_time=Timestamp(nanos=-1)),
    ]
    recent = common.Interaction(item_id="i4", event_type=common.EVENT_TYPE_PURCHASE)
    recent.event_time.FromDatetime(datetime.now(UTC))
    items = candidates("i1", "i2", "i3", "i4", "i5")
    keep = RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps()).apply(
        state(history=[*unreadable, recent]), items
    )
    assert split(items, keep) == (["i1", "i2", "i3", "i5"], ["i4"])


def test_recently_bought_window_from_the_first_day_of_year_one_starts_at_year_one():
    from google.protobuf.timestamp_pb2 import Timestamp

    from services.core.validation import MIN_TIMESTAMP_SECONDS

    bought = common.Interaction(
        item_id="i1", event_type=common.EVENT_TYPE_PURCHASE, event_time=Timestamp(seconds=MIN_TIMESTAMP_SECONDS)
    )
    asked = state(history=[bought])
    asked.request.context.request_time.seconds = MIN_TIMESTAMP_SECONDS + 86_400  # a day in: the window is 30
    items = candidates("i1", "i2")
    assert split(items, RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps()).apply(asked, items)) == (
        ["i2"],
        ["i1"],
    )


def test_recently_bought_uses_the_servers_clock_for_a_request_time_it_cannot_read():
    from datetime import UTC, datetime

    bought = common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE)
    bought.event_time.FromDatetime(datetime.now(UTC))
    asked = state(history=[bought])
    asked.request.context.request_time.seconds = 2**40  # refused by validation; a component is not the place to fail
    items = candidates("i1", "i2")
    assert split(items, RecentlyBoughtFilter("x", RecentlyBoughtParams(days=30), deps()).apply(asked, items)) == (
        ["i2"],
        ["i1"],
    )


def test_in_stock_filter_reads_the_catalog():
    items = candidates("i3", "i4", "unknown")
    kept, removed = split(items, InStockFilter("x", Params(), deps()).apply(state(), items))
    assert kept == ["i3", "unknown"] and removed == ["i4"]


async def test_expected_profit_blends_contribution_with_relevance():
    items = candidates("i1", "i4", relevance=[0.5, 0.5])
    items.scores["purchase"] = np.array([0.5, 0.5])
    items.scores["return"] = np.array([np.nan, 0.5])  # NaN: the model knows no P(return) for i1
    scorer = ExpectedProfitScorer("x", ExpectedProfitParams(weight=1.0, return_cost_share=0.1), deps())
    await scorer.score(state(), items)
    # i1: 0.5 x 11 x 0.1 = 0.55; i4: 0.5 x 14 x 0.4 - 0.5 x 0.5 x 1.4 = 2.45
    assert items.scores["profit"].tolist() == pytest.approx([0.55, 2.45])
    assert items.final[1] > items.final[0]
    # A NaN in the catalog costs its own item, not the order of the others.
    catalog = ItemCatalog({**CATALOG.items, "i2": {**CATALOG.items["i2"], "price": float("nan")}})
    items = candidates("i1", "i2", "i4", relevance=[0.5, 0.5, 0.5])
    items.scores["purchase"] = np.array([0.5, 0.5, 0.5])
    await scorer.score(state(catalog=catalog), items)
    assert not np.isnan(items.final).any() and items.final[2] > items.final[0]
    relevance_only = ExpectedProfitScorer("x", ExpectedProfitParams(weight=0.0), deps())
    items = candidates("i1", "i4", relevance=[0.9, 0.1])
    await relevance_only.score(state(), items)
    assert items.final[0] > items.final[1]


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
    items.source[0] = common.CANDIDATE_SOURCE_TWO_TOWER
    request_state = state()
    await RankingScorer("Ranking", RankingParams(), deps(Downstream())).score(request_state, items)
    assert [d.reason for d in request_state.degradations] == [common.DEGRADATION_REASON_RANKING_UNAVAILABLE]
    assert "purchase" not in items.scores
    relevance = items.scores["relevance"]
    assert len(relevance) == 3 and not np.isnan(relevance).any()
    assert relevance[1] > relevance[0] - 0.3  # popular items are not buried
    assert relevance[1] > relevance[2]  # among popular items, retrieval order


def test_sort_and_truncate():
    items = candidates("a", "b", "c", relevance=[0.1, 0.9, 0.5])
    assert ids(SortSelector("s", Params(), deps()).select(state(), items)) == ["b", "c", "a"]
    assert ids(TruncateSelector("t", Params(), deps()).select(state(k=2), items)) == ["a", "b"]


def test_exposure_cap_cuts_items_seen_too_often_unless_they_fill_the_top():
    selector = ExposureCapSelector("x", ExposureCapParams(max_exposures=2), deps())
    seen = {"i0": 2, "i1": 1, "i3": 5}
    # k others are left: the capped items are cut, so no later selector can bring them back.
    assert ids(selector.select(state(k=2, exposures=seen), candidates("i0", "i1", "i2", "i3", "i4"))) == [
        "i1",
        "i2",
        "i4",
    ]
    # Too few others: the first capped items fill the top k after them, and nothing beyond the top is kept.
    got = selector.select(state(k=4, exposures=seen), candidates("i0", "i1", "i2", "i3", "i4"))
    assert ids(got) == ["i1", "i2", "i4", "i0"]
    assert ids(selector.select(state(exposures=seen), candidates("i0", "i1", "i2"))) == ["i1", "i2", "i0"]
    unchanged = candidates("i1", "i2")
    assert selector.select(state(exposures=seen), unchanged) is unchanged


def test_mmr_spreads_categories_in_the_top():
    items = candidates("i0", "i3", "i6", "i1", "i2", relevance=[1.0, 0.99, 0.98, 0.5, 0.4])  # i0,i3,i6 all c0
    got = MMRDiversitySelector("x", DiversityParams(relevance_weight=0.5), deps()).select(state(k=3), items)
    assert ids(got)[:3] == ["i0", "i1", "i2"]
    unchanged = MMRDiversitySelector("x", DiversityParams(relevance_weight=1.0), deps()).select(state(k=3), items)
    assert ids(unchanged) == ids(items)


def test_mmr_breaks_ties_by_the_current_order_and_weighs_a_repeat_against_a_weaker_new_category():
    # i0, i3, i6 are c0, i1 and i4 c1, i2 c2. Equal relevance: the current order decides.
    tied = candidates("i3", "i0", "i1", "i4", relevance=[1.0, 1.0, 1.0, 1.0])
    got = MMRDiversitySelector("x", DiversityParams(relevance_weight=0.5), deps()).select(state(k=2), tied)
    assert ids(got) == ["i3", "i1", "i0", "i4"]
    # w = 0.8: after i0, another c0 item (0.8 x 1.0 - 0.2 = 0.6) beats a c2 item at 0.8 x 0.7 = 0.56, not one at
    # 0.8 x 0.9 = 0.72 (i7, relevance 0, keeps the scaled relevance equal to the given one).
    items = candidates("i0", "i3", "i2", "i7", relevance=[1.0, 1.0, 0.7, 0.0])
    got = MMRDiversitySelector("x", DiversityParams(relevance_weight=0.8), deps()).select(state(k=2), items)
    assert ids(got) == ["i0", "i3", "i2", "i7"]
    items = candidates("i0", "i3", "i2", "i7", relevance=[1.0, 1.0, 0.9, 0.0])
    got = MMRDiversitySelector("x", DiversityParams(relevance_weight=0.8), deps()).select(state(k=2), items)
    assert ids(got) == ["i0", "i2", "i3", "i7"]


def mmr_by_definition(relevance: list[float], categories: list[str], w: float) -> list[int]:
    """MMR as defined, one maximum at a time over every remaining item (the first on a tie)."""
    low, high = min(relevance), max(relevance)
    scaled = [0.0 if high == low else (r - low) / (high - low) for r in relevance]
    remaining, chosen, shown = list(range(len(relevance))), [], set()
    while remaining:
        best = max(remaining, key=lambda row: (w * scaled[row] - (1 - w) * (categories[row] in shown), -row))
        remaining.remove(best)
        chosen.append(best)
        shown.add(categories[best])
    return chosen


def test_mmr_matches_its_definition_on_random_lists():
    rng = np.random.default_rng(7)
    for case in range(2000):
        n, k = int(rng.integers(1, 40)), int(rng.integers(1, 12))
        items = [f"x{j}" for j in range(n)]
        categories = [f"c{rng.integers(0, rng.integers(1, 6))}" for _ in items]
        catalog = ItemCatalog({item: {"category": c} for item, c in zip(items, categories, strict=True)})
        # Half the cases with many ties (a few distinct relevance values).
        relevance = (rng.integers(0, 3, n) if case % 2 else rng.random(n)).astype(float).tolist()
        w = float(rng.choice([0.0, 0.3, 0.5, 0.7, 1.0, rng.random()]))
        selector = MMRDiversitySelector("x", DiversityParams(relevance_weight=w), deps())
        got = selector.select(state(k=k, catalog=catalog), candidates(*items, relevance=relevance))
        size = min(n, 3 * k)
        expected = [items[row] for row in mmr_by_definition(relevance[:size], categories[:size], w)]
        assert ids(got) == expected + items[size:], (case, relevance, categories, w)


def test_brand_quota_cuts_a_brands_further_items_unless_they_fill_the_top():
    # Even i2, i4, i6 are b0, odd i1, i3, i5 b1.
    quota_of = {q: BrandQuotaSelector("x", BrandQuotaParams(max_per_brand=q), deps()) for q in (1, 2)}
    items = candidates("i0", "i2", "i1", "i4", "i3", "i5", "i6")
    # Enough items keep the quota: every further item of a brand is cut, also beyond the top k (where a later
    # selector, an exploration slot, could promote it).
    assert ids(quota_of[2].select(state(k=3), items)) == ["i0", "i2", "i1", "i3"]
    # One b0 and one b1 fill the quota; the third slot cannot be filled within it: the next item fills it.
    assert ids(quota_of[1].select(state(k=3), items)) == ["i0", "i1", "i2"]
    unchanged = candidates("i0", "i1", "i2")
    assert quota_of[2].select(state(k=3), unchanged) is unchanged


def test_brand_quota_keeps_depth_rows_after_the_top_and_reads_no_further():
    class Counting(ItemCatalog):
        reads = 0

        def get(self, item_id, field, default=None):
            Counting.reads += 1
            return super().get(item_id, field, default)

    brands = {f"x{n}": {"brand": f"b{n // 2}", "category": "c"} for n in range(100)}  # two items per brand
    catalog = Counting(brands)
    quota = BrandQuotaSelector("x", BrandQuotaParams(max_per_brand=1, depth=3), deps())
    got = quota.select(state(k=4, catalog=catalog), candidates(*brands))
    assert ids(got) == ["x0", "x2", "x4", "x6", "x8", "x10", "x12"]  # k + depth rows, one per brand
    assert Counting.reads == 13  # up to x12: the other 87 candidates are cut unread


def test_items_the_catalog_does_not_hold_count_against_no_brand():
    quota = BrandQuotaSelector("x", BrandQuotaParams(max_per_brand=1), deps())
    fresh = candidates("new-1", "i0", "new-2", "i2", "new-3")  # new-*: not in the snapshot yet; i0 and i2 are b0
    assert ids(quota.select(state(k=4), fresh)) == ["new-1", "i0", "new-2", "new-3"]


def test_exploration_takes_bounded_slots_for_new_items_and_marks_them():
    shared = deps()
    for item in IDS[:8]:
        shared.feedback.shown[item] = 1000  # well exposed: only the "new" items 8 and 9 are eligible
    selector = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1), shared)
    got = selector.select(state(k=4), candidates(*IDS))
    explored = [c for c in got.rows()[:4] if c.exploration]
    assert len(explored) == 1 and explored[0].item_id in {"i8", "i9"} and got.exploration[1]
    assert explored[0].reasons[0].code == common.REASON_CODE_EXPLORATION
    assert len(got) == len(IDS) and sorted(ids(got)) == sorted(IDS)
    assert int(got.exploration.sum()) == 1
    # Same subject and surface: the same choice (deterministic per request key).
    again = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1), shared).select(
        state(k=4), candidates(*IDS)
    )
    assert ids(again) == ids(got)
    # One selector serves every request: another subject in between does not change this subject's choice, and
    # over many subjects both new items get explored.
    picks = {
        next(
            c.item_id
            for c in selector.select(state(k=4, subject_key=f"s{n}"), candidates(*IDS)).rows()
            if c.exploration
        )
        for n in range(40)
    }
    assert picks == {"i8", "i9"}
    assert ids(selector.select(state(k=4), candidates(*IDS))) == ids(got)
    # Two slots: the second one three places after the first, both flagged where they landed.
    two = ExplorationSelector("x", ExplorationParams(slots=2, first_position=1), shared).select(
        state(k=6), candidates(*IDS)
    )
    assert np.flatnonzero(two.exploration).tolist() == [1, 4]
    assert {two.ids()[1], two.ids()[4]} == {"i8", "i9"} and sorted(two.ids()) == sorted(IDS)
    with pytest.raises(ValueError, match="first_position"):
        ExplorationParams(first_position=-1)
    # Only the first ``pool`` candidates after the top compete: with i8 and i9 beyond it, nothing is explored.
    narrow = ExplorationSelector("x", ExplorationParams(slots=1, first_position=1, pool=3), shared)
    assert not narrow.select(state(k=4), candidates(*IDS)).exploration.any()


def test_the_catalog_fixture_has_the_features_components_need():
    assert {"price", "margin", "category", "brand", "stock"} <= CATALOG.features


async def test_an_unknown_value_in_a_shops_catalog_is_read_as_the_items_unknown_not_a_failed_request():
    """A feed writes null for an unknown margin or stock, or "n/a": the field still counts as one every item has
    (the policy loads), and the components read the item as one the catalog does not hold, instead of failing
    every request that meets it (float(None), None > 0)."""
    records = {item: dict(record) for item, record in CATALOG.items.items()}
    records["i1"]["margin"], records["i4"]["price"], records["i5"]["price"] = None, "n/a", " 12.99"
    records["i3"]["stock"], records["i2"]["stock"], records["i6"]["stock"] = None, True, False
    catalog = ItemCatalog(records)
    assert {"margin", "price", "stock"} <= catalog.features
    assert catalog.unknown == {"margin": 1, "price": 1, "stock": 1}
    assert catalog.invalid == ["item 'i4': price is 'n/a'"]
    assert catalog.get("i1", "margin", 0.0) == 0.0 and catalog.get("i1", "price") == CATALOG.items["i1"]["price"]
    assert catalog.get("i5", "price") == 12.99  # a decimal written as text, as many feeds do
    items = candidates("i1", "i2", "i3", "i4", "i6")
    kept, removed = split(items, InStockFilter("x", Params(), deps()).apply(state(catalog=catalog), items))
    assert kept == ["i1", "i2", "i3"] and removed == ["i4", "i6"]  # unknown stock is kept; a false flag is 0
    items = candidates("i1", "i2", "i3", "i4")
    items.scores["purchase"] = np.array([0.5, 0.5, 0.5, 0.5])
    await ExpectedProfitScorer("x", ExpectedProfitParams(weight=1.0), deps()).score(state(catalog=catalog), items)
    assert items.scores["profit"][[0, 3]].tolist() == [0.0, 0.0] and np.isfinite(items.final).all()


def test_the_catalog_file_names_its_values_read_as_unknown_and_how_to_point_at_one(tmp_path, caplog):
    path = tmp_path / "catalog.json"
    path.write_text('{"a": {"price": 2.5, "margin": "n/a"}, "b": {"price": null, "margin": 0.1}}')
    with caplog.at_level("INFO", logger="services.gateway.catalog"):
        catalog = ItemCatalog.load(path)
    assert catalog.features == {"price", "margin"}
    assert "values that are not finite numbers, read as unknown: item 'a': margin is 'n/a'" in caplog.text
    assert "1 of 2 items have no usable price" in caplog.text
    with pytest.raises(CatalogError, match="set AISLE_GATEWAY_CATALOG_PATH"):
        ItemCatalog.load(tmp_path / "missing.json")


def test_flagged_items_are_those_with_a_truthy_field():
    catalog = ItemCatalog({"a": {"new": True}, "b": {"new": False}, "c": {}, "d": {"new": 1}})
    assert catalog.flagged("new") == {"a", "d"} and catalog.flagged("missing") == frozenset()
    assert catalog.flagged("new") is catalog.flagged("new")  # worked out once


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
    items = candidates("i1", "i2")
    await RankingScorer("Ranking", RankingParams(), deps(Downstream())).score(request_state, items)
    assert (seen[0].model_name, seen[0].model_version) == ("sequence_ranker", "7")
    assert list(seen[0].candidate_item_ids) == ["i1", "i2"]
    assert items.scores["purchase"].tolist() == [0.5, 0.5] and "return" not in items.scores


def test_bandit_counts_successes_only_for_items_it_showed():
    stats = FeedbackStats()
    stats.exposed(["i1", "i2"])
    stats.succeeded("i1")
    stats.succeeded("never-shown")  # no evidence, and fresh ids must not grow memory
    assert stats.successes == {"i1": 1}


async def test_retrieval_sources_ask_for_columns_and_read_either_answer():
    from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
    from services.gateway.components.sources import RetrievalSources, RetrievalSourcesParams
    from services.gateway.pipeline import SourceFailed

    rows = [
        ("i1", common.CANDIDATE_SOURCE_CO_VISITATION, 0, 0.9, "i7"),
        ("i2", common.CANDIDATE_SOURCE_POPULARITY, 0, 50.0, ""),
        ("i1", common.CANDIDATE_SOURCE_POPULARITY, 1, 40.0, ""),
    ]
    columns = retrieval_pb.CandidateColumns(
        item_ids=[r[0] for r in rows],
        sources=[r[1] for r in rows],
        source_ranks=[r[2] for r in rows],
        scores=[r[3] for r in rows],
        anchor_item_ids=[r[4] for r in rows],
    )
    answers = {
        "columns": retrieval_pb.RetrieveResponse(columns=columns),
        # What a retrieval server from before `columnar` answers: the same candidates as messages.
        "messages": retrieval_pb.RetrieveResponse(
            candidates=[
                retrieval_pb.Candidate(item_id=i, source=s, source_rank=r, score=x, anchor_item_id=a)
                for i, s, r, x, a in rows
            ]
        ),
    }
    seen = []

    class Retrieval:
        answer = None

        async def Retrieve(self, request, timeout):  # noqa: N802
            seen.append(request)
            return self.answer

    class Downstream:
        retrieval = Retrieval()

    shared = deps(Downstream())
    source = RetrievalSources(
        "Retrieval", RetrievalSourcesParams(sources={"co_visitation": 5, "popularity": 5}), shared
    )
    for name, answer in answers.items():
        Downstream.retrieval.answer = answer
        got = await source.fetch(state(history=[common.Interaction(item_id="i7")]), 1.0)
        assert seen[-1].columnar, name
        assert got.ids() == ["i1", "i2", "i1"] and got.source_rank.tolist() == [0, 0, 1], name
        assert got.scores["retrieval"].tolist() == pytest.approx([0.9, 50.0, 40.0]), name
        assert got.row(0).anchors == {common.CANDIDATE_SOURCE_CO_VISITATION: "i7"} and got.row(1).anchors == {}
        assert shared.popular_cache.get("GB") == ["i2", "i1"], name
    # Switched off (an older router behind retrieval): messages are asked for.
    off = deps(Downstream())
    off.columnar = False
    Downstream.retrieval.answer = answers["messages"]
    legacy = await RetrievalSources("Retrieval", source.params, off).fetch(state(), 1.0)
    assert not seen[-1].columnar and legacy.ids() == ["i1", "i2", "i1"]
    broken = retrieval_pb.RetrieveResponse()
    broken.CopyFrom(answers["columns"])
    del broken.columns.scores[-1]
    Downstream.retrieval.answer = broken
    with pytest.raises(SourceFailed, match="unequal lengths"):
        await source.fetch(state(), 1.0)


async def test_ranking_reads_score_columns_with_nan_as_no_return_probability():
    from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb

    seen = []

    class Ranking:
        reply = ranking_pb.RankResponse(
            columns=ranking_pb.ScoreColumns(
                purchase_probabilities=[0.25, 0.5], return_probabilities=[float("nan"), 0.1]
            )
        )

        async def Rank(self, request, timeout):  # noqa: N802
            seen.append(request)
            return self.reply

    class Downstream:
        ranking = Ranking()

    items = candidates("i1", "i2")
    scorer = RankingScorer("Ranking", RankingParams(), deps(Downstream()))
    await scorer.score(state(), items)
    assert seen[0].columnar
    assert items.scores["purchase"].tolist() == [0.25, 0.5] and items.scores["relevance"].tolist() == [0.25, 0.5]
    assert np.isnan(items.scores["return"][0]) and items.scores["return"][1] == pytest.approx(0.1)
    assert "return" not in items.row(0).scores and items.row(1).scores["return"] == pytest.approx(0.1)
    # An answer with a different number of scores than candidates is no answer: flagged fallback, not misaligned.
    Ranking.reply = ranking_pb.RankResponse(columns=ranking_pb.ScoreColumns(purchase_probabilities=[0.25]))
    broken, request_state = candidates("i1", "i2"), state()
    await scorer.score(request_state, broken)
    assert [(d.reason, d.detail) for d in request_state.degradations] == [
        (common.DEGRADATION_REASON_RANKING_UNAVAILABLE, "ranking scored 1 of 2 candidates")
    ]
    assert "purchase" not in broken.scores and len(broken.scores["relevance"]) == 2


@pytest.mark.parametrize(
    ("exclusions", "params", "shared", "partial"),
    [
        (None, {}, True, False),
        (common.Exclusions(item_ids=["i3"]), {}, False, False),
        (common.Exclusions(brands=["b1"]), {}, False, False),
        (None, {"exclude_history": True}, False, False),
        (None, {"exclude_purchased": True}, False, False),
        (None, {}, False, True),  # a shard dropped: its items are missing from the answer
    ],
)
async def test_only_a_whole_call_that_excludes_nothing_fills_the_regions_popular_fallback(
    exclusions, params, shared, partial
):
    from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
    from services.gateway.components.sources import RetrievalSources, RetrievalSourcesParams

    answer = retrieval_pb.RetrieveResponse(
        columns=retrieval_pb.CandidateColumns(
            item_ids=["i2", "i1"],
            sources=[common.CANDIDATE_SOURCE_POPULARITY] * 2,
            source_ranks=[0, 1],
            scores=[50.0, 40.0],
            anchor_item_ids=["", ""],
        )
    )
    if partial:
        answer.degradations.add(
            reason=common.DEGRADATION_REASON_SOURCE_DROPPED, stage="shard s1:50061", detail="UNAVAILABLE"
        )

    class Retrieval:
        async def Retrieve(self, request, timeout):  # noqa: N802
            return answer

    class Downstream:
        retrieval = Retrieval()

    shared_deps = deps(Downstream())
    source = RetrievalSources("Retrieval", RetrievalSourcesParams(sources={"popularity": 5}, **params), shared_deps)
    got = await source.fetch(state(exclusions=exclusions), 1.0)
    assert got.ids() == ["i2", "i1"]  # the answer itself is the same either way
    assert shared_deps.popular_cache.get("GB") == (["i2", "i1"] if shared else [])


@pytest.mark.parametrize("k", [5, 120])
async def test_the_popular_sources_are_asked_for_at_least_k_so_that_they_can_fill_the_answer(k):
    # A shopper without history gets only the context sources: asked for their configured 50 whatever k, every
    # k above 50 was answered with 50 items, flagged short.
    from services.gateway.components.sources import (
        RetrievalSource,
        RetrievalSourceParams,
        RetrievalSources,
        RetrievalSourcesParams,
    )

    seen = []

    class Retrieval:
        async def Retrieve(self, request, timeout):  # noqa: N802
            seen.append({limit.source: limit.k for limit in request.source_limits})
            return pb_retrieval.RetrieveResponse()

    class Downstream:
        retrieval = Retrieval()

    several = {"popularity": 50, "cold_start": 50, "trending": 50, "co_visitation": 50}
    await RetrievalSources("Retrieval", RetrievalSourcesParams(sources=several), deps(Downstream())).fetch(
        state(k=k), 1.0
    )
    await RetrievalSource("Popular", RetrievalSourceParams(source="popularity", k=50), deps(Downstream())).fetch(
        state(k=k), 1.0
    )
    popular, trending = max(50, k), 50  # trending holds only items sold lately: it cannot fill any k
    assert seen[0] == {
        common.CANDIDATE_SOURCE_POPULARITY: popular,
        common.CANDIDATE_SOURCE_COLD_START: popular,
        common.CANDIDATE_SOURCE_TRENDING: trending,
        common.CANDIDATE_SOURCE_CO_VISITATION: 50,
    }
    assert seen[1] == {common.CANDIDATE_SOURCE_POPULARITY: popular}
    # With history the personal sources fill the candidate limit: the context sources keep their counts.
    shopper = state(k=k, history=[common.Interaction(item_id="i7")])
    await RetrievalSources("Retrieval", RetrievalSourcesParams(sources=several), deps(Downstream())).fetch(shopper, 1.0)
    assert seen[2] == dict.fromkeys(seen[0], 50)


async def test_the_regions_fallback_list_holds_each_popular_item_once():
    # Popularity and cold start propose much the same items: the fallback list is the distinct ones, in order.
    from services.gateway.components.sources import RetrievalSources, RetrievalSourcesParams

    popular, cold = common.CANDIDATE_SOURCE_POPULARITY, common.CANDIDATE_SOURCE_COLD_START
    rows = [("i2", popular), ("i1", popular), ("i1", cold), ("i3", cold), ("i2", cold)]

    class Retrieval:
        async def Retrieve(self, request, timeout):  # noqa: N802
            return pb_retrieval.RetrieveResponse(
                columns=pb_retrieval.CandidateColumns(
                    item_ids=[item for item, _ in rows],
                    sources=[source for _, source in rows],
                    source_ranks=[0, 1, 0, 1, 2],
                    scores=[5.0, 4.0, 3.0, 2.0, 1.0],
                    anchor_item_ids=[""] * len(rows),
                )
            )

    class Downstream:
        retrieval = Retrieval()

    shared = deps(Downstream())
    params = RetrievalSourcesParams(sources={"popularity": 5, "cold_start": 5})
    await RetrievalSources("Retrieval", params, shared).fetch(state(), 1.0)
    assert shared.popular_cache.get("GB") == ["i2", "i1", "i3"]


async def test_a_shopper_who_returned_an_item_does_not_make_the_regions_fallback_list():
    # Retrieval leaves the shopper's returned items out of the popular sources too: that answer is the shopper's.
    from services.gateway.components.sources import RetrievalSources, RetrievalSourcesParams

    class Retrieval:
        async def Retrieve(self, request, timeout):  # noqa: N802
            return pb_retrieval.RetrieveResponse(
                columns=pb_retrieval.CandidateColumns(
                    item_ids=["i2"],
                    sources=[common.CANDIDATE_SOURCE_POPULARITY],
                    source_ranks=[0],
                    scores=[5.0],
                    anchor_item_ids=[""],
                )
            )

    class Downstream:
        retrieval = Retrieval()

    params = RetrievalSourcesParams(sources={"popularity": 5})
    for history, stored in (
        ([common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE)], ["i2"]),
        ([common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_RETURN)], []),
    ):
        shared = deps(Downstream())
        await RetrievalSources("Retrieval", params, shared).fetch(state(history=history), 1.0)
        assert shared.popular_cache.get("GB") == stored


def test_the_popular_cache_serves_a_region_only_its_own_list_unless_told_otherwise():
    from services.gateway.components.sources import PopularCache

    now = [0.0]
    cache = PopularCache(ttl_s=60, clock=lambda: now[0])
    cache.store("FR", ["f1", "f2"])
    cache.store("", ["g1"])
    assert cache.get("FR") == ["f1", "f2"]
    assert cache.get("") == ["g1"]
    # FR's list was filtered by FR's stock and sales: it may hold items not sold in GB.
    assert cache.get("GB") == []
    assert cache.get("GB", other_regions=True) == ["g1"]  # the region-less list first
    now[0] = 30.0
    cache.store("DE", ["d1"])
    now[0] = 61.0  # FR's and the region-less lists are stale, DE's is not
    assert cache.get("FR") == [] and cache.get("GB", other_regions=True) == ["d1"]
    assert cache.get("DE", other_regions=True) == ["d1"]
    now[0] = 91.0
    assert cache.get("GB", other_regions=True) == []


@pytest.mark.parametrize(("other_regions", "expected"), [(False, []), (True, ["f1", "f2"])])
async def test_the_cached_popular_source_keeps_to_the_requests_region_unless_its_params_allow_others(
    other_regions, expected
):
    from services.gateway.components.sources import CachedPopularParams, CachedPopularSource

    shared = deps()
    shared.popular_cache.store("FR", ["f1", "f2"])  # the request's region is GB
    source = CachedPopularSource("Fallback", CachedPopularParams(other_regions=other_regions), shared)
    got = await source.fetch(state(), 1.0)
    assert got.ids() == expected
    assert (got.source == common.CANDIDATE_SOURCE_FALLBACK_CACHE).all()
