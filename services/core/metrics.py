"""Prometheus metrics: per-RPC request counts and latency histograms, served on a /metrics port.

Each server gets its own ``CollectorRegistry`` so several servers can live in one process (tests) without
clashing; services register their own metrics (stage latencies, degradations) in the same registry.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.core.interceptors import UnaryWrapper, past_deadline

#: Buckets in seconds, fine below 10 ms where the services' budgets live. Every latency alert's threshold is an edge
#: (a p99 is interpolated within its bucket: a threshold between edges fires on a p99 below it).
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.025,
    0.03,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)


class RpcMetrics:
    """The server-side RPC metrics of one service."""

    def __init__(self, registry: CollectorRegistry, service_label: str):
        self.service = service_label
        self.requests = Counter(
            "aisle_grpc_server_handled",
            "RPCs completed by the server, by method and status code.",
            ["service", "method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "aisle_grpc_server_handling_seconds",
            "Time from an RPC's handler starting to its answer, by method (not the time a call waited for the busy "
            "event loop before it: its caller's latency is longer).",
            ["service", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )

    def observe(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(self.service, method, code).inc()
        self.latency.labels(self.service, method).observe(seconds)


class ArtifactMetrics:
    """What a process serves and what it refused: ``aisle_artifact_serving{service,kind,version}`` is 1 for the
    version of each kind of artefact (``index``, ``model``, ...) it serves now; ``aisle_artifact_refused_total``
    counts the versions it refused to load (the previous one kept serving), so that a bad publish is an alert, not
    only a log line, and a fleet split across versions shows."""

    def __init__(self, registry: CollectorRegistry, service_label: str):
        self.service = service_label
        self._serving = Gauge(
            "aisle_artifact_serving",
            "1 for the artefact version this process serves, by kind (index, model, ...).",
            ["service", "kind", "version"],
            registry=registry,
        )
        self._refused = Counter(
            "aisle_artifact_refused",
            "Artefact versions refused at load (bad files, failed checks); the previous version kept serving.",
            ["service", "kind"],
            registry=registry,
        )
        # What an alert reads: a pod's refusals happen at start-up too, before its first scrape, where a counter's
        # series first appears at 1 and increase() sees no change.
        self._last_refusal = Gauge(
            "aisle_artifact_last_refusal_timestamp_seconds",
            "When this process last refused an artefact version (Unix time), by kind.",
            ["service", "kind"],
            registry=registry,
        )
        self._versions: dict[str, str] = {}

    def serving(self, kind: str, version: str) -> None:
        previous = self._versions.get(kind)
        if previous == version:
            return
        if previous is not None:
            self._serving.remove(self.service, kind, previous)
        if version:
            self._serving.labels(self.service, kind, version).set(1)
            self._versions[kind] = version
        else:
            self._versions.pop(kind, None)

    def refused(self, kind: str) -> None:
        self._refused.labels(self.service, kind).inc()
        self._last_refusal.labels(self.service, kind).set_to_current_time()


class MetricsInterceptor(UnaryWrapper):
    """Counts and times every unary RPC, whatever its outcome: an answer finished past the call's deadline is
    DEADLINE_EXCEEDED, as its caller saw it. (A call gRPC drops before its handler starts, its deadline passed while
    it waited for the event loop, is not seen here: only its caller counts it.)"""

    def __init__(self, metrics: RpcMetrics):
        super().__init__()
        self._metrics = metrics

    def wrap(self, behavior, method: str):
        name = method.rsplit("/", 1)[-1]
        metrics = self._metrics

        async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            try:
                response = await behavior(request, context)
            except asyncio.CancelledError:  # past its deadline, cancelled by the caller, or shut down: no code set
                late = past_deadline(context)
                metrics.observe(name, "DEADLINE_EXCEEDED" if late else "CANCELLED", time.perf_counter() - started)
                del request  # see UnaryWrapper
                raise
            except BaseException:
                metrics.observe(name, _code_name(context.code(), "UNKNOWN"), time.perf_counter() - started)
                del request  # see UnaryWrapper
                raise
            # An answer finished after the caller gave up (a handler that never awaits, on a busy event loop, is
            # never cancelled) reached no one: counted as the caller saw it, not as OK.
            code = "DEADLINE_EXCEEDED" if context.code() is None and past_deadline(context) else None
            metrics.observe(name, code or _code_name(context.code(), "OK"), time.perf_counter() - started)
            return response

        return timed


def _code_name(code: Any, unset: str) -> str:
    """The name of the code a call was answered with: ``context.code()`` holds the enum or its number, or None when
    none was set (``unset`` then)."""
    if code is None:
        return unset
    if isinstance(code, int) and not isinstance(code, bool):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), code)
    return code.name if isinstance(code, grpc.StatusCode) else str(code)


def start_metrics_server(port: int, host: str, registry: CollectorRegistry):
    """Serves ``registry`` on http://host:port/metrics in a thread; returns (server, bound port)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server, server.server_port
