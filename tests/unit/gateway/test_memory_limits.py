"""What callers can make the gateway keep is bounded: the fallback cache's regions, and the settings that size the
anonymous cache and the in-memory sessions reach them and fit the pod's memory limit."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.gateway import app as gateway_app
from services.gateway.components.sources import PopularCache
from services.gateway.events import NullEventSink
from services.gateway.sessions import EXPOSURE_BYTES, SESSION_BYTES, Batch, InMemorySessionStore
from services.gateway.settings import GatewaySettings
from tests.unit.gateway.servicers import Context, servicer

ROOT = Path(__file__).resolve().parents[3]
MIB = 1024 * 1024


def test_the_popular_cache_keeps_at_most_max_regions_besides_the_region_less_and_configured_ones():
    now = [0.0]
    cache = PopularCache(ttl_s=3600, max_regions=3, keep=["GB", "DE"], clock=lambda: now[0])
    cache.store("", ["g"])
    cache.store("GB", ["gb"])
    cache.store("DE", ["de"])
    for n in range(10):
        now[0] += 1
        cache.store(f"R{n}", [f"r{n}"])
    assert len(cache) == 6
    assert [cache.get(region) for region in ("", "GB", "DE")] == [["g"], ["gb"], ["de"]], "never pushed out"
    assert [cache.get(f"R{n}") for n in range(10)] == [[]] * 7 + [["r7"], ["r8"], ["r9"]]


def test_the_popular_cache_pushes_out_the_least_recently_stored_region():
    now = [0.0]
    cache = PopularCache(ttl_s=3600, max_regions=3, clock=lambda: now[0])
    for region in ("FR", "IT", "ES", "FR"):  # FR stored again: now the most recent
        now[0] += 1
        cache.store(region, [region.lower()])
    cache.store("NL", ["nl"])
    assert cache.get("IT") == [], "the least recently stored went"
    assert [cache.get(region) for region in ("FR", "ES", "NL")] == [["fr"], ["es"], ["nl"]]


def test_the_popular_cache_drops_expired_lists_when_one_is_stored():
    now = [0.0]
    cache = PopularCache(ttl_s=60, max_regions=100, keep=["GB"], clock=lambda: now[0])
    for region in ("", "GB", "FR", "IT"):
        cache.store(region, [region])
    now[0] = 30.0
    cache.store("ES", ["es"])
    now[0] = 61.0  # all but ES expired: they serve nothing any more, so they are not kept either
    cache.store("NL", ["nl"])
    assert len(cache) == 2 and cache.get("ES") == ["es"] and cache.get("NL") == ["nl"]


async def test_requests_naming_fresh_regions_leave_at_most_max_regions_lists():
    """The reviewer's reproduction: every distinct 16-character region passes validation, and retrieval answers
    any region when its index has no regional data (as the fake retrieval here does)."""
    service = servicer(cache_ttl_s=0)
    cache = service.deps.popular_cache
    for n in range(cache.max_regions + 50):
        request = pb.RecommendRequest(
            subject=common.Subject(session_id=f"s{n}"),
            surface=common.SURFACE_HOME,
            k=5,
            context=common.RequestContext(region=f"R{n:015d}"),
        )
        await service.Recommend(request, Context())
    await asyncio.gather(*service._background)
    assert len(cache) == cache.max_regions
    assert cache.get(f"R{cache.max_regions + 49:015d}"), "the latest region's list is kept"


def test_the_memory_settings_reach_the_caches_and_the_session_store(monkeypatch, tmp_path):
    built = {}
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({"i1": {"title": "Mug", "category": "c1", "brand": "b1"}}))

    class Capture:
        def __init__(self, settings, policies, catalog, deps, metrics, cache):
            built.update(deps=deps, cache=cache)

    monkeypatch.setattr(gateway_app, "RecommendationServicer", Capture)
    settings = GatewaySettings(
        catalog_path=catalog,
        metrics_port=None,
        event_log="off",
        anonymous_cache_max_entries=123,
        anonymous_cache_max_bytes=5 * MIB,
        session_max_sessions=456,
        session_max_bytes=7 * MIB,
        session_max_exposed_items=789,
        event_batch_ttl_s=321,
        fallback_max_regions=9,
        fallback_regions="GB, DE",
    )
    gateway_app.build_application(settings, CollectorRegistry(), events=NullEventSink())
    cache, deps = built["cache"], built["deps"]
    assert (cache.max_entries, cache.max_bytes) == (123, 5 * MIB)
    assert (deps.sessions.max_sessions, deps.sessions.max_bytes, deps.sessions.max_exposed_items) == (456, 7 * MIB, 789)
    assert deps.sessions.batches.ttl_s == 321
    assert deps.popular_cache.max_regions == 9 and deps.popular_cache.keep == {"", "GB", "DE"}
    store = gateway_app.build_session_store(settings)
    assert isinstance(store, InMemorySessionStore) and (store.max_sessions, store.max_bytes) == (456, 7 * MIB)


def gateway_memory_limit() -> int:
    for document in yaml.safe_load_all((ROOT / "k8s/base/gateway.yaml").read_text()):
        if document and document.get("kind") == "Deployment":
            containers = document["spec"]["template"]["spec"]["containers"]
            (gateway,) = [c for c in containers if c["name"] == "gateway"]
            limit = gateway["resources"]["limits"]["memory"]
            assert limit.endswith("Mi"), limit
            return int(limit[:-2]) * MIB
    raise AssertionError("no gateway Deployment in k8s/base/gateway.yaml")


def k8s_base_settings() -> dict[str, str]:
    """The gateway ConfigMap's variables (k8s/base/config/gateway.env) as settings names."""
    settings = {}
    for line in (ROOT / "k8s/base/config/gateway.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            settings[name.removeprefix("AISLE_GATEWAY_").lower()] = value
    return settings


@pytest.mark.parametrize("source", ["defaults", "k8s base"])
def test_what_callers_can_fill_leaves_half_the_pods_memory_to_the_rest(source):
    """The in-memory sessions, the anonymous cache and the fallback cache are what callers fill; the process itself
    (about 100 MiB measured, docs/reliability.md), the catalog and in-flight messages need the rest."""
    bounds = (
        "session_max_bytes",
        "anonymous_cache_max_bytes",
        "fallback_max_regions",
        "fallback_regions",
        "max_remembered_batches",
    )
    values = {k: v for k, v in k8s_base_settings().items() if k in bounds} if source == "k8s base" else {}
    settings = GatewaySettings(**values)
    # A region's list: the shipped policies' popular items (popularity 50 + cold_start 50) of ids up to 256
    # characters, about 300 bytes each.
    fallback = (settings.fallback_max_regions + 1 + len(settings.fallback_region_list)) * 100 * 300
    # Named TrackEvents batches: remembered for the bandit, and by the in-memory session store (measured below).
    batches = 2 * settings.max_remembered_batches * BATCH_BYTES
    filled = settings.session_max_bytes + settings.anonymous_cache_max_bytes + fallback + batches
    assert filled <= gateway_memory_limit() / 2, f"{filled / MIB:.0f} MiB"


#: What one remembered batch id costs, at most (measured below).
BATCH_BYTES = 300


def test_a_remembered_batch_id_costs_what_the_memory_budget_counts():
    import tracemalloc

    from services.gateway.sessions import RecentBatches, batch_digest

    batches = RecentBatches(max_ids=20_000)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(20_000):
        batches.see(f"batch-{i:032d}", batch_digest(str(i).encode()))
    grown = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(batches) == 20_000 and 150 < grown / 20_000 <= BATCH_BYTES


async def test_a_session_counts_exposures_for_at_most_max_exposed_items_forgetting_the_least_shown():
    store = InMemorySessionStore(max_exposed_items=3)
    await store.add_exposures("s", ["a", "a", "a", "b", "b", "c"])
    await store.add_exposures("s", ["d"])  # c and d were shown once each: c, shown first, is forgotten
    assert await store.exposures("s") == {"a": 3, "b": 2, "d": 1}
    assert store.bytes == SESSION_BYTES + sum(sys.getsizeof(item) + EXPOSURE_BYTES for item in "abd")


async def test_the_batch_ids_remembered_are_bounded_in_number_and_time():
    now = [0.0]
    store = InMemorySessionStore(clock=lambda: now[0], batch_ttl_s=60, max_batches=3)
    event = {"k": [common.Interaction(item_id="i1")]}
    same = b"digest"
    assert [await store.append_all(event, f"b{i}", same) for i in range(3)] == [Batch.STORED] * 3
    assert await store.append_all(event, "b1", same) is Batch.REPEAT  # remembered: not stored again
    assert await store.append_all(event, "b1", b"other") is Batch.CONFLICT  # the id given to other events
    assert await store.append_all(event, "b3", same) is Batch.STORED  # a fourth: the oldest (b0) is forgotten
    assert await store.append_all(event, "b0", same) is Batch.STORED and len(store.batches) == 3
    now[0] = 61.0  # past the lifetime: every id is forgotten, b3 is stored again
    assert await store.append_all(event, "b3", same) is Batch.STORED and len(store.batches) == 1
    assert len(await store.history("k")) == 6
    assert await store.append_all(event) is Batch.STORED  # no id: always stored
    assert await store.append_all(event) is Batch.STORED


async def test_one_session_showing_the_whole_catalog_does_not_push_out_the_others():
    """A scraper with consent asking for k=200 again and again: its exposure counts stay bounded, so the shoppers'
    sessions stay (without the bound its counts alone filled ``max_bytes`` and evicted everyone)."""
    store = InMemorySessionStore(max_bytes=2 * MIB, max_exposed_items=2000)
    for shopper in range(100):
        await store.append(f"shopper-{shopper}", [common.Interaction(item_id=f"i{shopper}")])
    for page in range(500):  # 100,000 distinct ids of 40 characters
        await store.add_exposures("scraper", [f"{page:05d}-{n:03d}".ljust(40, "x") for n in range(200)])
    assert len(await store.exposures("scraper")) == 2000
    assert all([await store.history(f"shopper-{shopper}") for shopper in range(100)])


async def test_the_configured_regions_lists_are_warmed_again_before_they_expire():
    """A quiet region's list is refreshed by no answer (only calls without anchors, exclusions or history refresh
    it): without warming again, it would expire an hour after start-up and an outage then would find none."""

    class Retrieval:
        def __init__(self):
            self.regions: list[str] = []

        async def Retrieve(self, request, timeout=None):  # noqa: N802
            self.regions.append(request.context.region)
            item = retrieval_pb.Candidate(item_id=f"top-{request.context.region}")
            return retrieval_pb.RetrieveResponse(candidates=[item])

    class Downstream:
        retrieval = Retrieval()

    now = [0.0]
    cache = PopularCache(ttl_s=100, keep=["GB"], clock=lambda: now[0])
    await gateway_app.warm_popular_cache(Downstream, cache, ["GB"])  # start-up, at 0 s
    warmer = asyncio.create_task(gateway_app.keep_popular_cache_warm(Downstream, cache, ["GB"], every_s=0.01))
    try:
        now[0] = 90.0
        asked = len(Downstream.retrieval.regions)
        for _ in range(500):  # until a round of warming has run at 90 s
            if len(Downstream.retrieval.regions) >= asked + 2:
                break
            await asyncio.sleep(0.01)
        now[0] = 150.0  # past the TTL since start-up, within it since the round
        assert cache.get("GB") == ["top-GB"] and cache.get("") == ["top-"]
    finally:
        warmer.cancel()
    now[0] = 300.0
    assert cache.get("GB") == [], "a list nobody warms again expires"


async def test_start_up_asks_for_every_regions_list_at_once():
    """One at a time, a slow retrieval's 2 s deadline per region would hold start-up past its probe."""

    class Retrieval:
        in_flight = most = 0

        async def Retrieve(self, request, timeout=None):  # noqa: N802
            Retrieval.in_flight += 1
            Retrieval.most = max(Retrieval.most, Retrieval.in_flight)
            await asyncio.sleep(0.01)
            Retrieval.in_flight -= 1
            return retrieval_pb.RetrieveResponse(candidates=[retrieval_pb.Candidate(item_id="top")])

    class Downstream:
        retrieval = Retrieval()

    regions = [f"R{n}" for n in range(10)]
    cache = PopularCache(keep=regions)
    await gateway_app.warm_popular_cache(Downstream, cache, [*regions, "R0"])
    assert Retrieval.most == 11 and all(cache.get(region) == ["top"] for region in ["", *regions])


async def test_a_partial_or_empty_answer_does_not_replace_a_regions_fallback_list():
    """A warming round during a shard outage (retrieval flags the dropped shard) or with nothing to answer keeps
    the list the region had."""
    replies = iter(
        [
            retrieval_pb.RetrieveResponse(candidates=[retrieval_pb.Candidate(item_id=i) for i in ("a1", "b1", "a2")]),
            retrieval_pb.RetrieveResponse(
                candidates=[retrieval_pb.Candidate(item_id="a1")],
                degradations=[
                    common.Degradation(reason=common.DEGRADATION_REASON_SOURCE_DROPPED, stage="shard b:50061")
                ],
            ),
            retrieval_pb.RetrieveResponse(),
        ]
    )

    class Retrieval:
        async def Retrieve(self, request, timeout=None):  # noqa: N802
            return next(replies)

    class Downstream:
        retrieval = Retrieval()

    cache = PopularCache(keep=["GB"])
    for _ in range(3):
        await gateway_app.warm_popular_cache(Downstream, cache, [])
        assert cache.get("") == ["a1", "b1", "a2"]
