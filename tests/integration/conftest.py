"""Real in-process gRPC servers on port 0, built exactly as the services' ``__main__`` builds them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.server import ServiceHost
from services.gateway.app import build_application as build_gateway
from services.gateway.settings import GatewaySettings
from services.ranking.app import build_application as build_ranking
from services.ranking.settings import RankingSettings
from services.retrieval.app import build_application as build_retrieval
from services.retrieval.settings import RetrievalSettings

LOCAL = {"host": "127.0.0.1", "port": 0, "metrics_port": 0, "grace_period_s": 5}
#: The gateway's budget in tests that are not about it (the default, 120 ms, is production's).
FUNCTIONAL_BUDGET_MS = 5_000


def retrieval_settings(trained, **extra) -> RetrievalSettings:
    return RetrievalSettings(**LOCAL, index_path=trained.index_root, **extra)


def ranking_settings(trained, **extra) -> RankingSettings:
    return RankingSettings(**LOCAL, model_repository=trained.model_repository, **extra)


def gateway_settings(trained, retrieval_port: int, ranking_port: int, **extra) -> GatewaySettings:
    values = {
        "retrieval_target": f"127.0.0.1:{retrieval_port}",
        "ranking_target": f"127.0.0.1:{ranking_port}",
        "catalog_path": trained.root / "catalog.json",
        "event_log": "off",
        "anonymous_cache_ttl_s": 0,
        # Far above any stall of this process (a full garbage collection of the test run's heap took 80-175 ms),
        # which could turn an answer that arrived in time into a stage timeout: the tests of the budget set theirs.
        "total_budget_ms": FUNCTIONAL_BUDGET_MS,
        **extra,
    }
    return GatewaySettings(**LOCAL, **values)


@contextlib.asynccontextmanager
async def serving(host: ServiceHost) -> AsyncIterator[ServiceHost]:
    """Starts and loads ``host``; stops it (grace 0) on exit."""
    await host.start()
    try:
        await host.load()
        yield host
    finally:
        await host.stop(grace=0, drain=0)


@contextlib.asynccontextmanager
async def stack(
    trained, gateway_extra: dict | None = None, retrieval_extra: dict | None = None
) -> AsyncIterator[dict[str, ServiceHost]]:
    """Retrieval, ranking and gateway in this process, wired to each other."""
    retrieval = ServiceHost(
        settings := retrieval_settings(trained, **(retrieval_extra or {})), build_retrieval(settings)
    )
    ranking = ServiceHost(rsettings := ranking_settings(trained), build_ranking(rsettings))
    async with serving(retrieval), serving(ranking):
        gsettings = gateway_settings(trained, retrieval.port, ranking.port, **(gateway_extra or {}))
        async with serving(ServiceHost(gsettings, build_gateway(gsettings))) as gateway:
            yield {"retrieval": retrieval, "ranking": ranking, "gateway": gateway}


async def health_status(port: int, service: str = "") -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=2
        )
        return reply.status
