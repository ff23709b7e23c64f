"""The shared server factory: health follows readiness, reflection lists the services, metrics are served."""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.errors import details_of
from services.core.server import Application, ServiceHost, StartupError
from services.demo.stack import free_port
from services.ranking.settings import RankingSettings
from services.retrieval.app import SERVICE_NAME as RETRIEVAL_SERVICE
from services.retrieval.app import build_application as build_retrieval
from tests.integration.conftest import health_status, retrieval_settings, serving

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def test_health_turns_serving_only_after_the_index_is_loaded(trained):
    settings = retrieval_settings(trained)
    app = build_retrieval(settings)
    release = asyncio.Event()
    real_load = app.load

    async def gated_load():
        await release.wait()
        await real_load()

    app.load = gated_load
    host = ServiceHost(settings, app)
    port = await host.start()
    loading = asyncio.create_task(host.load())
    try:
        assert await health_status(port) == NOT_SERVING
        assert await health_status(port, RETRIEVAL_SERVICE) == NOT_SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(retrieval_pb.RetrieveRequest(), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        release.set()
        await asyncio.wait_for(loading, 10)
        assert await health_status(port) == SERVING
        assert await health_status(port, RETRIEVAL_SERVICE) == SERVING
    finally:
        release.set()
        await host.stop(grace=0, drain=0)


async def test_a_service_that_cannot_load_never_turns_serving(trained, tmp_path):
    settings = retrieval_settings(trained).model_copy(update={"index_path": tmp_path / "missing"})
    host = ServiceHost(settings, build_retrieval(settings))
    port = await host.start()
    try:
        with pytest.raises(ValueError, match="does not exist"):
            await host.load()
        assert await health_status(port) == NOT_SERVING
    finally:
        await host.stop(grace=0, drain=0)


async def test_reflection_lists_the_services(trained):
    settings = retrieval_settings(trained)
    async with serving(ServiceHost(settings, build_retrieval(settings))) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            call = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            names = set()
            async for reply in call:
                names |= {s.name for s in reply.list_services_response.service}
    assert {RETRIEVAL_SERVICE, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"} <= names


async def test_metrics_endpoint_counts_rpcs_by_method_and_code(trained):
    settings = retrieval_settings(trained)
    async with serving(ServiceHost(settings, build_retrieval(settings))) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            stub = retrieval_grpc.RetrievalServiceStub(channel)
            await stub.Retrieve(retrieval_pb.RetrieveRequest(k=5), timeout=2)
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.Retrieve(retrieval_pb.RetrieveRequest(k=-1), timeout=2)
        url = f"http://127.0.0.1:{host.metrics_port}/metrics"
        body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=5).read().decode())
    assert 'aisle_grpc_server_handled_total{code="OK",method="Retrieve",service="retrieval"} 1.0' in body
    assert 'aisle_grpc_server_handled_total{code="INVALID_ARGUMENT",method="Retrieve",service="retrieval"} 1.0' in body
    assert 'aisle_grpc_server_handling_seconds_count{method="Retrieve",service="retrieval"} 2.0' in body


async def test_a_signal_starts_one_stop_and_holds_it_until_it_is_done(trained):
    import gc
    import signal

    settings = retrieval_settings(trained)
    host = ServiceHost(settings, build_retrieval(settings))
    await host.start()
    host._on_signal(signal.SIGTERM)
    host._on_signal(signal.SIGTERM)  # a second signal starts no second stop
    stopping = host._stop_task
    assert stopping is not None
    gc.collect()  # the loop holds a task weakly: the host's reference keeps it alive
    await asyncio.wait_for(host.wait_stopped(), 10)
    assert stopping.done() and host._stop_task is stopping


