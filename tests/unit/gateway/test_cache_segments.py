"""The anonymous answer cache: what makes two requests share an answer, what keeps a request out, how long an
answer lives (a fake clock) and how many the cache holds."""

from __future__ import annotations

import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.gateway.cache import AnonymousCache
from tests.unit.gateway.test_servicer_and_events import guest, ids, recommend, servicer


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def request(**changes) -> pb.RecommendRequest:
    """A guest on a product page: every field the segment keys on is set, so that each can be changed alone."""
    base = pb.RecommendRequest(
        subject=common.Subject(session_id="guest-1"),
        surface=common.SURFACE_PRODUCT_PAGE,
        consent=True,
        k=5,
        anchor_item_ids=["i1", "i2"],
        context=common.RequestContext(region="GB", device=common.DEVICE_MOBILE),
    )
    for field, value in changes.items():
        if field in ("region", "device"):
            setattr(base.context, field, value)
        elif field == "anchor_item_ids":
            base.ClearField("anchor_item_ids")
            base.anchor_item_ids.extend(value)
        elif field in ("subject", "exclusions"):
            getattr(base, field).CopyFrom(value)
        else:
            setattr(base, field, value)
    return base


def test_the_same_request_from_another_guest_shares_the_segment():
    cache = AnonymousCache(ttl_s=60)
    segment = cache.segment(request(), "control", 5)
    assert segment is not None
    assert cache.segment(request(subject=common.Subject(session_id="guest-2")), "control", 5) == segment
    # A signed-in shopper without consent: nothing about them is used, so they share guests' answers too.
    no_consent = request(subject=common.Subject(user_id="u"), consent=False)
    assert cache.segment(no_consent, "control", 5) == segment


@pytest.mark.parametrize(
    ("changed", "variant", "k"),
    [
        (request(surface=common.SURFACE_CART), "control", 5),
        (request(region="DE"), "control", 5),
        (request(device=common.DEVICE_DESKTOP), "control", 5),
        (request(anchor_item_ids=["i1", "i3"]), "control", 5),
        (request(anchor_item_ids=["i2", "i1"]), "control", 5),
        (request(anchor_item_ids=["i1"]), "control", 5),
        (request(), "diverse", 5),
        (request(), "control", 6),
    ],
    ids=["surface", "region", "device", "anchors", "anchor-order", "fewer-anchors", "variant", "k"],
)
def test_each_field_that_shapes_the_answer_makes_its_own_segment(changed, variant, k):
    cache = AnonymousCache(ttl_s=60)
    base = cache.segment(request(), "control", 5)
    other = cache.segment(changed, variant, k)
    assert other is not None and other != base
    # And the cached answer of one is never served for the other.
    cache.put(base, pb.RecommendResponse(tracking_token="base"))
    assert cache.get(other) is None


@pytest.mark.parametrize(
    "exclusions",
    [
        common.Exclusions(item_ids=["i3"]),
        common.Exclusions(brands=["b1"]),
        common.Exclusions(categories=["c2"]),
    ],
    ids=["items", "brands", "categories"],
)
def test_a_request_with_exclusions_has_no_segment(exclusions):
    cache = AnonymousCache(ttl_s=60)
    assert cache.segment(request(exclusions=exclusions), "control", 5) is None


def test_a_signed_in_shopper_with_consent_has_no_segment_and_a_cache_without_ttl_none_at_all():
    assert AnonymousCache(ttl_s=60).segment(request(subject=common.Subject(user_id="u")), "control", 5) is None
    assert AnonymousCache(ttl_s=0).segment(request(), "control", 5) is None


def test_an_answer_lives_ttl_s_and_no_longer():
    clock = FakeClock()
    cache = AnonymousCache(ttl_s=60, clock=clock)
    segment = cache.segment(request(), "control", 5)
    cache.put(segment, pb.RecommendResponse(tracking_token="cached"))
    clock.now += 59.9
    assert cache.get(segment).tracking_token == "cached"
    clock.now += 0.2  # 60.1 s after the put
    assert cache.get(segment) is None
    cache.put(segment, pb.RecommendResponse(tracking_token="fresh"))  # a new answer starts a new lifetime
    clock.now += 59.9
    assert cache.get(segment).tracking_token == "fresh"


def test_the_cache_holds_at_most_max_entries():
    clock = FakeClock()
    cache = AnonymousCache(ttl_s=60, max_entries=3, clock=clock)
    segments = [cache.segment(request(k=k), "control", k) for k in range(1, 11)]
    assert len(set(segments)) == 10
    for k, segment in enumerate(segments, start=1):
        cache.put(segment, pb.RecommendResponse(tracking_token=str(k)))
        assert len(cache) <= 3
        assert cache.get(segment).tracking_token == str(k), "the answer just put is served"


def test_an_index_version_change_clears_and_an_answer_without_versions_does_not():
    cache = AnonymousCache(ttl_s=60)
    segment = cache.segment(request(), "control", 5)
    cache.observe_versions([common.ArtifactVersion(kind="index", name="items", version="1")])
    cache.put(segment, pb.RecommendResponse(tracking_token="t"))
    cache.observe_versions([])  # a degraded answer that names no versions says nothing about them
    assert cache.get(segment) is not None
    cache.observe_versions([common.ArtifactVersion(kind="index", name="items", version="1")])
    assert cache.get(segment) is not None
    cache.observe_versions([common.ArtifactVersion(kind="index", name="items", version="2")])
    assert cache.get(segment) is None


async def test_a_guest_with_exclusions_is_neither_served_from_nor_stored_in_the_cache():
    service = servicer()
    first = await recommend(service, guest("a"))  # fills the cache
    assert service.deps.downstream.retrieval.calls == 1
    excluding = guest("b")
    excluding.exclusions.item_ids.extend(ids(first)[:2])
    answer = await recommend(service, excluding)
    assert service.deps.downstream.retrieval.calls == 2
    assert not set(ids(first)[:2]) & set(ids(answer)), "the guest's exclusions apply"
    await recommend(service, guest("c"))  # served the first guest's answer, not the excluding one's
    assert service.deps.downstream.retrieval.calls == 2


async def test_guests_in_different_regions_do_not_share_an_answer():
    service = servicer()
    await recommend(service, guest("a"))
    elsewhere = guest("b")
    elsewhere.context.region = "DE"
    await recommend(service, elsewhere)
    assert service.deps.downstream.retrieval.calls == 2
