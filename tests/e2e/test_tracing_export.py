"""With OTEL_EXPORTER_OTLP_ENDPOINT set, every service exports its spans over OTLP/gRPC, one trace end to end.

The collector is a real gRPC server implementing OpenTelemetry's TraceService on 127.0.0.1.
"""

from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.demo.stack import LocalStack
from tests.integration.conftest import FUNCTIONAL_BUDGET_MS
from tests.integration.requests import home_request

pytestmark = pytest.mark.e2e


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[str, str, str]] = []  # (service.name, trace id, span name)

    def Export(self, request, context):  # noqa: N802
        with self.lock:
            for resource_spans in request.resource_spans:
                attributes = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        self.spans.append((attributes.get("service.name", ""), span.trace_id.hex(), span.name))
        return trace_service_pb2.ExportTraceServiceResponse()


def test_spans_reach_the_otlp_endpoint_with_one_trace_id(trained, tmp_path):
    collector = Collector()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        stack = LocalStack(
            tmp_path,
            {
                "retrieval": {"index_path": str(trained.index_root)},
                "ranking": {"model_repository": str(trained.model_repository)},
                "gateway": {
                    "catalog_path": str(trained.root / "catalog.json"),
                    "event_log": "off",
                    "total_budget_ms": str(FUNCTIONAL_BUDGET_MS),  # ranking's span needs ranking called in time
                },
            },
            env={
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
                "OTEL_EXPORTER_OTLP_INSECURE": "true",
                "OTEL_BSP_SCHEDULE_DELAY": "200",
            },
        )
        with stack:
            history = [trained.item_ids[row] for row in max(trained.sequences, key=len)[-5:]]
            with grpc.insecure_channel(stack.gateway_target) as channel:
                response = pb_grpc.RecommendationServiceStub(channel).Recommend(home_request(history), timeout=2)
        # Stopping the stack flushed every exporter.
    finally:
        server.stop(0)
    ours = {(service, name) for service, trace_id, name in collector.spans if trace_id == response.trace_id}
    assert ("aisle-gateway", "/aisle.recommendation.v1.RecommendationService/Recommend") in ours
    assert ("aisle-retrieval", "/aisle.retrieval.v1.RetrievalService/Retrieve") in ours
    assert ("aisle-ranking", "/aisle.ranking.v1.RankingService/Rank") in ours
