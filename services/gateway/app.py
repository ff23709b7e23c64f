"""Wires the gateway: channels to retrieval and ranking, the servicer, and start-up readiness."""

from __future__ import annotations

import asyncio
import logging

import grpc
from prometheus_client import CollectorRegistry

from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as ranking_grpc
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.channels import create_channel
from services.core.health import wait_until_serving
from services.core.server import Application
from services.gateway.servicer import GatewayMetrics, RecommendationServicer
from services.gateway.settings import GatewaySettings

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
        self._channels: list[grpc.aio.Channel] = []

    async def connect(self) -> None:
        settings = self.settings
        retrieval_channel = create_channel(
            settings.retrieval_target, [RETRIEVAL_SERVICE], max_message_bytes=settings.max_message_bytes
        )
        ranking_channel = create_channel(
            settings.ranking_target, [RANKING_SERVICE], max_message_bytes=settings.max_message_bytes
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


def build_application(
    settings: GatewaySettings, registry: CollectorRegistry | None = None, downstream: Downstream | None = None
) -> Application:
    registry = registry if registry is not None else CollectorRegistry()
    downstream = downstream if downstream is not None else Downstream(settings)
    servicer = RecommendationServicer(settings, downstream, GatewayMetrics(registry))
    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RecommendationServiceServicer_to_server(servicer, server),
        load=downstream.connect,
        close=downstream.close,
    )
