"""The anonymous answer cache: what makes two requests share an answer, what keeps a request out, how long an
answer lives (a fake clock) and how many the cache holds."""

from __future__ import annotations

import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.gateway.cache import AnonymousCache
from tests.unit.gateway.helpers import traced_growth
from tests.unit.gateway.servicers import guest, ids, recommend, servicer


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


def test_variants_ranked_by_different_models_do_not_empty_the_cache_as_they_take_turns():
    # A model A/B test: each variant's answers name its own model. Compared with the last answer of any variant,
    # every turn of the other variant looked like a version change and emptied the cache (0 hits in 400).
    cache = AnonymousCache(ttl_s=60)
    index = common.ArtifactVersion(kind="index", name="items", version="1")
    model = {"control": ("ranker", "3"), "treatment": ("sequence_ranker", "7")}
    for variant in ("control", "treatment", "control", "treatment"):
        name, version = model[variant]
        cache.observe_versions([index, common.ArtifactVersion(kind="model", name=name, version=version)], variant)
        segment = cache.segment(request(), variant, 5)
        if cache.get(segment) is None:
            cache.put(segment, pb.RecommendResponse(tracking_token=variant))
    assert len(cache) == 2
    # A real change (a new model version for one variant) still empties it.
    cache.observe_versions([index, common.ArtifactVersion(kind="model", name="ranker", version="4")], "control")
    assert len(cache) == 0


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


def test_an_answer_naming_only_some_of_the_versions_keeps_the_cache_and_a_changed_one_clears_it():
    """A degraded answer names only what answered (the index when ranking was late, the model when the fallback
    answered): that is no version change, and a slow ranking emptied the cache again and again."""
    cache = AnonymousCache(ttl_s=60)
    segment = cache.segment(request(), "control", 5)
    index, model = (
        common.ArtifactVersion(kind="index", name="items", version="1"),
        common.ArtifactVersion(kind="model", name="ranker", version="3"),
    )
    cache.observe_versions([index, model])
    cache.put(segment, pb.RecommendResponse(tracking_token="t"))
    cache.observe_versions([index])  # ranking was late
    cache.observe_versions([model])  # retrieval was down; the fallback answered
    cache.observe_versions([index, model])
    assert cache.get(segment) is not None
    cache.observe_versions([index, common.ArtifactVersion(kind="model", name="ranker", version="4")])
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


async def test_an_answer_from_the_cache_gives_its_own_stage_latencies_not_the_stored_ones():
    service = servicer()
    first = await recommend(service, guest("a"))
    assert [s.stage for s in first.stage_latencies][-1] == "total" and "scoring" in {
        s.stage for s in first.stage_latencies
    }
    again = await recommend(service, guest("b"))
    assert service.deps.downstream.retrieval.calls == 1  # from the cache
    assert [s.stage for s in again.stage_latencies] == ["cache", "total"]
    assert again.stage_latencies[1].duration_ms != first.stage_latencies[-1].duration_ms


async def test_guests_in_different_regions_do_not_share_an_answer():
    service = servicer()
    await recommend(service, guest("a"))
    elsewhere = guest("b")
    elsewhere.context.region = "DE"
    await recommend(service, elsewhere)
    assert service.deps.downstream.retrieval.calls == 2


def large_answer(tag: str, items: int = 200) -> pb.RecommendResponse:
    """An answer as large as a caller can make one: k=200 items with long ids and reasons."""
    response = pb.RecommendResponse(tracking_token=tag)
    for n in range(items):
        item = response.items.add(item_id=f"{tag}-{n}".ljust(256, "x"), score=1.0, position=n)
        item.reasons.add(text="Popular in GB")
    return response


def long_anchors(tag: str) -> list[str]:
    return [f"{tag}-{a}".ljust(256, "a") for a in range(50)]


def test_the_cache_holds_at_most_max_bytes_of_answers_and_keys():
    clock = FakeClock()
    cache = AnonymousCache(ttl_s=60, max_entries=10_000, max_bytes=1024 * 1024, clock=clock)
    for n in range(100):
        segment = cache.segment(request(anchor_item_ids=long_anchors(str(n)), k=200), "control", 200)
        cache.put(segment, large_answer(str(n)))
        assert cache.bytes <= 1024 * 1024
        assert cache.get(segment).tracking_token == str(n), "the answer just put is served"
    # Each entry counts its serialized answer (about 55 KB) and its key (50 anchors of 256 characters, about 15 KB).
    assert 10 <= len(cache) <= 16


def test_the_byte_count_covers_what_the_entries_hold():
    """The count is what the cache holds, not an estimate of it: answers are kept serialized (a parsed message
    takes several times its serialized size, out of the count's sight)."""
    cache = AnonymousCache(ttl_s=60, max_entries=10_000, max_bytes=64 * 1024 * 1024)
    puts = [
        (cache.segment(request(anchor_item_ids=long_anchors(str(n)), k=200), "control", 200), large_answer(str(n)))
        for n in range(50)
    ]
    with traced_growth() as measured:
        for segment, answer in puts:
            cache.put(segment, answer)
        del puts, segment, answer
    assert len(cache) == 50
    assert measured.held <= cache.bytes <= 1.5 * measured.held, (measured.held, cache.bytes)


def test_expired_answers_are_dropped_when_an_answer_is_put_not_only_ignored():
    clock = FakeClock()
    cache = AnonymousCache(ttl_s=60, clock=clock)
    for k in range(1, 6):
        cache.put(cache.segment(request(k=k), "control", k), pb.RecommendResponse(tracking_token=str(k)))
    clock.now += 61
    fresh = cache.segment(request(k=6), "control", 6)
    cache.put(fresh, pb.RecommendResponse(tracking_token="6"))
    assert len(cache) == 1 and cache.get(fresh).tracking_token == "6"


def test_the_least_recently_used_answer_goes_first():
    clock = FakeClock()
    cache = AnonymousCache(ttl_s=60, max_entries=3, clock=clock)
    a, b, c, d = (cache.segment(request(k=k), "control", k) for k in range(1, 5))
    for tag, segment in zip("abc", (a, b, c), strict=True):
        cache.put(segment, pb.RecommendResponse(tracking_token=tag))
    assert cache.get(a).tracking_token == "a"  # a is now the most recently used
    cache.put(d, pb.RecommendResponse(tracking_token="d"))
    assert cache.get(b) is None, "the least recently used answer went"
    assert [cache.get(s).tracking_token for s in (a, c, d)] == ["a", "c", "d"]


def test_an_answer_larger_than_the_whole_budget_is_not_cached_and_the_others_stay():
    cache = AnonymousCache(ttl_s=60, max_bytes=16 * 1024)
    small = cache.segment(request(), "control", 5)
    cache.put(small, pb.RecommendResponse(tracking_token="small"))
    huge = cache.segment(request(k=200), "control", 200)
    cache.put(huge, large_answer("huge"))
    assert cache.get(huge) is None and cache.get(small).tracking_token == "small"


def test_a_version_change_empties_the_byte_count_too():
    cache = AnonymousCache(ttl_s=60)
    cache.observe_versions([common.ArtifactVersion(kind="index", name="items", version="1")])
    cache.put(cache.segment(request(), "control", 5), large_answer("t"))
    assert cache.bytes > 0
    cache.observe_versions([common.ArtifactVersion(kind="index", name="items", version="2")])
    assert len(cache) == 0 and cache.bytes == 0
