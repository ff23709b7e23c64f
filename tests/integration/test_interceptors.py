"""The error and metrics interceptors against real servers on 127.0.0.1: a downstream failure the servicer did
not handle, calls that end by their deadline or their caller's cancelling, and what a refused call leaves in
memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import weakref

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from services.core.channels import create_channel
from services.core.errors import InvalidArgument, ServiceError, details_of
from services.core.interceptors import ErrorInterceptor
from services.core.metrics import MetricsInterceptor, RpcMetrics
from services.core.rpc_tracing import TracingInterceptor
from services.ranking.backends.base import BackendUnavailable
from tests.support.ports import dead_port


class Failing(health_pb2_grpc.HealthServicer):
    def __init__(self, error: ServiceError):
        self.error = error

    async def Check(self, request, context):  # noqa: N802
        raise self.error


class Forwarding(health_pb2_grpc.HealthServicer):
    """Calls the downstream server and lets its failure propagate, as a servicer with no fallback does."""

    def __init__(self, downstream: health_pb2_grpc.HealthStub):
        self.downstream = downstream

    async def Check(self, request, context):  # noqa: N802
        return await self.downstream.Check(request, timeout=5)


class Slow(health_pb2_grpc.HealthServicer):
    def __init__(self) -> None:
        self.entered = asyncio.Event()  # a call is in the handler

    async def Check(self, request, context):  # noqa: N802
        self.entered.set()
        await asyncio.sleep(5)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


class Busy(health_pb2_grpc.HealthServicer):
    """Works without awaiting (as retrieval's search does), so nothing cancels it when its deadline passes."""

    async def Check(self, request, context):  # noqa: N802
        time.sleep(0.3)  # noqa: ASYNC251 - the blocking handler under test
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


async def _serve(servicer, *interceptors: grpc.aio.ServerInterceptor) -> tuple[grpc.aio.Server, str]:
    server = grpc.aio.server(interceptors=[*interceptors, ErrorInterceptor()])
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _check_through(front_servicer, open_channel=grpc.aio.insecure_channel, timeout: float = 5):
    """Calls Check on a server running ``front_servicer`` (over a channel from ``open_channel``) and returns the
    error the caller got; the server and the channel are closed after."""
    front, front_target = await _serve(front_servicer)
    caller = open_channel(front_target)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health_pb2_grpc.HealthStub(caller).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
    finally:
        await caller.close()
        await front.stop(0)
    return failed.value


@pytest.mark.parametrize(
    ("error", "said"),
    [
        (BackendUnavailable("inference server 10.0.0.7:8001 down"), "UNAVAILABLE (INFERENCE_SERVER_UNAVAILABLE)"),
        (ServiceError("no such model on triton-0.internal"), "INTERNAL (INTERNAL)"),
    ],
)
async def test_an_unhandled_downstream_failure_passes_on_its_code_and_reason_never_its_message(error, said, caplog):
    downstream, target = await _serve(Failing(error))
    channel = grpc.aio.insecure_channel(target)
    try:
        with caplog.at_level(logging.WARNING):
            failed = await _check_through(Forwarding(health_pb2_grpc.HealthStub(channel)))
    finally:
        await channel.close()
        await downstream.stop(0)
    assert failed.code() == error.code
    assert failed.details() == f"downstream call failed: {said}"
    info, _ = details_of(failed)
    assert info is not None and info.reason == "DEPENDENCY_FAILED"
    # The downstream message (which may name a host) is in the front's log, not in its answer.
    assert any(error.message in record.getMessage() and said in record.getMessage() for record in caplog.records)


async def test_a_downstream_without_aisle_details_is_named_by_its_code_alone():
    # Nothing listens on the downstream's port: gRPC answers UNAVAILABLE itself, with no ErrorInfo to name. The port
    # stays bound (not listening) meanwhile: a port freed by a stopped server could be given to the front itself,
    # which would then call itself until the deadline.
    with dead_port() as port:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        try:
            failed = await _check_through(Forwarding(health_pb2_grpc.HealthStub(channel)))
        finally:
            await channel.close()
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert failed.details() == "downstream call failed: UNAVAILABLE"
    info, _ = details_of(failed)
    assert info is not None and info.reason == "DEPENDENCY_FAILED"


class Counted(health_pb2_grpc.HealthServicer):
    """Counts the calls that reach it and hands each to ``inner``."""

    def __init__(self, inner: health_pb2_grpc.HealthServicer):
        self.inner, self.calls = inner, 0

    async def Check(self, request, context):  # noqa: N802
        self.calls += 1
        return await self.inner.Check(request, context)


async def test_a_downstream_failure_is_retried_by_the_channel_that_called_it_not_again_one_hop_up():
    """The front's channel retries its UNAVAILABLE downstream (3 attempts); the front's answer must tell its own
    caller's channel not to retry, or each caller attempt makes 3 more: 9 on the failing service per deadline."""
    service = [health_pb2.DESCRIPTOR.services_by_name["Health"].full_name]
    leaf = Counted(Failing(ServiceError("the session store is down")))
    leaf.inner.error.code = grpc.StatusCode.UNAVAILABLE
    downstream, target = await _serve(leaf)
    channel = create_channel(target, service)
    middle = Counted(Forwarding(health_pb2_grpc.HealthStub(channel)))
    try:
        failed = await _check_through(middle, lambda front: create_channel(front, service), timeout=10)
    finally:
        await channel.close()
        await downstream.stop(0)
    assert failed.code() == grpc.StatusCode.UNAVAILABLE
    assert (middle.calls, leaf.calls) == (1, 3)


def _handled(registry: CollectorRegistry) -> dict[str, float]:
    """aisle_grpc_server_handled_total by code."""
    return {
        sample.labels["code"]: sample.value
        for metric in registry.collect()
        if metric.name == "aisle_grpc_server_handled"
        for sample in metric.samples
        if sample.name == "aisle_grpc_server_handled_total"
    }


async def _counted(registry: CollectorRegistry) -> dict[str, float]:
    """The counts once the server has recorded the call (a cancelled handler ends after the caller gave up)."""
    for _ in range(200):
        counts = _handled(registry)
        if counts:
            return counts
        await asyncio.sleep(0.01)
    return {}


@pytest.mark.parametrize(
    ("servicer", "timeout"),
    [
        (Slow, 0.5),  # cancelled by gRPC when its deadline passes
        # An overloaded retrieval (a handler that never awaits, on a busy event loop) answered past every deadline:
        # its callers saw DEADLINE_EXCEEDED while its metrics said OK.
        (Busy, 0.1),
    ],
    ids=["cancelled-at-its-deadline", "answered-after-it"],
)
async def test_a_call_past_its_deadline_is_counted_as_deadline_exceeded(servicer, timeout):
    registry = CollectorRegistry()
    server, target = await _serve(servicer(), MetricsInterceptor(RpcMetrics(registry, "test")))
    channel = grpc.aio.insecure_channel(target)
    try:
        await asyncio.wait_for(channel.channel_ready(), 10)  # the deadline is the handler's, not the connection's
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        counts = await _counted(registry)
    finally:
        await channel.close()
        await server.stop(0)
    assert failed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert counts == {"DEADLINE_EXCEEDED": 1.0}


async def test_a_call_its_caller_cancels_is_counted_as_cancelled():
    registry = CollectorRegistry()
    server, target = await _serve(slow := Slow(), MetricsInterceptor(RpcMetrics(registry, "test")))
    channel = grpc.aio.insecure_channel(target)
    try:
        call = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=30)
        await asyncio.wait_for(slow.entered.wait(), 10)  # the server is in the handler
        call.cancel()
        counts = await _counted(registry)
    finally:
        await channel.close()
        await server.stop(0)
    assert counts == {"CANCELLED": 1.0}


