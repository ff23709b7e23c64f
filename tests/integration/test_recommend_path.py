"""Gateway -> retrieval -> ranking on real in-process servers with the trained tiny models."""

from __future__ import annotations

import asyncio
import json

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as ranking_grpc
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.errors import details_of
from services.core.server import ServiceHost
from services.ranking.app import build_application as build_ranking
from tests.integration.conftest import ranking_settings, serving, stack
from tests.integration.requests import home_request


def history_of(trained, length: int = 5) -> list[str]:
    sequence = max(trained.sequences, key=len)
    return [trained.item_ids[row] for row in sequence[-length:]]


async def recommend(port: int, request: pb.RecommendRequest, timeout: float = 5.0) -> pb.RecommendResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await pb_grpc.RecommendationServiceStub(channel).Recommend(request, timeout=timeout)


async def test_home_answer_is_ranked_and_explained(trained):
    async with stack(trained) as hosts:
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained), k=7))
    assert len(response.items) == 7
    assert [item.position for item in response.items] == list(range(7))
    explored = [i for i in response.items if any(r.code == common.REASON_CODE_EXPLORATION for r in i.reasons)]
    assert len(explored) <= 1  # the policy's one bounded exploration slot
    probabilities = [item.purchase_probability for item in response.items if item not in explored]
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(item.HasField("purchase_probability") and item.sources and item.reasons for item in response.items)
    assert len({item.item_id for item in response.items}) == 7
    kinds = {v.kind: v for v in response.versions}
    assert kinds["model"].name == "ranker" and kinds["model"].version == "1"
    assert kinds["index"].version and kinds["policy"].name == "home"
    assert not response.degradations
    assert len(response.tracking_token) == 32 and len(response.trace_id) == 32
    assert {s.stage for s in response.stage_latencies} == {"retrieval", "filtering", "scoring", "selection", "total"}


async def test_product_page_excludes_the_anchor_and_uses_item_to_item(trained):
    anchor = trained.item_ids[0]
    request = pb.RecommendRequest(
        subject=common.Subject(session_id="s-1"), surface=common.SURFACE_PRODUCT_PAGE, anchor_item_ids=[anchor], k=10
    )
    async with stack(trained) as hosts:
        response = await recommend(hosts["gateway"].port, request)
    assert anchor not in {item.item_id for item in response.items}
    assert any(common.CANDIDATE_SOURCE_ITEM_TO_ITEM in item.sources for item in response.items)
    related = {r.related_item_id for item in response.items for r in item.reasons if r.related_item_id}
    assert related == {anchor}


async def test_without_consent_history_is_not_used(trained):
    history = history_of(trained)
    async with stack(trained) as hosts:
        response = await recommend(hosts["gateway"].port, home_request(history, k=10, consent=False))
    assert response.items
    # Sources that read no history: popularity, trending, cold start.
    context_only = {
        common.CANDIDATE_SOURCE_POPULARITY,
        common.CANDIDATE_SOURCE_TRENDING,
        common.CANDIDATE_SOURCE_COLD_START,
    }
    assert all(set(item.sources) <= context_only for item in response.items)


