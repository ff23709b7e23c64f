"""Timestamps from callers (``event_time``, ``context.request_time``) are checked against google.protobuf
Timestamp's range at the gateway, and one out of it that reached a session store anyway (written before the check)
cannot fail a shopper's requests."""

from __future__ import annotations

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.core.errors import InvalidArgument
from services.core.validation import MAX_TIMESTAMP_SECONDS, MIN_TIMESTAMP_SECONDS
from services.gateway.sessions import subject_key
from tests.unit.gateway.servicers import Context, ids, recommend, servicer, shopper

OUT_OF_RANGE = [
    Timestamp(seconds=2**40),
    Timestamp(seconds=-(2**40)),
    Timestamp(seconds=MAX_TIMESTAMP_SECONDS + 1),
    Timestamp(seconds=MIN_TIMESTAMP_SECONDS - 1),
    Timestamp(seconds=1_700_000_000, nanos=-1),
    Timestamp(seconds=1_700_000_000, nanos=1_000_000_000),
]
#: The first and the last instant Timestamp can hold: valid, and answered.
EDGES = [Timestamp(seconds=MIN_TIMESTAMP_SECONDS), Timestamp(seconds=MAX_TIMESTAMP_SECONDS, nanos=999_999_999)]


def purchase(user: str, item: str = "i3", when: Timestamp | None = None) -> pb.TrackedEvent:
    event = pb.TrackedEvent(
        subject=common.Subject(user_id=user), item_id=item, event_type=common.EVENT_TYPE_PURCHASE, consent=True
    )
    if when is not None:
        event.event_time.CopyFrom(when)
    return event


@pytest.mark.parametrize("when", OUT_OF_RANGE, ids=str)
async def test_track_events_refuses_an_event_time_out_of_range_and_stores_nothing(when):
    service = servicer(cache_ttl_s=0)
    with pytest.raises(InvalidArgument) as refused:
        await service.TrackEvents(
            pb.TrackEventsRequest(events=[purchase("u1"), purchase("victim", when=when)]), Context()
        )
    assert set(refused.value.violations) == {"events[1].event_time"}
    assert service.deps.events.records == []
    assert await service.deps.sessions.history(subject_key(common.Subject(user_id="victim"))) == []


async def test_an_event_time_out_of_range_sent_for_a_shopper_cannot_fail_their_recommendations():
    service = servicer(cache_ttl_s=0)
    poisoned = pb.TrackEventsRequest(events=[purchase("victim", when=Timestamp(seconds=2**40))])
    with pytest.raises(InvalidArgument):
        await service.TrackEvents(poisoned, Context())
    assert len((await recommend(service, shopper("victim"))).items) == 5


async def test_a_stored_event_time_out_of_range_is_left_out_not_a_failed_request():
    """A session store may hold events written before TrackEvents checked their time: the shopper still gets an
    answer, and the unreadable event is neither used nor sent to retrieval (which would refuse it)."""
    service = servicer(cache_ttl_s=0)
    key = subject_key(common.Subject(user_id="victim"))
    bought = common.Interaction(
        item_id="i0", event_type=common.EVENT_TYPE_PURCHASE, event_time=Timestamp(seconds=2**40)
    )
    viewed = common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_VIEW)
    await service.deps.sessions.append(key, [bought, viewed])
    sent = []
    retrieve = service.deps.downstream.retrieval.Retrieve

    async def recording(request, timeout=None):
        sent.append(request)
        return await retrieve(request, timeout=timeout)

    service.deps.downstream.retrieval.Retrieve = recording
    response = await recommend(service, shopper("victim"))
    assert len(response.items) == 5 and "i0" in ids(response)  # the unreadable purchase filters nothing
    assert [i.item_id for i in sent[0].history] == ["i1"]


@pytest.mark.parametrize("when", OUT_OF_RANGE, ids=str)
async def test_recommend_names_a_history_event_time_out_of_range(when):
    history = [common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE, event_time=when)]
    with pytest.raises(InvalidArgument) as refused:
        await recommend(servicer(cache_ttl_s=0), shopper("u1", history=history))
    assert set(refused.value.violations) == {"history[0].event_time"}


@pytest.mark.parametrize("when", OUT_OF_RANGE, ids=str)
async def test_recommend_names_a_request_time_out_of_range(when):
    request = shopper("u1")
    request.context.request_time.CopyFrom(when)
    with pytest.raises(InvalidArgument) as refused:
        await recommend(servicer(cache_ttl_s=0), request)
    assert set(refused.value.violations) == {"context.request_time"}


@pytest.mark.parametrize("when", EDGES, ids=str)
async def test_times_at_the_edges_of_the_range_are_answered(when):
    """Year 1 and year 9999 are valid Timestamps: a request time in the first days of year 1 (whose recently-bought
    window would start before year 1) and purchases at either edge are answered, not an internal error."""
    history = [
        common.Interaction(item_id="i2", event_type=common.EVENT_TYPE_PURCHASE, event_time=edge) for edge in EDGES
    ]
    request = shopper("u1", history=history)
    request.context.request_time.CopyFrom(when)
    response = await recommend(servicer(cache_ttl_s=0), request)
    assert len(response.items) == 5
    # Bought at the request's own time (either edge): within the window, so not recommended again.
    assert "i2" not in ids(response)
