"""Without consent nothing about the shopper is stored: the session store is read back directly after each write
path (TrackEvents, the exposure logger, a whole Recommend), since an answer without consent never reads it."""

from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.core.errors import DependencyUnavailable, InvalidArgument
from services.gateway.candidates import Candidates
from services.gateway.components.base import Dependencies, Params
from services.gateway.components.selectors import FeedbackStats
from services.gateway.components.side_effects import ExposureLogger
from services.gateway.components.sources import PopularCache
from services.gateway.sessions import InMemorySessionStore, subject_key
from tests.unit.gateway.helpers import state
from tests.unit.gateway.servicers import Context, DownSessions, RecordingSink, ids, recommend, servicer, shopper


def event(user: str, item: str, consent: bool, kind=common.EVENT_TYPE_PURCHASE) -> pb.TrackedEvent:
    return pb.TrackedEvent(
        subject=common.Subject(user_id=user),
        item_id=item,
        event_type=kind,
        quantity=1,
        consent=consent,
        context=common.RequestContext(region="GB"),
    )


def key_of(user: str) -> str:
    return subject_key(common.Subject(user_id=user))  # the servicer's default salt


async def test_tracked_events_without_consent_are_not_stored():
    service = servicer()
    reply = await service.TrackEvents(
        pb.TrackEventsRequest(events=[event("ann", "i1", consent=False), event("ann", "i2", consent=False)]), Context()
    )
    assert reply.accepted_count == 2
    store = service.deps.sessions
    assert await store.history(key_of("ann")) == []
    assert await store.exposures(key_of("ann")) == {}
    assert len(store) == 0, "no session of any key was made"
    assert service.deps.events.records == []


async def test_a_batch_mixing_consents_stores_only_the_consented_events():
    service = servicer()
    events = [
        event("ann", "i1", consent=True),
        event("bob", "i2", consent=False),
        event("ann", "i3", consent=False),  # the same shopper, this time without consent
        event("ann", "i4", consent=True),
    ]
    await service.TrackEvents(pb.TrackEventsRequest(events=events), Context())
    store = service.deps.sessions
    assert [e.item_id for e in await store.history(key_of("ann"))] == ["i1", "i4"]
    assert await store.history(key_of("bob")) == []
    assert len(store) == 1
    assert [r["item_id"] for r in service.deps.events.records] == ["i1", "i4"]


def logger() -> tuple[ExposureLogger, Dependencies]:
    dependencies = Dependencies(None, InMemorySessionStore(), FeedbackStats(), PopularCache(), RecordingSink())
    return ExposureLogger("ExposureLogger", Params(), dependencies), dependencies


def shown(*items: str) -> Candidates:
    candidates = Candidates.of(list(items), common.CANDIDATE_SOURCE_POPULARITY)
    candidates.exploration = np.zeros(len(items), dtype=bool)
    return candidates


async def test_the_exposure_logger_without_consent_keeps_only_the_aggregate_counts():
    component, dependencies = logger()
    await component.run(state(consent=False, subject_key="k"), shown("i1", "i2"), pb.RecommendResponse())
    assert await dependencies.sessions.exposures("k") == {}
    assert len(dependencies.sessions) == 0
    assert dependencies.events.records == []
    assert dependencies.feedback.shown == {"i1": 1, "i2": 1}, "the bandit's counts say nothing about the shopper"


async def test_the_exposure_logger_with_consent_stores_the_subjects_exposures():
    component, dependencies = logger()
    response = pb.RecommendResponse(tracking_token="t")
    await component.run(state(consent=True, subject_key="k"), shown("i1", "i2"), response)
    assert await dependencies.sessions.exposures("k") == {"i1": 1, "i2": 1}
    [record] = dependencies.events.records
    assert record["subject"] == "k" and record["tracking_token"] == "t"


async def test_an_answer_without_consent_stores_nothing_about_the_shopper():
    service = servicer(cache_ttl_s=0)
    answer = await recommend(service, shopper("ann", consent=False))  # waits for the side effects
    assert len(answer.items) == 5
    assert await service.deps.sessions.exposures(key_of("ann")) == {}
    assert len(service.deps.sessions) == 0
    assert service.deps.events.records == []
    assert set(service.deps.feedback.shown) == set(ids(answer))  # the side effects did run


async def test_forget_subject_deletes_the_session_and_tells_the_event_logs_readers():
    """A shopper who withdraws consent: later calls no longer read or write their session, but what was kept stayed
    until its time to live (up to 30 days), and came back if they consented again within it."""
    service = servicer()
    await service.TrackEvents(pb.TrackEventsRequest(events=[event("ann", "i1", consent=True)]), Context())
    await service.TrackEvents(pb.TrackEventsRequest(events=[event("bob", "i2", consent=True)]), Context())
    await recommend(service, shopper("ann"))  # exposures counted
    store = service.deps.sessions
    assert await store.history(key_of("ann")) and await store.exposures(key_of("ann"))
    reply = await service.ForgetSubject(pb.ForgetSubjectRequest(subject=common.Subject(user_id="ann")), Context())
    assert reply.session_deleted
    assert await store.history(key_of("ann")) == [] and await store.exposures(key_of("ann")) == {}
    assert [e.item_id for e in await store.history(key_of("bob"))] == ["i2"]  # only hers
    assert service.deps.events.records[-1] == {
        "type": "forget",
        "at": pytest.approx(time.time(), abs=60),
        "subject": key_of("ann"),
    }
    # Consenting again starts from nothing; asking again is harmless.
    again = await service.ForgetSubject(pb.ForgetSubjectRequest(subject=common.Subject(user_id="ann")), Context())
    assert not again.session_deleted


async def test_forget_subject_names_a_missing_subject_and_says_when_the_store_is_down():
    service = servicer()
    with pytest.raises(InvalidArgument, match="subject"):
        await service.ForgetSubject(pb.ForgetSubjectRequest(), Context())
    service.deps.sessions = DownSessions()
    with pytest.raises(DependencyUnavailable, match="nothing was deleted"):
        await service.ForgetSubject(pb.ForgetSubjectRequest(subject=common.Subject(user_id="ann")), Context())


async def test_forget_subject_is_not_undone_by_the_side_effects_of_an_answer_already_sent():
    """The page view's exposure write runs after its answer: a ForgetSubject right after (the shopper withdrew
    consent on that page) deleted the session, then the write made it again, and the log held an exposure after
    the erasure record."""
    service = servicer()
    await service.Recommend(shopper("ann"), Context())  # answered; its exposure write not yet run
    reply = await service.ForgetSubject(pb.ForgetSubjectRequest(subject=common.Subject(user_id="ann")), Context())
    await asyncio.gather(*service._background)
    assert reply.session_deleted
    assert await service.deps.sessions.exposures(key_of("ann")) == {}
    assert [r["type"] for r in service.deps.events.records] == ["exposure", "forget"]
