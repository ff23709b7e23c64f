"""OpenTelemetry tracing, configured from the standard ``OTEL_*`` environment variables.

Every service installs an SDK tracer provider, so trace ids exist and cross each gRPC hop. Spans are exported with
OTLP/gRPC only when ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) is set and
``OTEL_TRACES_EXPORTER`` is not ``none``; otherwise nothing leaves the process. ``OTEL_SDK_DISABLED=true`` turns
tracing off. Sampling follows ``OTEL_TRACES_SAMPLER``/``OTEL_TRACES_SAMPLER_ARG`` as the SDK defines them.
"""

from __future__ import annotations

import logging
import os

from opentelemetry import context, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode

log = logging.getLogger(__name__)


def otlp_endpoint_configured(environ: dict[str, str] | None = None) -> bool:
    env = os.environ if environ is None else environ
    if env.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower() == "none":
        return False
    return bool(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))


def configure_tracing(service_name: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """Installs the process's tracer provider; returns it (None if disabled). Servers and channels made after
    it trace their calls (:mod:`services.core.rpc_tracing`).

    ``exporter`` is for tests (an in-memory exporter, spans exported synchronously). A provider can be set only
    once per process; later calls reuse it and only add the given exporter.
    """
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        log.info("tracing disabled by OTEL_SDK_DISABLED")
        return None
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        # The service's own name unless the operator gives one (OTEL_SERVICE_NAME, or service.name among
        # OTEL_RESOURCE_ATTRIBUTES), which the OTel conventions let override a default.
        given = os.environ.get("OTEL_SERVICE_NAME") or any(
            pair.split("=", 1)[0].strip() == "service.name"
            for pair in os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(",")
        )
        attributes = {} if given else {"service.name": service_name}
        provider = TracerProvider(resource=Resource.create(attributes))
        trace.set_tracer_provider(provider)
        if exporter is None and otlp_endpoint_configured():
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
            log.info("exporting traces with OTLP to %s", _endpoint())
    if exporter is not None:
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider


class ActiveSpan:
    """``with ActiveSpan(tracer.start_span(...)) as span:`` the span is the current one inside the block and ends
    after it: what ``tracer.start_as_current_span`` does, without its two generator context managers (a fifth of
    a span's CPU; docs/benchmarks.md, "A slower machine"). An ``Exception`` leaving the block is recorded on the
    span with an ERROR status, as there, unless ``record_errors`` is False (a span that sets its own status)."""

    __slots__ = ("span", "_record_errors", "_token")

    def __init__(self, span: trace.Span, record_errors: bool = True):
        self.span, self._record_errors = span, record_errors

    def __enter__(self) -> trace.Span:
        self._token = context.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, kind, error, traceback) -> None:
        context.detach(self._token)
        span = self.span
        if self._record_errors and isinstance(error, Exception) and span.is_recording():
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"))
        span.end()


def current_trace_id() -> str:
    """The W3C trace id of the current span as 32 hex digits, or "" when there is none or it is not sampled (no one
    keeps it: an id a caller would search the tracing backend for in vain)."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid and context.trace_flags.sampled else ""


def shutdown_tracing() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.force_flush(timeout_millis=2000)


def _endpoint() -> str:
    return os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "")
