"""Aisle's gRPC spans: a server span per call continuing the caller's trace, a client span per call made."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

from services.core import rpc_tracing
from services.core.channels import create_channel
from services.core.errors import InvalidArgument
from services.core.interceptors import ErrorInterceptor
from services.core.rpc_tracing import TracedChannel, TracingInterceptor

METHOD = "/aisle.test.v1.EchoService/Echo"
CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"  # W3C example: trace id, parent span id


def _identity(data: bytes) -> bytes:
    return data


@contextlib.asynccontextmanager
async def echo_server():
    """An echo server with the tracing and error interceptors, as ServiceHost orders them; b"bad" is refused."""

    async def echo(request: bytes, context) -> bytes:
        if request == b"bad":
            raise InvalidArgument({"request": "must not be bad"})
        if request == b"broken":
            raise RuntimeError("a bug")
        if request == b"slow":
            await asyncio.sleep(5)
        if request == b"busy":  # works without awaiting: nothing cancels it when its deadline passes
            time.sleep(0.3)  # noqa: ASYNC251 - the blocking handler under test
        return request

    server = grpc.aio.server(interceptors=[TracingInterceptor(), ErrorInterceptor()])
    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=_identity, response_serializer=_identity)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("aisle.test.v1.EchoService", {"Echo": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def spans_of(exporter, trace_id: int, kind: SpanKind) -> list:
    return [s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id and s.kind == kind]


async def until(condition, within_s: float = 10.0) -> None:
    """Polls ``condition`` until it holds; fails after ``within_s`` (a bound on a hang, not a latency check)."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_a_server_span_continues_the_callers_trace(span_exporter):
    async with echo_server() as target, grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        assert await call(b"hello", metadata=(("traceparent", CALLER),), timeout=5) == b"hello"
    [span] = spans_of(span_exporter, 0x0AF7651916CD43DD8448EB211C80319C, SpanKind.SERVER)
    assert span.name == METHOD and span.parent.span_id == 0xB7AD6B7169203331 and span.parent.is_remote
    assert dict(span.attributes) == {
        "rpc.system": "grpc",
        "rpc.service": "aisle.test.v1.EchoService",
        "rpc.method": "Echo",
        "rpc.grpc.status_code": 0,
    }
    assert span.status.status_code == StatusCode.UNSET


@pytest.mark.parametrize(
    ("request_bytes", "code", "status", "timeout"),
    [
        # The caller's mistake: its code on the span, no error status (the RPC semantic conventions).
        (b"bad", grpc.StatusCode.INVALID_ARGUMENT, StatusCode.UNSET, 5),
        # The server's fault: an ERROR status too.
        (b"broken", grpc.StatusCode.INTERNAL, StatusCode.ERROR, 5),
        # Cancelled by gRPC when the caller's deadline passed: not an unknown error.
        (b"slow", grpc.StatusCode.DEADLINE_EXCEEDED, StatusCode.ERROR, 0.2),
        # Answered after the caller's deadline: what the caller saw, not OK.
        (b"busy", grpc.StatusCode.DEADLINE_EXCEEDED, StatusCode.ERROR, 0.1),
    ],
)
async def test_a_failed_call_has_its_code_on_the_server_span(span_exporter, request_bytes, code, status, timeout):
    caller = f"00-{uuid.uuid4().hex}-b7ad6b7169203331-01"
    async with echo_server() as target, grpc.aio.insecure_channel(target) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call(request_bytes, metadata=(("traceparent", caller),), timeout=timeout)
        assert raised.value.code() == code
        # The server side of a cancelled call ends after the client's: wait (bounded) for its span.
        await until(lambda: spans_of(span_exporter, int(caller[3:35], 16), SpanKind.SERVER))
    [span] = spans_of(span_exporter, int(caller[3:35], 16), SpanKind.SERVER)
    assert span.attributes["rpc.grpc.status_code"] == code.value[0]
    assert span.status.status_code == status
    if status == StatusCode.ERROR:
        assert code.name in span.status.description


async def test_health_probes_make_no_spans(span_exporter):
    """The kubelet probes every pod every few seconds: each probe was a trace of its own in the tracing backend."""
    server = grpc.aio.server(interceptors=[TracingInterceptor(), ErrorInterceptor()])
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await server.stop(None)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
    assert [s.name for s in span_exporter.get_finished_spans() if "Health" in s.name] == []


async def test_a_traced_channel_makes_the_client_span_the_servers_parent(span_exporter):
    tracer = trace.get_tracer("test")
    async with echo_server() as target, TracedChannel(grpc.aio.insecure_channel(target)) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        with tracer.start_as_current_span("request") as root:
            # Gathered and with a deadline, as the gateway and the shard router call.
            answers = await asyncio.gather(call(b"a", timeout=5), call(b"b", timeout=5))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call(b"bad", timeout=5)
    assert answers == [b"a", b"b"] and raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    trace_id = root.get_span_context().trace_id
    clients = spans_of(span_exporter, trace_id, SpanKind.CLIENT)
    servers = spans_of(span_exporter, trace_id, SpanKind.SERVER)
    assert len(clients) == len(servers) == 3
    assert {s.parent.span_id for s in clients} == {root.get_span_context().span_id}
    assert {s.parent.span_id for s in servers} == {c.context.span_id for c in clients}  # each call its own parent
    [failed] = [c for c in clients if c.status.status_code == StatusCode.ERROR]
    assert failed.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert sorted(c.attributes["rpc.grpc.status_code"] for c in clients) == [0, 0, 3]


async def test_a_call_its_caller_abandons_ends_its_client_span_as_an_error(span_exporter):
    """The gateway's stage timeout fires before gRPC's deadline: the abandoned call's span said nothing of it, so a
    degraded answer's trace showed a successful Retrieve."""
    tracer = trace.get_tracer("test")
    async with echo_server() as target, TracedChannel(grpc.aio.insecure_channel(target)) as channel:
        call = channel.unary_unary(METHOD, request_serializer=_identity, response_deserializer=_identity)
        with tracer.start_as_current_span("request") as root:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await call(b"slow", timeout=5)
    [client] = spans_of(span_exporter, root.get_span_context().trace_id, SpanKind.CLIENT)
    assert client.attributes["rpc.grpc.status_code"] == grpc.StatusCode.CANCELLED.value[0]
    assert client.status.status_code == StatusCode.ERROR and "CANCELLED" in client.status.description


async def test_a_traced_channel_is_still_a_channel(span_exporter):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    async with echo_server() as target:
        channel = TracedChannel(grpc.aio.insecure_channel(target))
        await asyncio.wait_for(channel.channel_ready(), 5)  # passed through
        with pytest.raises(grpc.aio.AioRpcError) as raised:  # a generated stub over it: no health service here
            await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
        await channel.close()
        assert channel.get_state() == grpc.ChannelConnectivity.SHUTDOWN


async def test_channels_are_traced_only_while_tracing_is_on(monkeypatch):
    traced = create_channel("127.0.0.1:1", ["aisle.test.v1.EchoService"])
    assert isinstance(traced, TracedChannel)
    await traced.close()
    monkeypatch.setattr(rpc_tracing.trace, "get_tracer_provider", trace.NoOpTracerProvider)
    plain = create_channel("127.0.0.1:1", ["aisle.test.v1.EchoService"])
    assert isinstance(plain, grpc.aio.Channel)
    await plain.close()
