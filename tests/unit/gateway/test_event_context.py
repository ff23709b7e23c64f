"""Free-form fields are bounded at the gateway: every event's context (region, request time, attributes) and unit
price, Recommend's context attributes and exclusion brands and categories, and the size of what is passed on to
retrieval. And without consent the subject key stays off the trace."""

from __future__ import annotations

import json
import math

import pytest
from opentelemetry import trace

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.core.errors import InvalidArgument
from services.core.validation import MAX_ATTRIBUTE_VALUE_LENGTH, MAX_ATTRIBUTES, MAX_ID_LENGTH
from services.gateway.servicer import MAX_INTERACTION_BYTES
from services.gateway.sessions import subject_key
from services.gateway.settings import GatewaySettings, salt_problem
from tests.unit.gateway.servicers import Context, recommend, servicer, shopper


def event(**fields) -> pb.TrackedEvent:
    base = pb.TrackedEvent(
        subject=common.Subject(user_id="u1"),
        item_id="i1",
        event_type=common.EVENT_TYPE_VIEW,
        consent=True,
        context=common.RequestContext(region="GB"),
    )
    base.MergeFrom(pb.TrackedEvent(**fields))
    return base


async def refused_track(*events: pb.TrackedEvent) -> dict[str, str]:
    service = servicer()
    with pytest.raises(InvalidArgument) as refused:
        await service.TrackEvents(pb.TrackEventsRequest(events=[event(), *events]), Context())
    assert service.deps.events.records == [], "nothing of a refused call is written"
    return refused.value.violations


async def refused_recommend(request: pb.RecommendRequest, **settings) -> dict[str, str]:
    service = servicer(cache_ttl_s=0, **settings)
    with pytest.raises(InvalidArgument) as refused:
        await recommend(service, request)
    assert service.deps.downstream.retrieval.calls == 0
    return refused.value.violations


