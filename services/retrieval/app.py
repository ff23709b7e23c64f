"""Wires the retrieval service: an index server, or a router over index shards when shard targets are set."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.metrics import ArtifactMetrics
from services.core.server import Application
from services.retrieval.regions import UnlistedRegions
from services.retrieval.router import ShardRouter
from services.retrieval.servicer import RetrievalServicer
from services.retrieval.settings import RetrievalSettings
from services.retrieval.state import IndexHolder, IndexWatcher

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name
#: The metrics' ``service`` label of a shard router: its Retrieve (the gateway's call, fanned out) is not its
#: shards' (one slice each), and the dashboards' per-RPC panels must not mix them.
ROUTER_LABEL = "retrieval-router"


def build_application(
    settings: RetrievalSettings, registry: CollectorRegistry | None = None, holder: IndexHolder | None = None
) -> Application:
    if settings.shards:
        return build_router(
            settings,
            ArtifactMetrics(registry, ROUTER_LABEL) if registry is not None else None,
            UnlistedRegions(registry, ROUTER_LABEL),
        )
    metrics = ArtifactMetrics(registry, settings.service_label) if registry is not None else None
    holder = (
        holder
        if holder is not None
        else IndexHolder(
            exact_threshold=settings.exact_search_below,
            min_recall=settings.min_spot_check_recall,
            threads=settings.query_threads,
            metrics=metrics,
        )
    )
    servicer = RetrievalServicer(settings, holder, unlisted_regions=UnlistedRegions(registry, settings.service_label))
    watcher = IndexWatcher(holder, settings.index_path, settings.index_poll_s)

    async def load() -> None:
        await holder.load_latest(settings.index_path)
        watcher.start()

    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        load=load,
        close=watcher.stop,
    )


def build_router(
    settings: RetrievalSettings, metrics: ArtifactMetrics | None = None, unlisted_regions: UnlistedRegions | None = None
) -> Application:
    router = ShardRouter(settings, metrics=metrics, unlisted_regions=unlisted_regions)
    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RetrievalServiceServicer_to_server(router, server),
        load=router.connect,
        close=router.close,
        metrics_label=ROUTER_LABEL,
    )
