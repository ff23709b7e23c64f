"""Property-based hostile input for every public RPC: each answer is a valid reply or INVALID_ARGUMENT naming a
field, never another error, and the servers stay healthy. The stack runs in its own event loop thread so
hypothesis can drive it with a plain (sync) client."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as ranking_grpc
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.errors import details_of
from tests.integration.conftest import stack

ids = st.one_of(st.text(max_size=40), st.sampled_from(["", "I00001", "SKU000001", "x" * 300, "\x00\n"]))
big_ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
interactions = st.builds(
    common.Interaction, item_id=ids, event_type=big_ints.filter(lambda v: 0 <= v < 2**20), quantity=big_ints
)
subjects = st.one_of(
    st.just(common.Subject()), st.builds(common.Subject, user_id=ids), st.builds(common.Subject, session_id=ids)
)
contexts = st.builds(
    common.RequestContext, region=st.text(max_size=20), device=st.integers(min_value=0, max_value=2**20)
)
exclusions = st.builds(
    common.Exclusions,
    item_ids=st.lists(ids, max_size=5),
    brands=st.lists(ids, max_size=3),
    categories=st.lists(ids, max_size=3),
)


@pytest.fixture(scope="module")
def ports(trained):
    """The three services in a background event loop for the whole module."""
    loop = asyncio.new_event_loop()
    ready, done = threading.Event(), None
    result: dict = {}

    async def run():
        nonlocal done
        done = asyncio.Event()
        async with stack(trained) as hosts:
            result.update({name: host.port for name, host in hosts.items()})
            ready.set()
            await done.wait()

    thread = threading.Thread(target=lambda: loop.run_until_complete(run()), daemon=True)
    thread.start()
    assert ready.wait(120), "stack did not start"
    yield result
    loop.call_soon_threadsafe(done.set)
    thread.join(30)


def outcome(call, request) -> None:
    try:
        call(request, timeout=5)
    except grpc.RpcError as error:
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
        assert details_of(error)[1], "INVALID_ARGUMENT must name at least one field"


def healthy(port: int) -> bool:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return reply.status == health_pb2.HealthCheckResponse.SERVING


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(
    subject=subjects,
    surface=st.integers(min_value=0, max_value=2**20),
    context=contexts,
    history=st.lists(interactions, max_size=8),
    anchors=st.lists(ids, max_size=4),
    k=big_ints,
    exclusions=exclusions,
    consent=st.booleans(),
    variant=st.sampled_from(["", "control", "bogus"]),
)
def test_recommend(ports, subject, surface, context, history, anchors, k, exclusions, consent, variant):
    request = pb.RecommendRequest(
        subject=subject,
        surface=surface,
        context=context,
        history=history,
        anchor_item_ids=anchors,
        k=k,
        exclusions=exclusions,
        consent=consent,
        experiment_variant_override=variant,
    )
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        outcome(pb_grpc.RecommendationServiceStub(channel).Recommend, request)


@FAST
@given(
    events=st.lists(
        st.builds(
            pb.TrackedEvent,
            subject=subjects,
            event_type=big_ints.filter(lambda v: 0 <= v < 99),
            item_id=ids,
            quantity=big_ints,
            consent=st.booleans(),
            tracking_token=ids,
        ),
        max_size=6,
    )
)
def test_track_events(ports, events):
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        outcome(pb_grpc.RecommendationServiceStub(channel).TrackEvents, pb.TrackEventsRequest(events=events))


@FAST
@given(
    k=big_ints,
    history=st.lists(interactions, max_size=8),
    anchors=st.lists(ids, max_size=4),
    sources=st.lists(st.integers(min_value=0, max_value=2**20), max_size=3),
    context=contexts,
    vector=st.lists(st.floats(allow_nan=True, width=32), max_size=40),
    consent=st.booleans(),
)
def test_retrieve(ports, k, history, anchors, sources, context, vector, consent):
    request = retrieval_pb.RetrieveRequest(
        k=k,
        history=history,
        anchor_item_ids=anchors,
        sources=sources,
        context=context,
        history_query_vector=vector,
        consent=consent,
    )
    with grpc.insecure_channel(f"127.0.0.1:{ports['retrieval']}") as channel:
        outcome(retrieval_grpc.RetrievalServiceStub(channel).Retrieve, request)


@FAST
@given(
    candidates=st.lists(ids, max_size=30),
    history=st.lists(interactions, max_size=8),
    model_version=st.sampled_from(["", "1", "999"]),
)
def test_rank(ports, candidates, history, model_version):
    request = ranking_pb.RankRequest(candidate_item_ids=candidates, history=history, model_version=model_version)
    with grpc.insecure_channel(f"127.0.0.1:{ports['ranking']}") as channel:
        try:
            ranking_grpc.RankingServiceStub(channel).Rank(request, timeout=5)
        except grpc.RpcError as error:
            # Asking for a version that is not served is NOT_FOUND with the reason; everything else is the caller's.
            assert error.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND), error.details()


def test_every_server_is_still_healthy(ports):
    assert all(healthy(port) for port in ports.values())
