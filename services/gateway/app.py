"""Wires the gateway: channels to retrieval and ranking, the servicer, and start-up readiness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import grpc
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as ranking_grpc
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.channels import RenewingChannel, create_renewing_channel
from services.core.errors import describe
from services.core.health import wait_until_serving
from services.core.server import Application
from services.gateway.cache import AnonymousCache
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import Dependencies
from services.gateway.components.selectors import FeedbackStats
from services.gateway.components.sources import PopularCache
from services.gateway.events import EventSink, JsonlEventSink, NullEventSink
from services.gateway.pipeline import PipelineMetrics
from services.gateway.policies import load_policies
from services.gateway.servicer import RecommendationServicer
from services.gateway.sessions import InMemorySessionStore, SessionStore
from services.gateway.settings import MIN_SALT_LENGTH, GatewaySettings, salt_problem

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendationService"].full_name
RETRIEVAL_SERVICE = retrieval_pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name
RANKING_SERVICE = ranking_pb.DESCRIPTOR.services_by_name["RankingService"].full_name


class Downstream:
    """The gateway's channels and stubs to retrieval and ranking, made inside the server's event loop."""

    def __init__(self, settings: GatewaySettings):
        self.settings = settings
        self.retrieval: retrieval_grpc.RetrievalServiceStub | None = None
        self.ranking: ranking_grpc.RankingServiceStub | None = None
        self._channels: list[RenewingChannel] = []

    async def connect(self) -> None:
        settings = self.settings
        retrieval_channel = create_renewing_channel(
            settings.retrieval_target, [RETRIEVAL_SERVICE], max_message_bytes=settings.downstream_max_message_bytes
        )
        ranking_channel = create_renewing_channel(
            settings.ranking_target, [RANKING_SERVICE], max_message_bytes=settings.downstream_max_message_bytes
        )
        self._channels = [retrieval_channel, ranking_channel]
        self.retrieval = retrieval_grpc.RetrievalServiceStub(retrieval_channel)
        self.ranking = ranking_grpc.RankingServiceStub(ranking_channel)
        # Without retrieval there is nothing to answer with: wait for it. Without ranking the gateway can still
        # answer (degraded), so ranking gets a bounded wait.
        await wait_until_serving(retrieval_channel, RETRIEVAL_SERVICE, settings.dependency_wait_log_s)
        try:
            await asyncio.wait_for(
                wait_until_serving(ranking_channel, RANKING_SERVICE, settings.dependency_wait_log_s),
                settings.ranking_wait_s,
            )
        except TimeoutError:
            log.warning("ranking at %s is not SERVING yet; answers degrade until it is", settings.ranking_target)

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()


#: How long a stop waits for the side effects of answers already sent (a few Redis or file writes each), within the
#: pod's termination grace period (30 s) after the drain delay and the server's own grace.
SIDE_EFFECTS_WAIT_S = 5.0


def build_application(
    settings: GatewaySettings,
    registry: CollectorRegistry | None = None,
    downstream: Downstream | None = None,
    sessions: SessionStore | None = None,
    events: EventSink | None = None,
) -> Application:
    """Loads the catalog and the policies (refusing bad ones with a message saying where) and wires the servicer."""
    registry = registry if registry is not None else CollectorRegistry()
    if problem := salt_problem(settings.subject_key_salt.get_secret_value()):
        log.warning(
            "subject keys use %s: set AISLE_GATEWAY_SUBJECT_KEY_SALT from a secret in production (%d characters or "
            "more), or a guessable shopper id can be found from its key",
            problem,
            MIN_SALT_LENGTH,
        )
    downstream = downstream if downstream is not None else Downstream(settings)
    catalog = ItemCatalog.load(settings.catalog_path)
    sessions = sessions if sessions is not None else build_session_store(settings)
    events = events if events is not None else build_event_sink(settings)
    deps = Dependencies(
        downstream=downstream,
        sessions=sessions,
        feedback=FeedbackStats(),
        popular_cache=PopularCache(max_regions=settings.fallback_max_regions, keep=settings.fallback_region_list),
        events=events,
        columnar=settings.columnar_answers,
    )
    policies = load_policies(settings.policy_file, catalog, deps, settings.ranking_max_candidates)
    catalog.flagged("new")  # exploration reads it on every request: made now, not on the first request
    log.info(
        "policies %s: %s; catalog %s with %d items and features %s",
        policies.version,
        ", ".join(sorted(policies.pipelines)),
        settings.catalog_path,
        len(catalog.items),
        sorted(catalog.features),
    )
    servicer = RecommendationServicer(
        settings,
        policies,
        catalog,
        deps,
        PipelineMetrics(registry, settings.trace_components),
        AnonymousCache(
            settings.anonymous_cache_ttl_s,
            max_entries=settings.anonymous_cache_max_entries,
            max_bytes=settings.anonymous_cache_max_bytes,
        ),
    )

    warmer: list[asyncio.Task] = []

    async def load() -> None:
        await events.start()
        await downstream.connect()
        await warm_popular_cache(downstream, deps.popular_cache, settings.fallback_region_list)
        warmer.append(
            asyncio.get_running_loop().create_task(
                keep_popular_cache_warm(downstream, deps.popular_cache, settings.fallback_region_list),
                name="popular-cache-warmer",
            )
        )

    async def close() -> None:
        for task in warmer:
            task.cancel()
        await asyncio.gather(*warmer, return_exceptions=True)
        await servicer.drain(timeout_s=SIDE_EFFECTS_WAIT_S)  # the last answers' exposures, before their stores
        await downstream.close()
        await events.close()
        await sessions.close()

    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RecommendationServiceServicer_to_server(servicer, server),
        load=load,
        close=close,
    )


def build_session_store(settings: GatewaySettings) -> SessionStore:
    if settings.session_store == "redis":
        from services.gateway.redis_store import RedisSessionStore

        return RedisSessionStore(
            settings.redis_url,
            settings.session_ttl_s,
            settings.session_max_events,
            max_exposed_items=settings.session_max_exposed_items,
            batch_ttl_s=settings.event_batch_ttl_s,
        )
    return InMemorySessionStore(
        settings.session_ttl_s,
        settings.session_max_events,
        max_sessions=settings.session_max_sessions,
        max_bytes=settings.session_max_bytes,
        max_exposed_items=settings.session_max_exposed_items,
        batch_ttl_s=settings.event_batch_ttl_s,
        max_batches=settings.max_remembered_batches,
    )


def build_event_sink(settings: GatewaySettings) -> EventSink:
    if settings.event_log == "jsonl":
        return JsonlEventSink(
            settings.event_log_path,
            settings.event_log_max_pending,
            max_pending_bytes=settings.event_log_max_pending_bytes,
        )
    if settings.event_log == "redis":
        from services.gateway.redis_store import RedisStreamEventSink

        return RedisStreamEventSink(settings.redis_url, settings.event_log_max_pending)
    return NullEventSink()


async def keep_popular_cache_warm(
    downstream: Downstream, cache: PopularCache, regions: Sequence[str] = (), every_s: float | None = None
) -> None:
    """Warms the region-less list and ``regions`` again every half of the cache's TTL (``every_s``), so they never
    expire: answers refresh a region's list only when it is asked without anchors, exclusions or history, and a
    quiet region's list would otherwise be gone an hour after start-up, when an outage would need it."""
    every_s = cache.ttl_s / 2 if every_s is None else every_s
    while True:
        await asyncio.sleep(every_s)
        try:
            await warm_popular_cache(downstream, cache, regions)
        except Exception as error:  # noqa: BLE001 - one failed round must not end the warming for good
            log.warning("could not warm the popular-items cache again: %s", error)


