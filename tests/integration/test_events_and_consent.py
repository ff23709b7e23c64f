"""TrackEvents against the real stack: events change the next answer, consent off stores nothing, overload is
RESOURCE_EXHAUSTED, and hostile requests get INVALID_ARGUMENT naming the field."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.errors import details_of
from services.gateway import app as gateway_app
from services.gateway.components.side_effects import ExposureLogger
from services.gateway.events import JsonlEventSink, read_events
from services.gateway.sessions import InMemorySessionStore, subject_key
from tests.integration.conftest import stack
from tests.integration.test_recommend_path import history_of


def tracked(item: str, user: str = "shopper-1", consent: bool = True, kind=common.EVENT_TYPE_PURCHASE):
    return pb.TrackedEvent(
        subject=common.Subject(user_id=user),
        event_type=kind,
        item_id=item,
        quantity=1,
        consent=consent,
        context=common.RequestContext(region="GB"),
    )


def home(user: str = "shopper-1", consent: bool = True, k: int = 8) -> pb.RecommendRequest:
    return pb.RecommendRequest(
        subject=common.Subject(user_id=user),
        surface=common.SURFACE_HOME,
        consent=consent,
        context=common.RequestContext(region="GB"),
        k=k,
        experiment_variant_override="control",
    )


async def test_tracked_events_change_the_next_recommendation(trained, tmp_path):
    log = tmp_path / "events.jsonl"
    async with stack(trained, gateway_extra={"event_log": "jsonl", "event_log_path": log}) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            before = await stub.Recommend(home(), timeout=5)
            assert not any(common.CANDIDATE_SOURCE_TWO_TOWER in i.sources for i in before.items)
            bought = history_of(trained, 4)
            reply = await stub.TrackEvents(pb.TrackEventsRequest(events=[tracked(i) for i in bought]), timeout=5)
            assert (reply.accepted_count, reply.rejected_count) == (4, 0)
            after = await stub.Recommend(home(), timeout=5)
        await hosts["gateway"].app.close()  # flushes the event log
    assert any(common.CANDIDATE_SOURCE_TWO_TOWER in i.sources for i in after.items)
    assert [i.item_id for i in after.items] != [i.item_id for i in before.items]
    records = list(read_events(log))
    assert [r["item_id"] for r in records if r["type"] == "purchase"] == bought
    exposures = [r for r in records if r["type"] == "exposure"]
    assert exposures and all(r["variant"] == "control" and r["subject"] != "shopper-1" for r in exposures)
    assert "shopper-1" not in log.read_text()  # ids are hashed


async def test_without_consent_nothing_is_stored_or_logged(trained, tmp_path, monkeypatch):
    # The gateway's own session store, held here: an answer without consent never reads it, so only reading it
    # directly shows what the gateway wrote there.
    sessions = InMemorySessionStore()
    monkeypatch.setattr(gateway_app, "build_session_store", lambda settings: sessions)
    exposures_logged = asyncio.Event()
    log_exposures = ExposureLogger.run

    async def run_then_flag(component, *args):
        try:
            await log_exposures(component, *args)
        finally:
            exposures_logged.set()

    monkeypatch.setattr(ExposureLogger, "run", run_then_flag)
    log = tmp_path / "events.jsonl"
    async with stack(trained, gateway_extra={"event_log": "jsonl", "event_log_path": log}) as hosts:
        salt = hosts["gateway"].settings.subject_key_salt.get_secret_value()
        key = subject_key(common.Subject(user_id="shopper-1"), salt)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            reply = await stub.TrackEvents(
                pb.TrackEventsRequest(events=[tracked(i, consent=False) for i in history_of(trained, 3)]), timeout=5
            )
            assert reply.accepted_count == 3
            assert await sessions.history(key) == [] and len(sessions) == 0
            answer = await stub.Recommend(home(consent=False), timeout=5)
            assert answer.items
            await asyncio.wait_for(exposures_logged.wait(), 5)  # the exposure side effect ran after the answer
            assert not any(common.CANDIDATE_SOURCE_TWO_TOWER in i.sources for i in answer.items)
            assert await sessions.exposures(key) == {} and await sessions.history(key) == []
            assert len(sessions) == 0, "no session of any key was made"
            # The store read above is the gateway's: a consented event of another shopper lands in it.
            await stub.TrackEvents(pb.TrackEventsRequest(events=[tracked("I1", user="shopper-2")]), timeout=5)
            assert len(sessions) == 1
        await hosts["gateway"].app.close()
    assert [r["subject"] for r in read_events(log)] == [subject_key(common.Subject(user_id="shopper-2"), salt)]


async def test_event_log_overload_is_resource_exhausted_with_retry_info(trained, tmp_path, monkeypatch):
    # A slow disk: the writer holds the first call's batch until the test lets it write.
    disk = threading.Event()
    append = JsonlEventSink._append

    def slow_append(sink, data):
        disk.wait(10)
        return append(sink, data)

    monkeypatch.setattr(JsonlEventSink, "_append", slow_append)
    log = tmp_path / "e.jsonl"
    extra = {"event_log": "jsonl", "event_log_path": log, "event_log_max_pending": 5, "max_events_per_call": 5}
    sent = accepted = rejected = 0
    async with stack(trained, gateway_extra=extra) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            for batch in ([f"I{i}" for i in range(5)], ["I5", "I6", "I7"]):
                sent += len(batch)
                try:
                    reply = await stub.TrackEvents(pb.TrackEventsRequest(events=[tracked(i) for i in batch]), timeout=5)
                    accepted += reply.accepted_count
                except grpc.aio.AioRpcError as error:
                    failure = error
                    rejected += len(batch)
            disk.set()
        await hosts["gateway"].app.close()  # waits for the buffer to drain
    assert failure.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    status = rpc_status.from_call(failure)
    retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
    assert retry, "RetryInfo tells the caller when to come back"
    assert (sent, accepted, rejected) == (8, 5, 3)
    written = [r["item_id"] for r in read_events(log) if r["type"] == "purchase"]
    assert written == [f"I{i}" for i in range(5)], "every accepted event is written, no refused one is"


@pytest.mark.parametrize(
    ("request_factory", "field"),
    [
        (
            lambda: pb.RecommendRequest(subject=common.Subject(user_id=""), surface=common.SURFACE_HOME),
            "subject.user_id",
        ),
        (
            lambda: pb.RecommendRequest(subject=common.Subject(user_id="x" * 10_000_000), surface=common.SURFACE_HOME),
            "subject.user_id",
        ),
        (lambda: pb.RecommendRequest(subject=common.Subject(user_id="u"), surface=common.SURFACE_HOME, k=10**6), "k"),
        (lambda: pb.RecommendRequest(subject=common.Subject(user_id="u"), surface=77), "surface"),
        (
            lambda: pb.RecommendRequest(
                subject=common.Subject(user_id="u"), surface=common.SURFACE_HOME, experiment_variant_override="nope"
            ),
            "experiment_variant_override",
        ),
    ],
)
async def test_hostile_requests_name_the_field(trained, request_factory, field):
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{hosts['gateway'].port}", options=[("grpc.max_send_message_length", 64 * 2**20)]
        ) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await pb_grpc.RecommendationServiceStub(channel).Recommend(request_factory(), timeout=5)
    assert failure.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field in details_of(failure.value)[1]


async def test_invalid_events_name_the_field(trained):
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            bad = tracked("I1")
            bad.event_type = common.EVENT_TYPE_UNSPECIFIED
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await pb_grpc.RecommendationServiceStub(channel).TrackEvents(
                    pb.TrackEventsRequest(events=[tracked("I0"), bad]), timeout=5
                )
    assert "events[1].event_type" in details_of(failure.value)[1]


async def test_cached_anonymous_answers_are_still_logged_as_exposures(trained, tmp_path):
    log = tmp_path / "events.jsonl"
    extra = {"event_log": "jsonl", "event_log_path": log, "anonymous_cache_ttl_s": 60}
    request = pb.RecommendRequest(
        subject=common.Subject(session_id="guest"),
        surface=common.SURFACE_HOME,
        consent=True,
        k=4,
        context=common.RequestContext(region="GB"),
        experiment_variant_override="control",
    )
    # Another guest: the first one's exposures (logged after the first answer) would keep it out of the cache.
    other = pb.RecommendRequest()
    other.CopyFrom(request)
    other.subject.session_id = "another-guest"
    async with stack(trained, gateway_extra=extra) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            first = await stub.Recommend(request, timeout=5)
            second = await stub.Recommend(other, timeout=5)
        await hosts["gateway"].app.close()
    assert not first.degradations, first.degradations
    assert [i.item_id for i in second.items] == [i.item_id for i in first.items]
    assert second.tracking_token != first.tracking_token
    exposures = [r for r in read_events(log) if r["type"] == "exposure"]
    assert [r["tracking_token"] for r in exposures] == [first.tracking_token, second.tracking_token]
    assert all(r["variant"] == "control" for r in exposures)
    explored = [[i["exploration"] for i in r["items"]] for r in exposures]
    assert explored[1] == explored[0], "the cached answer's exploration picks are logged as such"