async def test_a_request_that_is_not_a_valid_message_is_invalid_argument_naming_its_type():
    """A string field that is not UTF-8 (a C++ client or hand-built bytes send it): gRPC answered the failed
    decoding as UNKNOWN with a Python class name and no details."""
    server, target = await _serve(Slow())
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            call = channel.unary_unary("/grpc.health.v1.Health/Check")  # bytes as they are
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"\x0a\x02u\xff", timeout=5)  # field 1 (service), 2 bytes, not UTF-8
    finally:
        await server.stop(0)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    info, violations = details_of(refused.value)
    assert info is not None and info.reason == "INVALID_ARGUMENT"
    assert "grpc.health.v1.HealthCheckRequest" in violations["request"]


class Payload:
    """A request as the servicer gets it: a plain object, so a test can hold a weak reference to it."""

    def __init__(self, data: bytes):
        self.data = data


@contextlib.contextmanager
def no_cyclic_collection():
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


async def test_a_refused_request_is_freed_when_its_call_ends_not_when_the_cyclic_collector_runs():
    """gRPC keeps an aborted call's error in a reference cycle with the call's context; with the interceptors that
    every Aisle server runs, nothing in that cycle may still hold the request (the gateway kept tens of MiB of
    refused 1-4 MB requests between collections). Collection is off here, so only reference counting frees it.
    (An unexpected error's traceback is logged, and pytest's log capture keeps the record: that case is left out.)"""
    received: list[weakref.ref] = []

    def deserialize(data: bytes) -> Payload:
        payload = Payload(data)
        received.append(weakref.ref(payload))
        return payload

    async def refuse(request: Payload, context) -> bytes:
        assert request.data
        raise InvalidArgument({"payload": "too large"})

    handler = grpc.method_handlers_generic_handler(
        "test.Refusing",
        {"Call": grpc.unary_unary_rpc_method_handler(refuse, request_deserializer=deserialize)},
    )
    metrics = RpcMetrics(CollectorRegistry(), "test")
    server = grpc.aio.server(interceptors=[TracingInterceptor(), MetricsInterceptor(metrics), ErrorInterceptor()])
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    call = channel.unary_unary("/test.Refusing/Call", request_serializer=None, response_deserializer=None)
    try:
        with no_cyclic_collection():
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await call(b"x" * 1_000_000, timeout=5)
            assert failed.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(received) == 1
            for _ in range(100):  # the server finishes the call just after the caller has its answer
                if received[0]() is None:
                    break
                await asyncio.sleep(0.01)
            assert received[0]() is None, "the refused request outlived its call: something in a cycle holds it"
    finally:
        await channel.close()
        await server.stop(0)