async def warm_popular_cache(
    downstream: Downstream, cache: PopularCache, regions: Sequence[str] = (), k: int = 100
) -> None:
    """Fills the fallback cache (the region-less list and each of ``regions``, asked together: one at a time, a
    slow retrieval's 2 s per region would hold start-up past its probe), so even the first requests after a
    retrieval outage have an answer. Later successful popularity answers keep it fresh per region."""

    async def one(region: str) -> None:
        try:
            reply = await downstream.retrieval.Retrieve(
                retrieval_pb.RetrieveRequest(
                    k=k,
                    sources=[common_pb2.CANDIDATE_SOURCE_POPULARITY],
                    context=common_pb2.RequestContext(region=region),
                ),
                timeout=2.0,
            )
        except grpc.aio.AioRpcError as error:
            where = f" for region {region!r}" if region else ""
            log.warning("could not warm the popular-items cache%s: %s", where, describe(error))
            return
        if reply.degradations or not reply.candidates:  # partial (a shard dropped) or empty: not the region's list
            log.warning("not warming the popular-items cache for region %r from a partial or empty answer", region)
            return
        cache.store(region, [c.item_id for c in reply.candidates], ranked_in=reply.popularity_region)

    await asyncio.gather(*(one(region) for region in dict.fromkeys(("", *regions))))