async def test_exclusions_are_respected(trained):
    async with stack(trained) as hosts:
        first = await recommend(hosts["gateway"].port, home_request(history_of(trained), k=5))
        banned = [item.item_id for item in first.items[:3]]
        request = home_request(history_of(trained), k=5)
        request.exclusions.item_ids.extend(banned)
        second = await recommend(hosts["gateway"].port, request)
    assert not set(banned) & {item.item_id for item in second.items}


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda r: r.ClearField("subject"), "subject"),
        (lambda r: setattr(r, "k", 1_000_000), "k"),
        (lambda r: setattr(r, "surface", common.SURFACE_UNSPECIFIED), "surface"),
        (lambda r: setattr(r, "surface", 99), "surface"),
        (lambda r: r.history.add(item_id="x" * 10_000), "history[5].item_id"),
        (lambda r: r.history.add(item_id=""), "history[5].item_id"),
        (lambda r: setattr(r.context, "region", "not a region!"), "context.region"),
        (lambda r: setattr(r, "surface", common.SURFACE_CART), "anchor_item_ids"),
        (lambda r: r.history.add(item_id="I1", event_time=Timestamp(seconds=2**40)), "history[5].event_time"),
        (lambda r: r.context.request_time.CopyFrom(Timestamp(nanos=-1)), "context.request_time"),
        # 6 MB of attributes: within the gateway's 16 MB, past retrieval's 4 MiB (once an UNAVAILABLE "outage").
        (
            lambda r: r.context.attributes.update({f"a{i}": "x" * 200_000 for i in range(30)}),
            "context.attributes['a0']",
        ),
        (lambda r: r.exclusions.brands.append("b" * 300), "exclusions.brands[0]"),
        # Each id valid, 5 MB in all: named here rather than refused by retrieval's transport.
        (lambda r: r.exclusions.item_ids.extend(f"{n:04d}" + "😀" * 252 for n in range(5000)), "exclusions"),
    ],
)
async def test_invalid_recommend_request_names_the_field(trained, mutate, field):
    request = home_request(history_of(trained))
    mutate(request)
    async with stack(trained) as hosts:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await recommend(hosts["gateway"].port, request)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details_of(failure.value)
    assert info is not None and info.reason == "INVALID_ARGUMENT" and info.domain == "aisle.dev"
    assert field in violations, violations


async def test_retrieval_and_ranking_name_bad_fields_too(trained):
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['retrieval'].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(
                    retrieval_pb.RetrieveRequest(k=5, sources=[common.CANDIDATE_SOURCE_EXPLORATION]), timeout=2
                )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "sources[0]" in details_of(failure.value)[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['retrieval'].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                request = retrieval_pb.RetrieveRequest(
                    k=5,
                    sources=[common.CANDIDATE_SOURCE_POPULARITY],
                    history=[common.Interaction(item_id="I1", event_time=Timestamp(seconds=-(2**40)))],
                    context=common.RequestContext(request_time=Timestamp(seconds=2**40)),
                )
                await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(request, timeout=2)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert {"history[0].event_time", "context.request_time"} <= set(details_of(failure.value)[1])
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['ranking'].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await ranking_grpc.RankingServiceStub(channel).Rank(ranking_pb.RankRequest(), timeout=2)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "candidate_item_ids" in details_of(failure.value)[1]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['ranking'].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                request = ranking_pb.RankRequest(
                    candidate_item_ids=[trained.item_ids[0]],
                    history=[common.Interaction(item_id=trained.item_ids[1], event_time=Timestamp(nanos=10**9))],
                    context=common.RequestContext(request_time=Timestamp(seconds=2**40)),
                )
                await ranking_grpc.RankingServiceStub(channel).Rank(request, timeout=2)
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert {"history[0].event_time", "context.request_time"} <= set(details_of(failure.value)[1])


async def test_an_event_time_out_of_range_is_refused_and_the_shopper_still_gets_answers(trained):
    """Anyone who knows a shopper's id could once store such an event for them, and every Recommend of theirs then
    failed with INTERNAL (the recently-bought filter could not read its time)."""
    event = pb.TrackedEvent(
        subject=common.Subject(user_id="u-1"),
        item_id=trained.item_ids[0],
        event_type=common.EVENT_TYPE_PURCHASE,
        consent=True,
        event_time=Timestamp(seconds=2**40),
    )
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await pb_grpc.RecommendationServiceStub(channel).TrackEvents(
                    pb.TrackEventsRequest(events=[event]), timeout=5
                )
        assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert set(details_of(failure.value)[1]) == {"events[0].event_time"}
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained), k=5))
    assert len(response.items) == 5


async def test_ranking_scores_unknown_candidates_with_the_documented_default(trained):
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['ranking'].port}") as channel:
            reply = await ranking_grpc.RankingServiceStub(channel).Rank(
                ranking_pb.RankRequest(candidate_item_ids=[trained.item_ids[0], "NOT-IN-CATALOG"]), timeout=2
            )
    assert [s.item_id for s in reply.scored_items] == [trained.item_ids[0], "NOT-IN-CATALOG"]
    assert 0 < reply.scored_items[0].purchase_probability < 1
    assert reply.scored_items[1].purchase_probability == 0.0


