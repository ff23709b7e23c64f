"""OpenTelemetry spans for Aisle's own gRPC calls: a server span per call served, a client span per call made.

The spans follow the RPC semantic conventions as ``opentelemetry-instrumentation-grpc`` makes them (name
``/package.Service/Method``, kind SERVER or CLIENT, ``rpc.system``, ``rpc.service``, ``rpc.method`` and
``rpc.grpc.status_code``, W3C trace context in the call's metadata; a server span is an error only for the codes
that are the server's fault), without the peer address and user agent attributes, and are made with the
OpenTelemetry API at points Aisle already has instead of with that package's ``grpc.aio`` interceptors, which
cost more CPU per call (``grpc.aio`` runs an intercepted client call through a task of its own, and the server
interceptor builds a new handler for every call). ``bench/tracing.py`` measures both (docs/benchmarks.md,
"Tracing and the index's search effort").

- :class:`TracingInterceptor` wraps each unary method once (:class:`~services.core.interceptors.UnaryWrapper`),
  like the metrics and error interceptors, and continues the caller's trace;
- :class:`TracedChannel` is a ``grpc.aio`` channel whose unary-unary calls carry the current trace context and are
  timed by a client span (:func:`services.core.channels.create_channel` makes one while tracing is on). Aisle's
  protos have no streaming methods; Triton's client is not one of these channels, and the ranking backend makes its
  span and sends the context itself.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from opentelemetry import propagate, trace
from opentelemetry.propagators.textmap import Getter, Setter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Status, StatusCode

from services.core.interceptors import INFRASTRUCTURE_METHODS, UnaryWrapper, past_deadline
from services.core.telemetry import ActiveSpan

#: ``rpc.grpc.status_code`` of the RPC semantic conventions.
STATUS_CODE = "rpc.grpc.status_code"


def tracing_enabled() -> bool:
    """True when the process has an SDK tracer provider (:func:`services.core.telemetry.configure_tracing` ran and
    ``OTEL_SDK_DISABLED`` is not set): only then are spans worth the calls' time."""
    return isinstance(trace.get_tracer_provider(), TracerProvider)


def rpc_attributes(method: str) -> dict[str, str]:
    """``/aisle.ranking.v1.RankingService/Rank`` -> rpc.system, rpc.service and rpc.method."""
    service, _, name = method.lstrip("/").rpartition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}


#: The codes that mark a SERVER span as failed (the RPC semantic conventions): the server's fault, not the caller's.
SERVER_ERRORS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def mark_abandoned(span: trace.Span) -> None:
    """A CLIENT span's call its caller gave up on before it ended: CANCELLED, an error."""
    span.set_attribute(STATUS_CODE, grpc.StatusCode.CANCELLED.value[0])
    span.set_status(Status(StatusCode.ERROR, "CANCELLED: abandoned by the caller"))


def _server_outcome(span: trace.Span, code: grpc.StatusCode, details: str = "") -> None:
    """The code a call ended with on its server span; an ERROR status only for :data:`SERVER_ERRORS` (a refused
    request is the caller's error, and its client span says so)."""
    span.set_attribute(STATUS_CODE, code.value[0])
    if code in SERVER_ERRORS:
        span.set_status(Status(StatusCode.ERROR, f"{code.name}: {details}" if details else code.name))


def _status_code(code: Any) -> grpc.StatusCode:
    """The code a failed call was answered with (``context.code()`` may hold the enum or its number); UNKNOWN when
    the call failed without one."""
    if isinstance(code, int) and not isinstance(code, bool):
        code = next((c for c in grpc.StatusCode if c.value[0] == code), None)
    if not isinstance(code, grpc.StatusCode) or code == grpc.StatusCode.OK:
        return grpc.StatusCode.UNKNOWN
    return code


class _MetadataGetter(Getter):
    """Reads a trace context header from a call's invocation metadata (a sequence of key/value pairs)."""

    def get(self, carrier, key: str) -> list[str] | None:
        values = [value for name, value in carrier if name == key]
        return values or None

    def keys(self, carrier) -> list[str]:
        return [name for name, _ in carrier]


