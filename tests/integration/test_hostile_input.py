"""Property-based hostile input for every public RPC: each answer is a valid reply or INVALID_ARGUMENT naming a
field, never another error, and the servers stay healthy. The stack runs in its own event loop thread so
hypothesis can drive it with a plain (sync) client."""

from __future__ import annotations

import asyncio
import threading

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, example, given, settings
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
from tests.support.hostile import ATTRIBUTES, HUGE_ATTRIBUTES, HUGE_REGIONS, PAST_DOWNSTREAM_ATTRIBUTES, TIMESTAMPS

ids = st.one_of(st.text(max_size=40), st.sampled_from(["", "I00001", "SKU000001", "x" * 300, "\x00\n"]))
big_ints = st.integers(min_value=-(2**31), max_value=2**31 - 1)
#: Unset, google.protobuf.Timestamp's limits and past them (tests/support/hostile.py), or anything at all.
timestamps = st.one_of(
    st.none(),
    st.sampled_from(TIMESTAMPS).map(lambda t: Timestamp(seconds=t[0], nanos=t[1])),
    st.builds(Timestamp, seconds=st.integers(min_value=-(2**63), max_value=2**63 - 1), nanos=big_ints),
)
interactions = st.builds(
    common.Interaction,
    item_id=ids,
    event_type=big_ints.filter(lambda v: 0 <= v < 2**20),
    quantity=big_ints,
    event_time=st.one_of(st.none(), st.none(), timestamps),  # mostly unset: the other fields are tested too
)
subjects = st.one_of(
    st.just(common.Subject()), st.builds(common.Subject, user_id=ids), st.builds(common.Subject, session_id=ids)
)
#: Small drawn maps, and the lists of limits and oversized ones (up to 1 MB: within every service's message limit).
attributes = st.one_of(
    st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    st.sampled_from(ATTRIBUTES + HUGE_ATTRIBUTES),
)


def contexts_with(attributes: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        common.RequestContext,
        region=st.one_of(st.sampled_from(["GB", "DE", ""]), st.text(max_size=20), st.sampled_from(HUGE_REGIONS)),
        device=st.integers(min_value=0, max_value=2**20),
        request_time=timestamps,
        attributes=attributes,
    )


contexts = contexts_with(attributes)
#: The gateway reads up to 16 MB, so it also gets 6 MB of attributes: past the 4 MiB it may pass on to retrieval.
gateway_contexts = contexts_with(st.one_of(attributes, st.just(PAST_DOWNSTREAM_ATTRIBUTES)))
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


def health_of(port: int) -> str:
    """The server's overall health, or the error that kept it from answering (a dead or wedged server)."""
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    except grpc.RpcError as error:
        return error.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


@pytest.fixture(autouse=True)
def still_healthy(ports):
    """After each test's examples (not each example: one check per server per test keeps the run short), every
    server still answers its health check SERVING, whichever tests ran before or at all."""
    yield
    assert {name: health_of(port) for name, port in ports.items()} == dict.fromkeys(ports, "SERVING")


@pytest.fixture(scope="module")
def served_version(trained) -> str:
    """The ranker version the ranking server serves: with no version configured, the newest one published."""
    versions = [p.name for p in (trained.model_repository / "ranker").iterdir() if p.name.isdigit()]
    return max(versions, key=int)


FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(
    subject=subjects,
    surface=st.integers(min_value=0, max_value=2**20),
    context=gateway_contexts,
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
            event_time=timestamps,
            unit_price=st.floats(allow_nan=True, allow_infinity=True),
            context=st.one_of(st.none(), contexts),
        ),
        max_size=6,
    )
)
def test_track_events(ports, events):
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        outcome(pb_grpc.RecommendationServiceStub(channel).TrackEvents, pb.TrackEventsRequest(events=events))


@FAST
@given(subject=subjects)
def test_forget_subject(ports, subject):
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        outcome(pb_grpc.RecommendationServiceStub(channel).ForgetSubject, pb.ForgetSubjectRequest(subject=subject))