async def test_a_deadline_shorter_than_the_work_gives_deadline_exceeded(trained):
    async with stack(trained) as hosts:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await recommend(hosts["gateway"].port, home_request(history_of(trained)), timeout=0.0005)
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_budget_too_small_for_any_stage_is_refused_before_work_starts(trained):
    # The configured budget (0.5 ms) is below the minimum stage time (2 ms): the gateway says so itself.
    async with stack(trained, gateway_extra={"total_budget_ms": 0.5}) as hosts:
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await recommend(hosts["gateway"].port, home_request(history_of(trained)))
    assert failure.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    info, _ = details_of(failure.value)
    assert info is not None and info.reason == "DEADLINE_TOO_SHORT"


async def test_ranking_down_gives_a_flagged_retrieval_order_answer(trained):
    async with stack(trained) as hosts:
        await hosts["ranking"].stop(grace=0, drain=0)
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained), k=5))
    assert len(response.items) == 5
    assert [d.reason for d in response.degradations] == [common.DEGRADATION_REASON_RANKING_UNAVAILABLE]
    assert not any(item.HasField("purchase_probability") for item in response.items)
    assert "model" not in {v.kind for v in response.versions}


async def test_retrieval_down_serves_the_regions_cached_popular_items_flagged(trained):
    async with stack(trained, gateway_extra={"fallback_regions": "GB, DE"}) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['retrieval'].port}") as channel:
            popular = await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(
                retrieval_pb.RetrieveRequest(
                    k=100, sources=[common.CANDIDATE_SOURCE_POPULARITY], context=common.RequestContext(region="GB")
                ),
                timeout=5,
            )
        await hosts["retrieval"].stop(grace=0, drain=0)
        response = await recommend(hosts["gateway"].port, home_request(history_of(trained), k=5))
    assert len(response.items) == 5
    assert all(item.sources == [common.CANDIDATE_SOURCE_FALLBACK_CACHE] for item in response.items)
    # Start-up cached GB's own list (AISLE_GATEWAY_FALLBACK_REGIONS): items sold in GB.
    assert {item.item_id for item in response.items} <= {c.item_id for c in popular.candidates}
    assert common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE in {d.reason for d in response.degradations}
    assert all(item.HasField("purchase_probability") for item in response.items)  # ranking still ranks them


async def test_retrieval_down_is_unavailable_for_a_region_no_answer_cached_not_another_regions_list(trained):
    # Start-up cached only the region-less list; the request is for GB, whose stock and sales it did not keep to.
    async with stack(trained) as hosts:
        await hosts["retrieval"].stop(grace=0, drain=0)
        with pytest.raises(grpc.aio.AioRpcError) as failure:
            await recommend(hosts["gateway"].port, home_request(history_of(trained), k=5))
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
    info, _ = details_of(failure.value)
    assert info is not None and info.reason == "RETRIEVAL_UNAVAILABLE"
    assert "for this region" in failure.value.details()


async def test_fallback_items_all_excluded_is_a_short_answer_not_an_outage(trained):
    categories = sorted({item["category"] for item in json.loads((trained.root / "catalog.json").read_text()).values()})
    async with stack(trained, gateway_extra={"fallback_regions": "GB"}) as hosts:
        await hosts["retrieval"].stop(grace=0, drain=0)
        request = home_request(history_of(trained), k=5)
        request.exclusions.categories.extend(categories)  # the cached popular items exist, but none may be shown
        response = await recommend(hosts["gateway"].port, request)
    assert not response.items
    reasons = {d.reason for d in response.degradations}
    assert {common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE, common.DEGRADATION_REASON_SHORT_ANSWER} <= reasons


async def test_answers_recover_when_ranking_comes_back_without_restarting_the_gateway(trained):
    async with stack(trained) as hosts:
        port = hosts["ranking"].port
        await hosts["ranking"].stop(grace=0, drain=0)
        degraded = await recommend(hosts["gateway"].port, home_request(history_of(trained)))
        assert degraded.degradations
        settings = ranking_settings(trained).model_copy(update={"port": port})
        async with serving(ServiceHost(settings, build_ranking(settings))):
            for _ in range(50):  # the gateway's channel reconnects within its (short) backoff
                recovered = await recommend(hosts["gateway"].port, home_request(history_of(trained)))
                if not recovered.degradations:
                    break
                await asyncio.sleep(0.1)
    assert not recovered.degradations
    assert all(item.HasField("purchase_probability") for item in recovered.items)