class _MetadataSetter(Setter):
    def set(self, carrier: list, key: str, value: str) -> None:
        carrier.append((key, value))


_GETTER, _SETTER = _MetadataGetter(), _MetadataSetter()


class TracingInterceptor(UnaryWrapper):
    """A SERVER span around each unary call, child of the trace context the caller sent (a new trace without one).

    Outermost of a server's interceptors, so the span covers what the others do; a call answered with an error
    (aborted by the error interceptor) or cancelled (its deadline passed) gets its code, and an ERROR status when
    the code is one of :data:`SERVER_ERRORS`."""

    def __init__(self, tracer_provider: trace.TracerProvider | None = None):
        super().__init__()
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def wrap(self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: str):
        if method.startswith(INFRASTRUCTURE_METHODS):
            return behavior
        tracer, attributes = self._tracer, rpc_attributes(method)

        async def traced(request: Any, context: grpc.aio.ServicerContext) -> Any:
            parent = propagate.extract(context.invocation_metadata() or (), getter=_GETTER)
            span = tracer.start_span(method, context=parent, kind=SpanKind.SERVER, attributes=attributes)
            with ActiveSpan(span, record_errors=False):
                try:
                    response = await behavior(request, context)
                except asyncio.CancelledError:  # past its deadline, cancelled by the caller, or shut down
                    late = past_deadline(context)
                    _server_outcome(span, grpc.StatusCode.DEADLINE_EXCEEDED if late else grpc.StatusCode.CANCELLED)
                    del request  # see UnaryWrapper
                    raise
                except BaseException as error:
                    _server_outcome(span, _status_code(context.code()), context.details() or str(error))
                    del request  # see UnaryWrapper
                    raise
                if context.code() is None and past_deadline(context):  # finished after its caller gave up
                    _server_outcome(span, grpc.StatusCode.DEADLINE_EXCEEDED)
                else:
                    span.set_attribute(STATUS_CODE, 0)
                return response

        return traced


class _TracedUnaryUnary:
    """A unary-unary multi-callable whose calls make a CLIENT span and send its context in their metadata.

    Called, it returns a coroutine with the call's answer (what ``await stub.Method(request)`` needs; gathered or
    given a timeout like any awaitable); an error is raised as the ``AioRpcError`` it was."""

    def __init__(self, inner: grpc.aio.UnaryUnaryMultiCallable, method: str, tracer: trace.Tracer):
        self._inner, self._method, self._tracer = inner, method, tracer
        self._attributes = rpc_attributes(method)

    def __call__(self, request: Any, *, metadata=None, **options: Any) -> Awaitable[Any]:
        return self._call(request, metadata, options)

    async def _call(self, request: Any, metadata, options: dict[str, Any]) -> Any:
        span = self._tracer.start_span(self._method, kind=SpanKind.CLIENT, attributes=self._attributes)
        with ActiveSpan(span, record_errors=False):
            carrier = list(metadata or ())
            propagate.inject(carrier, setter=_SETTER)
            try:
                response = await self._inner(request, metadata=carrier, **options)
            except grpc.aio.AioRpcError as error:
                span.set_attribute(STATUS_CODE, error.code().value[0])
                span.set_status(Status(StatusCode.ERROR, f"{error.code().name}: {error.details()}"))
                raise
            except asyncio.CancelledError:  # the caller gave up first (its own timeout, a stage's slice)
                mark_abandoned(span)
                raise
            span.set_attribute(STATUS_CODE, 0)
            return response


class TracedChannel:
    """A ``grpc.aio.Channel`` (everything but ``unary_unary`` passed through) whose unary-unary calls are traced."""

    def __init__(self, channel: grpc.aio.Channel, tracer_provider: trace.TracerProvider | None = None):
        self._channel = channel
        self._tracer = trace.get_tracer(__name__, tracer_provider=tracer_provider)

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _TracedUnaryUnary:
        return _TracedUnaryUnary(self._channel.unary_unary(method, *args, **kwargs), method, self._tracer)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._channel, name)

    async def __aenter__(self) -> TracedChannel:
        await self._channel.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._channel.__aexit__(*exc_info)