@FAST
@given(context=gateway_contexts, times=st.lists(timestamps, max_size=3), consent=st.booleans())
def test_recommend_valid_but_for_its_context_and_times(ports, context, times, consent):
    """Drawn context and history times on an otherwise valid request, so that they reach the pipeline (the
    recently-bought filter reads both) and what the gateway passes on to retrieval."""
    request = pb.RecommendRequest(
        subject=common.Subject(user_id="u-hostile-context"),
        surface=common.SURFACE_HOME,
        context=context,
        consent=consent,
        history=[
            common.Interaction(item_id="SKU000001", event_type=common.EVENT_TYPE_PURCHASE, event_time=when)
            for when in times
        ],
        k=5,
    )
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        outcome(pb_grpc.RecommendationServiceStub(channel).Recommend, request)


@FAST
@given(
    event_time=timestamps,
    unit_price=st.floats(allow_nan=True, allow_infinity=True),
    context=st.one_of(st.none(), contexts),
)
def test_no_tracked_event_fails_the_shoppers_next_recommend(ports, event_time, unit_price, context):
    """Whatever one consenting event carries, it is stored or refused naming the field; either way the shopper's
    next Recommend is answered (anyone who knows the id can send events for it)."""
    shopper = common.Subject(user_id="u-hostile-events")
    event = pb.TrackedEvent(
        subject=shopper,
        item_id="SKU000001",
        event_type=common.EVENT_TYPE_PURCHASE,
        consent=True,
        event_time=event_time,
        unit_price=unit_price,
        context=context,
    )
    with grpc.insecure_channel(f"127.0.0.1:{ports['gateway']}") as channel:
        stub = pb_grpc.RecommendationServiceStub(channel)
        outcome(stub.TrackEvents, pb.TrackEventsRequest(events=[event]))
        request = pb.RecommendRequest(
            subject=shopper, surface=common.SURFACE_HOME, context=common.RequestContext(region="GB"), consent=True, k=5
        )
        stub.Recommend(request, timeout=5)


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


#: Stands for the version the ranking server serves (known only once it runs) in the strategies below.
SERVED = "served"
valid_candidates = st.lists(st.sampled_from(["I00001", "SKU000001", "SKU000002"]), min_size=1, max_size=5)


@FAST
@given(
    # Valid requests are drawn often too (and named below): only those reach the model version check.
    candidates=st.one_of(st.lists(ids, max_size=30), valid_candidates),
    history=st.one_of(st.just([]), st.lists(interactions, max_size=8)),
    version=st.sampled_from(["", SERVED, "999"]),
    context=st.one_of(st.none(), contexts),
)
@example(candidates=["SKU000001"], history=[], version="", context=None)
@example(candidates=["SKU000001"], history=[], version=SERVED, context=None)
@example(candidates=["SKU000001"], history=[], version="999", context=None)
def test_rank(ports, served_version, candidates, history, version, context):
    model_version = served_version if version == SERVED else version
    request = ranking_pb.RankRequest(
        candidate_item_ids=candidates, history=history, model_version=model_version, context=context
    )
    # Only a request that names a version other than the served one may be NOT_FOUND; no version, or the served
    # one, is answered or refused as the caller's mistake (INVALID_ARGUMENT naming a field), like any RPC here.
    other_version = model_version not in ("", served_version)
    with grpc.insecure_channel(f"127.0.0.1:{ports['ranking']}") as channel:
        try:
            reply = ranking_grpc.RankingServiceStub(channel).Rank(request, timeout=5)
        except grpc.RpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                assert other_version, (model_version, served_version, error.details())
                assert f"version {model_version} " in error.details(), error.details()
            else:
                assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
                assert details_of(error)[1], "INVALID_ARGUMENT must name at least one field"
        else:
            assert not other_version, f"answered for version {model_version}, which is not served"
            assert reply.model_version.version == served_version
