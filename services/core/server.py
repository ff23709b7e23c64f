"""The one way every Aisle service runs a gRPC server.

:class:`ServiceHost` builds a ``grpc.aio`` server with the standard health service (SERVING only after the
application's ``load`` step has finished), server reflection, tracing, metrics and error interceptors, a Prometheus
endpoint, and graceful shutdown: on SIGTERM health flips to NOT_SERVING, new calls are refused and in-flight calls
get ``grace_period_s`` to finish; a load still in progress is cancelled first.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import OVERALL_HEALTH
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from services.core.grpc_runtime import grpc_runtime_in_force
from services.core.interceptors import ConcurrencyLimit, ErrorInterceptor
from services.core.keepalive import MIN_CLIENT_PING_INTERVAL_MS
from services.core.metrics import MetricsInterceptor, RpcMetrics, start_metrics_server
from services.core.rpc_tracing import TracingInterceptor, tracing_enabled
from services.core.settings import ServiceSettings

log = logging.getLogger(__name__)

Hook = Callable[[], Awaitable[None]]


class StartupError(RuntimeError):
    """The server could not start; the message names the setting to change and how."""


@dataclass
class Application:
    """What a service contributes to its server: the gRPC services it serves and its life-cycle hooks.

    ``register(server)`` adds the servicers; ``service_names`` are their full names (for health and reflection).
    ``load`` prepares everything needed to answer (models, indexes) and raises if it cannot; health turns SERVING
    only after it returns. ``close`` releases resources after the server has stopped.
    """

    service_names: Sequence[str]
    register: Callable[[grpc.aio.Server], None]
    load: Hook | None = None
    close: Hook | None = None
    extra_interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)
    #: The ``service`` label of the RPC metrics when not the settings' (a role of the same service: a shard router).
    metrics_label: str | None = None


class ServiceHost:
    """Runs one :class:`Application` behind a gRPC server. Usable from ``__main__`` and from tests."""

    def __init__(
        self,
        settings: ServiceSettings,
        app: Application,
        registry: CollectorRegistry | None = None,
        freeze_heap: bool = False,
    ):
        """``freeze_heap``: after loading, exempt everything alive from garbage collection (``gc.freeze``); for a
        process that hosts only this service."""
        self.settings = settings
        self.freeze_heap = freeze_heap
        self.app = app
        self.registry = registry if registry is not None else CollectorRegistry()
        self.health = health_aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None
        self.metrics_port: int | None = None
        self._metrics_server = None
        self._stopped = asyncio.Event()
        self._stopping = False
        #: What the application's close raised during the stop, if anything (logged; serve_main exits non-zero).
        self.close_error: Exception | None = None
        self._stop_task: asyncio.Task | None = None  # held: the loop keeps only a weak reference to a task
        self._load_task: asyncio.Task | None = None  # the application's load step, cancelled by a stop
        self._serving = False

    async def start(self) -> int:
        """Binds and starts the server with health NOT_SERVING; returns the bound port."""
        metrics = RpcMetrics(self.registry, self.app.metrics_label or self.settings.service_label)
        tracing = [TracingInterceptor()] if tracing_enabled() else []  # outermost: its span covers the others
        limit = self.settings.max_concurrent_rpcs
        limits = [ConcurrencyLimit(limit)] if limit is not None else []
        server = grpc.aio.server(
            interceptors=[
                *tracing,
                MetricsInterceptor(metrics),
                ErrorInterceptor(),
                *limits,
                *self.app.extra_interceptors,
            ],
            options=[
                ("grpc.max_receive_message_length", self.settings.max_message_bytes),
                ("grpc.max_send_message_length", self.settings.max_message_bytes),
                ("grpc.so_reuseport", 0),
                # Recycle client connections now and then, so clients spread onto pods added by a scale-up.
                ("grpc.max_connection_age_ms", 300_000),
                ("grpc.max_connection_age_grace_ms", 30_000),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_MS),
            ],
        )
        self.app.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        reflection.enable_server_reflection(
            [
                *self.app.service_names,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            ],
            server,
        )
        # The metrics port first: a gRPC server that has bound its port keeps it until the process ends unless it is
        # started, so a busy metrics port found after it would leave the gRPC port taken.
        if self.settings.metrics_port is not None:
            try:
                self._metrics_server, self.metrics_port = start_metrics_server(
                    self.settings.metrics_port, self.settings.host, self.registry
                )
            except OSError as error:
                raise self._unbindable("metrics", self.settings.metrics_port, "metrics_port", error) from None
        try:
            address = f"{self.settings.host}:{self.settings.port}"
            try:
                port = server.add_insecure_port(address)
            except RuntimeError:  # gRPC says only "Failed to bind to address": find out why
                port = 0
            if port == 0:
                problem = _bind_problem(self.settings.host, self.settings.port)
                raise self._unbindable("gRPC", self.settings.port, "port", problem)
            await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
            await server.start()
        except BaseException:
            self._stop_metrics_server()
            self.metrics_port = None
            raise
        self.server, self.port = server, port
        log.info(
            "%s listening on %s:%d (metrics port %s, %s event loop, %s), NOT_SERVING until loaded",
            self.settings.service_label,
            self.settings.host,
            port,
            self.metrics_port,
            type(asyncio.get_running_loop()).__module__.split(".")[0],
            grpc_runtime_in_force(),
        )
        return port

    async def load(self) -> None:
        """Runs the application's ``load`` step, then marks every service SERVING.

        The step runs as a task of its own that :meth:`stop` cancels: a SIGTERM while a large model or index is
        loading ends the load (returning from here without SERVING) rather than waiting for it."""
        if self.app.load is not None and not self._stopping:
            loading = self._load_task = asyncio.get_running_loop().create_task(
                self.app.load(), name=f"{self.settings.service_label}-load"
            )
            try:
                await loading
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if not (loading.cancelled() and self._stopping and (current is None or not current.cancelling())):
                    raise  # this caller was cancelled, or the load cancelled itself: not a stop
                log.info("%s stopped while loading", self.settings.service_label)
                return
        if self._stopping:
            return
        if self.freeze_heap:
            # What loading made (catalogs, vocabularies, models) lives as long as the process: moved out of the
            # collector's generations, a full collection no longer walks it on the request path.
            gc.collect()
            gc.freeze()
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._serving = True
        log.info("%s is SERVING", self.settings.service_label)

    @property
    def load_interrupted(self) -> bool:
        """True when a stop cancelled the load step: work it handed to threads (``asyncio.to_thread``) may still
        be running, and cannot be interrupted."""
        return self._load_task is not None and self._load_task.cancelled()

    async def stop(self, grace: float | None = None, drain: float | None = None) -> None:
        """NOT_SERVING first; after ``drain`` seconds (still answering, so load balancers can notice) new calls
        are refused and in-flight ones get ``grace`` seconds to finish. Defaults come from the settings.

        A load still in progress is cancelled, and ``close`` runs only once it has ended; without a load that
        finished nobody was sent here, so there is nothing to drain."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.grace_period_s if grace is None else grace
        if drain is None:
            drain = self.settings.drain_delay_s if self._serving else 0.0
        log.info("%s shutting down (drain %.1fs, grace %.1fs)", self.settings.service_label, drain, grace)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        try:
            loading = self._load_task
            if loading is not None and not loading.done() and loading is not asyncio.current_task():
                loading.cancel()
                await asyncio.wait({loading})  # whatever it ends with, load() reports it
            if drain > 0:
                await asyncio.sleep(drain)
            if self.server is not None:
                await self.server.stop(grace)
        finally:
            try:
                if self.app.close is not None:
                    await self.app.close()
            except Exception as error:  # the stop must end: a close that fails must not hold the process
                log.exception("%s: closing failed", self.settings.service_label)
                self.close_error = error
            finally:
                self._stop_metrics_server()
                self._stopped.set()
                log.info("%s stopped", self.settings.service_label)

    def install_signal_handlers(self) -> None:
        """SIGTERM and SIGINT start a graceful stop (call from the running event loop)."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_signal, signum)

    def remove_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    def _on_signal(self, signum: int) -> None:
        log.info("received %s", signal.Signals(signum).name)
        if self._stop_task is None:
            self._stop_task = asyncio.get_running_loop().create_task(self.stop())

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    async def run(self) -> None:
        """Start, load, serve until SIGTERM/SIGINT, stop. Raises if loading fails (after stopping)."""
        await self.start()
        self.install_signal_handlers()
        try:
            await self.load()
        except BaseException as error:
            # Raised, not logged here: the caller reports it (serve_main: one line when the message says it all).
            if isinstance(error, Exception):
                log.info("%s failed to load; stopping", self.settings.service_label)
            await self.stop(grace=0, drain=0)
            raise
        await self.wait_stopped()

    async def _set_health(self, status: int) -> None:
        for name in (OVERALL_HEALTH, *self.app.service_names):
            await self.health.set(name, status)

    def _stop_metrics_server(self) -> None:
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
            self._metrics_server = None

    def _unbindable(self, what: str, port: int, field: str, problem: OSError | str) -> StartupError:
        """The error for a port that cannot be bound, naming the setting that fixes it."""
        settings = type(self.settings)
        host, code = self.settings.host, getattr(problem, "errno", None)
        if isinstance(problem, socket.gaierror) or code == errno.EADDRNOTAVAIL:
            return StartupError(
                f"{host} is not an address of this machine ({_reason(problem)}): set "
                f"{settings.env_name('host')} / {settings.flag_name('host')} to one (0.0.0.0 for every interface)"
            )
        fix = f"set {settings.env_name(field)} / {settings.flag_name(field)} to a free port, 0 to pick one"
        fix += ", or none to disable" if field == "metrics_port" else ""
        if code == errno.EADDRINUSE:
            return StartupError(f"{what} port {port} is in use: {fix}")
        return StartupError(f"{what} port {port} on {host} cannot be bound ({_reason(problem)}): {fix}")


def _bind_problem(host: str, port: int) -> OSError | str:
    """Why gRPC could not bind ``host:port``, found by binding it here (gRPC's own error does not say)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            probe.bind(address)
    except OSError as error:
        return error
    return "gRPC refused the address"


def _reason(problem: OSError | str) -> str:
    return problem if isinstance(problem, str) else problem.strerror or str(problem)
