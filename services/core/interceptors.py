"""Server interceptors shared by every service."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from services.core.errors import InvalidArgument, ResourceExhausted, ServiceError, describe, status_for
from services.core.logs import Throttled

log = logging.getLogger(__name__)


#: The servers' own calls, not the service's: the kubelet's and balancers' health probes, and reflection. No span is
#: made for them (a one-span trace per probe, every few seconds per pod) and no concurrency limit refuses them.
INFRASTRUCTURE_METHODS = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def past_deadline(context: grpc.aio.ServicerContext) -> bool:
    """Whether the call's deadline has passed: its caller got DEADLINE_EXCEEDED, whatever the handler does after."""
    remaining = context.time_remaining()
    return remaining is not None and remaining <= 0


class Undecodable:
    """A request whose bytes are not a valid message (a string field that is not UTF-8, a truncated field): what
    :class:`ErrorInterceptor`'s deserializer hands on instead of raising, so the call is refused as the caller's
    error. (gRPC answered a deserializer's exception as UNKNOWN, with no details.)"""

    __slots__ = ("message_type", "reason")

    def __init__(self, message_type: str, reason: str):
        self.message_type, self.reason = message_type, reason


class UnaryWrapper(grpc.aio.ServerInterceptor):
    """Base of the interceptors that wrap each unary method's behaviour: the wrapped handler is made once per
    method (and handler), not on every call.

    A wrapper that lets an error through drops its reference to the request first (``del request``). gRPC keeps an
    aborted call's AbortError on the call's state, which the context reaches and every frame the error passed
    through holds: a reference cycle, alive until Python's cyclic collector runs, in which a frame that still
    holds the request keeps it (up to the 16 MB message limit) that long."""

    def __init__(self) -> None:
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def wrap(self, behavior: Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], method: str):
        raise NotImplementedError

    def deserializer(self, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        """The request deserializer of the wrapped handler (the handler's own, unless a wrapper changes it)."""
        return deserialize

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = grpc.unary_unary_rpc_method_handler(
            self.wrap(handler.unary_unary, method),
            request_deserializer=self.deserializer(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
        self._wrapped[method] = (handler, wrapped)
        return wrapped


class ErrorInterceptor(UnaryWrapper):
    """Turns exceptions raised by servicers into ``google.rpc.Status`` answers (see :mod:`services.core.errors`).

    :class:`ServiceError` keeps its code and reason; a downstream call's failure that the servicer let through is
    answered with that call's code, "downstream call failed: CODE (REASON)" (:func:`~services.core.errors.describe`)
    and the reason DEPENDENCY_FAILED; anything else is logged with its traceback and answered as INTERNAL without
    internal details.

    The call is aborted outside the except blocks, after the request is dropped: gRPC keeps an aborted call's
    AbortError in a reference cycle with the call's context (see :class:`UnaryWrapper`), and a handler that aborted
    from inside ``except`` chained the servicer's error, whose traceback holds the servicer's frames and with them
    the request. A stream of refused large requests then held tens of MiB until Python's cyclic collector ran.
    (Setting the code and returning instead would send an empty response message first, and a client never
    retries a call that got one.)
    """

    def __init__(self) -> None:
        super().__init__()
        self._floods = Throttled(log)  # refusals that come in floods: one line per interval, with a count

    def deserializer(self, deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
        if deserialize is None:
            return None
        owner = getattr(deserialize, "__self__", None)
        message_type = getattr(getattr(owner, "DESCRIPTOR", None), "full_name", "request")

        def tolerant(data: bytes) -> Any:
            try:
                return deserialize(data)
            except DecodeError as error:
                return Undecodable(message_type, str(error)[:200])

        return tolerant

    def wrap(self, behavior, method: str):
        async def mapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                if type(request) is Undecodable:
                    raise InvalidArgument(
                        {
                            "request": f"is not a valid {request.message_type} message (a string field that is not "
                            f"UTF-8?): {request.reason}"
                        }
                    )
                return await behavior(request, context)
            except grpc.aio.AbortError:
                del request
                raise
            except ServiceError as error:
                said = (method, error.code.name, error.reason, error.message)
                if error.logged_per_call:
                    log.info("%s -> %s (%s): %s", *said)
                else:
                    self._floods.warning(method, "%s -> %s (%s): %s", *said)
                status = status_for(error)
            except grpc.aio.AioRpcError as error:
                # A downstream call failed and the servicer did not handle it: pass its code (and the Aisle reason
                # it came with) on, not INTERNAL; its message stays in the log, where a host it names may be.
                described = describe(error)
                log.warning("%s: downstream call failed: %s: %s", method, described, error.details())
                status = status_for(_downstream(error.code(), described))
            except Exception as error:
                log.exception("%s failed", method)
                status = status_for(error)
            del request
            await context.abort(status.code, status.details, status.trailing_metadata)

        return mapped


class ConcurrencyLimit(UnaryWrapper):
    """Refuses a call at once with RESOURCE_EXHAUSTED (OVERLOADED, retry in a second) while ``limit`` calls are in
    the service's handlers, rather than let an overload queue every call until its deadline passes. Health checks
    are never refused (a probe failing under load would take the pod out, moving its load onto the others) nor
    counted. Inside the error and metrics interceptors, so a refusal is an Aisle error and is counted."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.in_flight = limit, 0

    def wrap(self, behavior, method: str):
        if method.startswith(INFRASTRUCTURE_METHODS):
            return behavior

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.in_flight >= self.limit:
                refused = ResourceExhausted(f"{self.in_flight} calls in flight, the most this server takes at once")
                refused.logged_per_call = False  # an overload refuses many: a log line each would add to it
                raise refused
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return limited


def _downstream(code: grpc.StatusCode, described: str) -> ServiceError:
    """The answer to a caller whose call failed downstream. Not to be retried: this server's channel already
    retried the downstream call (services/core/channels.py), and a retry one hop up would multiply the attempts on
    the failing dependency (3 x 3 within one deadline), where gRPC's own advice is to retry at one layer only."""
    mapped = ServiceError(f"downstream call failed: {described}", reason="DEPENDENCY_FAILED")
    mapped.code = code if code != grpc.StatusCode.OK else grpc.StatusCode.INTERNAL
    mapped.retryable = False
    return mapped
