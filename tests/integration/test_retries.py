"""The channels' retry policy against a real server: UNAVAILABLE is retried, except when the server says that a
dependency every replica shares is down (a non-retryable ``DependencyUnavailable``, such as the ranking backend's
``BackendUnavailable``, answers with ``grpc-retry-pushback-ms: -1``)."""

from __future__ import annotations

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.core.channels import create_channel
from services.core.errors import DependencyUnavailable, NotReady, ServiceError
from services.core.interceptors import ErrorInterceptor
from services.ranking.backends.base import BackendUnavailable


class Failing(health_pb2_grpc.HealthServicer):
    """Fails every Check with ``error`` and counts the attempts that reached it."""

    def __init__(self, error: ServiceError):
        self.error, self.attempts = error, 0

    async def Check(self, request, context):  # noqa: N802
        self.attempts += 1
        raise self.error


@pytest.mark.parametrize(
    ("error", "attempts"),
    [
        (NotReady("model loading"), 3),
        (DependencyUnavailable("no cached items on this replica"), 3),
        (BackendUnavailable("inference server down"), 1),
        (DependencyUnavailable("no shard answered", retryable=False), 1),
    ],
)
async def test_unavailable_is_retried_unless_a_dependency_is_down(error, attempts):
    servicer = Failing(error)
    server = grpc.aio.server(interceptors=[ErrorInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = create_channel(f"127.0.0.1:{port}", ["grpc.health.v1.Health"], max_attempts=3)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert failed.value.code() == grpc.StatusCode.UNAVAILABLE
        assert servicer.attempts == attempts
    finally:
        await channel.close()
        await server.stop(0)
