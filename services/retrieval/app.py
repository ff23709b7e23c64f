"""Wires the retrieval service's parts into an :class:`~services.core.server.Application`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.server import Application
from services.retrieval.servicer import IndexHolder, RetrievalServicer
from services.retrieval.settings import RetrievalSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def build_application(
    settings: RetrievalSettings, registry: CollectorRegistry | None = None, holder: IndexHolder | None = None
) -> Application:
    holder = holder if holder is not None else IndexHolder()
    servicer = RetrievalServicer(settings, holder)

    async def load() -> None:
        await holder.load_latest(settings.index_path)

    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RetrievalServiceServicer_to_server(servicer, server),
        load=load,
    )