def _bindable(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _peer_service(server) -> None:
    """``/test.Peer/Get``: the caller's address as the server sees it (a new connection has a new port)."""

    async def get(request: bytes, context) -> bytes:
        return context.peer().encode()

    handler = grpc.unary_unary_rpc_method_handler(get)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Peer", {"Get": handler})])


@pytest.mark.parametrize(("server_accepts_ms", "kept"), [(200, True), (300_000, False)])
async def test_an_idle_connection_survives_the_clients_keepalive_pings(monkeypatch, server_accepts_ms, kept):
    """Scaled down 100 times (pings every 300 ms): a server that accepts pings as often as Aisle's channels send
    them keeps an idle connection; one with gRPC's default (5 minutes) closes it (GOAWAY "too_many_pings"), as
    every quiet link between the services was closed about 90 s after its last call, logged and rebuilt."""
    from services.core import channels, server

    monkeypatch.setattr(server, "MIN_CLIENT_PING_INTERVAL_MS", server_accepts_ms)
    monkeypatch.setattr(channels, "KEEPALIVE_TIME_MS", 300)
    settings = RankingSettings(host="127.0.0.1", port=0, metrics_port=None)
    host = ServiceHost(settings, Application(service_names=[], register=_peer_service))
    port = await host.start()
    channel = channels.create_channel(f"127.0.0.1:{port}", [])
    try:
        peer = channel.unary_unary("/test.Peer/Get")
        before = await peer(b"", timeout=5)
        await asyncio.sleep(5)  # idle: sixteen pings (the default closes the connection after about three)
        after = await peer(b"", timeout=5)
    finally:
        await channel.close()
        await host.stop(grace=0, drain=0)
    assert (before == after) is kept, (before, after)


async def test_a_busy_metrics_port_is_named_with_its_setting_and_leaves_no_server_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        grpc_port = free_port()
        settings = RankingSettings(host="127.0.0.1", port=grpc_port, metrics_port=busy)
        host = ServiceHost(settings, Application(service_names=[], register=lambda server: None))
        with pytest.raises(StartupError) as error:
            await host.start()
    assert str(error.value) == (
        f"metrics port {busy} is in use: set AISLE_RANKING_METRICS_PORT / --metrics-port to a free port, "
        "0 to pick one, or none to disable"
    )
    assert host.server is None and _bindable(grpc_port)  # the gRPC server bound first is gone, not leaked


async def test_a_busy_grpc_port_is_named_with_its_setting_and_leaves_no_metrics_server_running():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        metrics_port = free_port()
        settings = RankingSettings(host="127.0.0.1", port=busy, metrics_port=metrics_port)
        with pytest.raises(StartupError) as error:
            await ServiceHost(settings, Application(service_names=[], register=lambda server: None)).start()
    assert str(error.value) == (
        f"gRPC port {busy} is in use: set AISLE_RANKING_PORT / --port to a free port, 0 to pick one"
    )
    assert _bindable(metrics_port)


async def test_a_stop_during_the_load_cancels_it_and_closes_only_after_it_ended():
    """SIGTERM while a large model or index loads: the load ends at once, nothing it would start afterwards starts,
    and close never runs beside it."""
    events: list[str] = []
    loading = asyncio.Event()

    async def load():
        events.append("load started")
        loading.set()
        try:
            await asyncio.sleep(60)  # a long model/index read
        except asyncio.CancelledError:
            await asyncio.sleep(0.2)  # its own clean-up, which close must not overlap
            events.append("load cancelled")
            raise
        events.append("watch started")

    async def close():
        events.append("closed")

    settings = RankingSettings(host="127.0.0.1", port=0, metrics_port=None, grace_period_s=5, drain_delay_s=5)
    host = ServiceHost(settings, Application(service_names=[], register=lambda server: None, load=load, close=close))
    running = asyncio.create_task(host.run())
    try:
        await asyncio.wait_for(loading.wait(), 10)
        host._on_signal(signal.SIGTERM)
        await asyncio.wait_for(running, 3)  # not the 60 s of the load, nor the drain: it never served
        assert events == ["load started", "load cancelled", "closed"]
        assert host.load_interrupted
    finally:
        host.remove_signal_handlers()
        running.cancel()
        await host.stop(grace=0, drain=0)


async def test_calls_past_the_concurrency_limit_are_refused_at_once_not_queued(caplog):
    """An overloaded service queued every call for its busy event loop until the caller's deadline passed; with
    ``max_concurrent_rpcs`` the excess is told RESOURCE_EXHAUSTED at once, and the calls within it are served."""
    release = asyncio.Event()

    async def wait(request: bytes, context) -> bytes:
        await release.wait()
        return request

    def register(server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(wait)
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Slow", {"Call": handler})])

    settings = RankingSettings(host="127.0.0.1", port=0, metrics_port=None, max_concurrent_rpcs=2)
    registry = CollectorRegistry()
    host = ServiceHost(settings, Application(service_names=[], register=register), registry=registry)
    async with serving(host):
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            call = channel.unary_unary("/test.Slow/Call")
            held = [asyncio.ensure_future(call(b"x", timeout=10)) for _ in range(2)]
            await asyncio.sleep(0.2)  # both are in their handlers
            started = asyncio.get_running_loop().time()
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call(b"y", timeout=10)
            waited = asyncio.get_running_loop().time() - started
            for _ in range(5):  # an overload refuses many: one log line for them, not one each
                with pytest.raises(grpc.aio.AioRpcError):
                    await call(b"z", timeout=10)
            # A probe is never refused: a pod failing its probes under load would move its load onto the others.
            assert await health_status(host.port) == SERVING
            release.set()
            assert await asyncio.gather(*held) == [b"x", b"x"]
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert waited < 5  # refused, not queued to its deadline
    info, _ = details_of(refused.value)
    assert info is not None and info.reason == "OVERLOADED"  # an Aisle error, with retry advice
    counted = {"service": "ranking", "method": "Call", "code": "RESOURCE_EXHAUSTED"}
    assert registry.get_sample_value("aisle_grpc_server_handled_total", counted) == 6
    assert len([r for r in caplog.records if "calls in flight" in r.getMessage()]) == 1