@pytest.mark.parametrize(
    ("context", "field"),
    [
        (common.RequestContext(region="R" * 1_000_000), "events[1].context.region"),
        (common.RequestContext(region="G\x00B"), "events[1].context.region"),
        (
            common.RequestContext(attributes={f"a{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}),
            "events[1].context.attributes",
        ),
        (common.RequestContext(attributes={"a": "x" * 200_000}), "events[1].context.attributes['a']"),
        (common.RequestContext(attributes={"k" * 100_000: "v"}), f"events[1].context.attributes[{'k' * 32!r}]"),
        (common.RequestContext(attributes={"": "v"}), "events[1].context.attributes['']"),
        (common.RequestContext(attributes={"a": "line\nbreak"}), "events[1].context.attributes['a']"),
    ],
)
async def test_an_events_context_is_checked_like_a_requests(context, field):
    assert set(await refused_track(event(context=context))) == {field}


@pytest.mark.parametrize("price", [math.nan, math.inf, -math.inf, -0.01])
async def test_an_events_unit_price_must_be_a_finite_non_negative_number(price):
    assert set(await refused_track(event(unit_price=price))) == {"events[1].unit_price"}


async def test_an_event_with_the_largest_valid_context_is_logged_as_valid_json():
    context = common.RequestContext(
        region="en-GB",
        attributes={f"{i:0{MAX_ID_LENGTH}d}": "v" * MAX_ATTRIBUTE_VALUE_LENGTH for i in range(MAX_ATTRIBUTES)},
    )
    service = servicer()
    reply = await service.TrackEvents(pb.TrackEventsRequest(events=[event(context=context, unit_price=0.0)]), Context())
    assert reply.accepted_count == 1
    (record,) = service.deps.events.records
    assert record["region"] == "en-GB" and record["unit_price"] == 0.0
    json.loads(json.dumps(record, allow_nan=False))


@pytest.mark.parametrize(
    ("attributes", "field"),
    [
        ({f"a{i}": "x" * 200_000 for i in range(30)}, "context.attributes['a0']"),  # 6 MB: past retrieval's 4 MiB
        ({"a": "x" * (MAX_ATTRIBUTE_VALUE_LENGTH + 1)}, "context.attributes['a']"),
        ({"k" * (MAX_ID_LENGTH + 1): "v"}, f"context.attributes[{'k' * 32!r}]"),
        ({f"a{i}": "v" for i in range(MAX_ATTRIBUTES + 1)}, "context.attributes"),
    ],
)
async def test_recommend_bounds_each_context_attribute(attributes, field):
    violations = await refused_recommend(shopper(context=common.RequestContext(region="GB", attributes=attributes)))
    assert field in violations, violations


@pytest.mark.parametrize("kind", ["brands", "categories"])
@pytest.mark.parametrize("value", ["x" * (MAX_ID_LENGTH + 1), "", "tab\there"])
async def test_recommend_checks_each_excluded_brand_and_category(kind, value):
    exclusions = common.Exclusions(**{kind: ["fine", value]})
    assert set(await refused_recommend(shopper(exclusions=exclusions))) == {f"exclusions.{kind}[1]"}


async def test_exclusions_that_pass_their_own_limits_but_not_retrievals_message_limit_are_named():
    """5,000 ids of 256 four-byte characters each are each valid, but 5 MB in all: retrieval (4 MiB) would refuse
    the message and the answer would look like a retrieval outage. The gateway names the field instead."""
    exclusions = common.Exclusions(item_ids=[f"{n:04d}" + "😀" * (MAX_ID_LENGTH - 4) for n in range(5000)])
    assert exclusions.ByteSize() > GatewaySettings.model_fields["downstream_max_message_bytes"].default
    assert set(await refused_recommend(shopper(exclusions=exclusions))) == {"exclusions"}


async def test_the_forwarded_size_follows_the_limit_retrieval_is_deployed_with():
    """Where retrieval and ranking run with a smaller ``max_message_bytes``, the gateway is given it too
    (``downstream_max_message_bytes``) and names the field that would not fit: 5,000 plain ids of 256 characters,
    1.3 MB, pass the default 4 MiB and not 1 MiB."""
    exclusions = common.Exclusions(item_ids=[f"{n:04d}".ljust(MAX_ID_LENGTH, "x") for n in range(5000)])
    service = servicer(cache_ttl_s=0)
    await recommend(service, shopper(exclusions=exclusions))  # answered under the default limit
    violations = await refused_recommend(shopper(exclusions=exclusions), downstream_max_message_bytes=1024 * 1024)
    assert set(violations) == {"exclusions"} and "1048576 bytes" in violations["exclusions"], violations


async def test_the_subject_which_retrieval_is_not_sent_does_not_count_toward_its_message_size():
    """Exclusions that fit retrieval's message with a little room to spare, and a 1 KB subject: answered, since
    neither retrieval nor ranking is sent the subject."""
    limit = 1024 * 1024
    service = servicer(cache_ttl_s=0, downstream_max_message_bytes=limit)
    history_room = min(service.settings.max_history * MAX_INTERACTION_BYTES, limit // 2)
    room = limit - history_room - 1024
    ids = [f"{n:05d}".ljust(MAX_ID_LENGTH, "x") for n in range((room - 700) // (MAX_ID_LENGTH + 3))]
    request = shopper(user_id="😀" * MAX_ID_LENGTH, exclusions=common.Exclusions(item_ids=ids))
    forwarded = request.exclusions.ByteSize() + 4 + request.context.ByteSize() + 4
    assert forwarded <= room < forwarded + request.subject.ByteSize()  # the subject would tip it over
    assert len((await recommend(service, request)).items) == 5


async def test_the_largest_request_the_limits_allow_in_plain_characters_is_answered():
    service = servicer(cache_ttl_s=0)
    limits = service.settings
    request = shopper(
        context=common.RequestContext(
            region="GB", attributes={f"a{i}": "v" * MAX_ATTRIBUTE_VALUE_LENGTH for i in range(MAX_ATTRIBUTES)}
        ),
        history=[
            common.Interaction(item_id=f"{n:04d}".ljust(MAX_ID_LENGTH, "h"), event_type=common.EVENT_TYPE_VIEW)
            for n in range(limits.max_history)
        ],
        exclusions=common.Exclusions(
            item_ids=[f"{n:04d}".ljust(MAX_ID_LENGTH, "x") for n in range(limits.max_exclusions - 2)],
            brands=["b" * MAX_ID_LENGTH],
            categories=["c" * MAX_ID_LENGTH],
        ),
    )
    assert len((await recommend(service, request)).items) == 5


class Recorder(trace.NonRecordingSpan):
    """The current span, keeping what is set on it."""

    def __init__(self):
        super().__init__(trace.INVALID_SPAN_CONTEXT)
        self.attributes: dict = {}

    def set_attribute(self, key, value) -> None:
        self.attributes[key] = value


@pytest.mark.parametrize("consent", [False, True])
async def test_the_subject_key_is_on_the_span_only_with_consent(consent):
    """With the public default salt the key is a plain hash of the id: a guessable id is found from it."""
    span = Recorder()
    with trace.use_span(span):
        await recommend(servicer(cache_ttl_s=0), shopper(consent=consent))
    key = subject_key(common.Subject(user_id="alice@example.com"))
    assert ("aisle.subject" in span.attributes) is consent
    assert key not in span.attributes.values() or consent
    assert {"aisle.surface", "aisle.policy", "aisle.variant"} <= set(span.attributes)


@pytest.mark.parametrize(
    ("salt", "said"),
    [
        ("aisle", "the public default salt"),
        ("", "an empty salt"),
        ("s3cret", "a salt of 6 characters"),
        ("x" * 32, None),
    ],
)
def test_a_guessable_subject_key_salt_is_named_at_start_up(salt, said):
    """An empty salt (a Secret created without a value) was taken silently: its keys are plain hashes of the ids."""
    assert salt_problem(salt) == said
