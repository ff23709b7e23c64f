"""Wires the ranking service's parts into an :class:`~services.core.server.Application`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from aisle.ranking.v1 import ranking_service_pb2 as pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from services.core.server import Application
from services.ranking.backends.base import RankingBackend
from services.ranking.backends.onnxruntime import OnnxRuntimeBackend
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankingService"].full_name


def build_backend(settings: RankingSettings) -> RankingBackend:
    return OnnxRuntimeBackend(
        settings.model_repository, settings.model_name, settings.model_version, settings.intra_op_threads
    )


def build_application(
    settings: RankingSettings, registry: CollectorRegistry | None = None, backend: RankingBackend | None = None
) -> Application:
    backend = backend if backend is not None else build_backend(settings)
    servicer = RankingServicer(settings, backend)
    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RankingServiceServicer_to_server(servicer, server),
        load=backend.load,
        close=backend.close,
    )
