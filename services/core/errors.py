"""Errors as ``google.rpc.Status`` with details, one mapping for every service.

Servicers raise :class:`ServiceError` subclasses; :func:`status_for` turns any exception into a ``grpc.Status``
carrying an ``ErrorInfo`` (machine-readable reason) and, for bad input, a ``BadRequest`` listing each field.
The server's error interceptor applies it, so no servicer builds statuses by hand.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Collection

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

#: ``ErrorInfo.domain`` of every error Aisle raises.
ERROR_DOMAIN = "aisle.dev"
#: Trailing metadata with which a server asks gRPC clients not to retry a call (a negative value; gRFC A6).
NO_RETRY_KEY = "grpc-retry-pushback-ms"
#: What an ``ErrorInfo.reason`` looks like (google.rpc's rule: UPPER_SNAKE_CASE, at most 63 characters).
_REASON = re.compile(r"[A-Z][A-Z0-9_]{0,62}")


class ServiceError(Exception):
    """An error a caller should see with a specific status code and reason."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL
    reason: str = "INTERNAL"
    #: False: the answer tells gRPC clients not to retry (``grpc-retry-pushback-ms: -1``, honoured by every gRPC
    #: retry policy), for failures another attempt would meet again within the caller's deadline.
    retryable: bool = True
    #: False for a refusal that comes in floods (an overload's): logged once per interval with a count, not per call.
    logged_per_call: bool = True

    def __init__(self, message: str, *, reason: str | None = None, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        if reason is not None:
            self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ServiceError):
    """The request is malformed. ``violations`` maps a field path ("history[3].item_id") to what is wrong."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    reason = "INVALID_ARGUMENT"

    def __init__(self, violations: dict[str, str], omitted: int = 0):
        """``omitted``: further violations found but not listed (see services.core.validation)."""
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = dict(violations)
        message = "; ".join(f"{field}: {description}" for field, description in self.violations.items())
        if omitted:
            message += f"; and {omitted} more violation{'s' if omitted > 1 else ''} not listed"
        super().__init__(f"invalid request: {message}")


class Relayed(ServiceError):
    """A downstream call's refusal passed on to the caller as it came: its code, message and rich details (a router
    relays a shard's INVALID_ARGUMENT, whose field violations are the caller's)."""

    reason = "RELAYED"

    def __init__(self, error: grpc.aio.AioRpcError):
        super().__init__(error.details() or "")
        self.code = error.code()
        self.status = _Status(error.code(), error.details() or "", tuple(error.trailing_metadata() or ()))


class NotReady(ServiceError):
    """The service cannot answer yet (model or index not loaded)."""

    code = grpc.StatusCode.UNAVAILABLE
    reason = "NOT_READY"


class DependencyUnavailable(ServiceError):
    """A service this one depends on failed and no degraded answer was possible.

    ``retryable=False`` where every replica of this service shares the failed dependency (an inference server,
    the index shards): a retry within the same deadline would only spend the caller's budget on the same failure.
    Left retryable where another replica may answer (its own cache, a session store reachable from it).
    """

    code = grpc.StatusCode.UNAVAILABLE
    reason = "DEPENDENCY_UNAVAILABLE"

    def __init__(self, message: str, *, reason: str | None = None, retryable: bool | None = None, **extra):
        super().__init__(message, reason=reason, **extra)
        if retryable is not None:
            self.retryable = retryable


class BudgetExhausted(ServiceError):
    """The caller's deadline left too little time to produce an answer."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "DEADLINE_TOO_SHORT"


class ResourceExhausted(ServiceError):
    """The service is overloaded; the caller should retry after ``retry_after_s`` (sent as RetryInfo)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    reason = "OVERLOADED"

    def __init__(self, message: str, retry_after_s: float = 1.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    reason = "NOT_FOUND"


def is_expected_failure(error: BaseException) -> bool:
    """True for a failure raised on purpose with a message that says what is wrong and where (a missing model, a
    refused version, an invalid index, a bad setting): an instance of an exception class defined in Aisle's own
    package (``ServiceError``, ``SettingsError``, ``ModelConfigError``, ``InvalidIndex``...). Its message is all an
    operator needs. Anything else (a bare ``ValueError``, a ``KeyError``, a library's own error) is unexpected, and
    its traceback is worth logging. The class's module is read, so core need not import the services' classes."""
    return type(error).__module__.split(".")[0] == _PACKAGE


#: Aisle's own top-level package, where every exception class it raises on purpose is defined.
_PACKAGE = __name__.split(".")[0]


#: Longest error message sent, in UTF-8 bytes: it travels twice (``grpc-message``, percent-encoded at up to 3 bytes
#: a byte, and base64 in the details), and an answer's metadata past gRPC's 8 KiB soft limit is refused at random
#: (16 KiB always), so that the caller gets RESOURCE_EXHAUSTED, naming nothing, instead of the error (a message
#: quoting a long request field did): 1 KiB makes at most about 4.5 KB.
MAX_MESSAGE_BYTES = 1024


def status_for(error: BaseException) -> grpc.Status:
    """The ``grpc.Status`` (with rich details in the trailing metadata) that a caller gets for ``error``."""
    if isinstance(error, Relayed):
        return error.status
    if isinstance(error, ServiceError):
        code, reason, message, metadata = error.code, error.reason, error.message, error.metadata
        if len(encoded := message.encode()) > MAX_MESSAGE_BYTES:  # cut at a character's start, with an ellipsis
            message = encoded[: MAX_MESSAGE_BYTES - 3].decode(errors="ignore") + "…"
    else:
        # Internal details stay in the server log; the caller gets a generic message.
        code, reason, message, metadata = grpc.StatusCode.INTERNAL, "INTERNAL", "internal error", {}
    details = [_packed(error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata=metadata))]
    if isinstance(error, InvalidArgument):
        request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=description)
                for field, description in error.violations.items()
            ]
        )
        details.append(_packed(request))
    if isinstance(error, ResourceExhausted):
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(int(error.retry_after_s * 1000))
        details.append(_packed(retry))
    status = rpc_status.to_status(status_pb2.Status(code=_code_number(code), message=message, details=details))
    if isinstance(error, ServiceError) and not error.retryable:
        status = _Status(status.code, status.details, (*status.trailing_metadata, (NO_RETRY_KEY, "-1")))
    return status


class _Status(collections.namedtuple("_Status", ("code", "details", "trailing_metadata")), grpc.Status):
    """A ``grpc.Status`` (what ``grpc_status.rpc_status.to_status`` returns, with more trailing metadata)."""


def details_of(error: grpc.RpcError) -> tuple[error_details_pb2.ErrorInfo | None, dict[str, str]]:
    """Reads back (ErrorInfo, {field: description}) from a failed call; for clients and tests."""
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    info, violations = None, {}
    for detail in status.details if status else []:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            request = error_details_pb2.BadRequest()
            detail.Unpack(request)
            violations.update({v.field: v.description for v in request.field_violations})
    return info, violations


def refused_only(error: grpc.RpcError, fields: Collection[str]) -> bool:
    """Whether ``error`` is an INVALID_ARGUMENT whose every named field lies under one of ``fields`` (top-level
    names: ``context`` covers ``context.region``, ``anchor_item_ids`` covers ``anchor_item_ids[2]``). A refusal
    that names no field, or whose details do not decode, is nobody's in particular: False."""
    if error.code() != grpc.StatusCode.INVALID_ARGUMENT:
        return False
    try:
        _, violations = details_of(error)
    except Exception:  # noqa: BLE001 - details that do not decode name nothing
        return False
    return bool(violations) and all(re.split(r"[.\[]", field, maxsplit=1)[0] in fields for field in violations)


def describe(error: grpc.aio.AioRpcError) -> str:
    """A failed call as "CODE (REASON)", e.g. "UNAVAILABLE (INFERENCE_SERVER_UNAVAILABLE)": what a degraded answer
    says of the dependency that failed it. Only an Aisle service's reason is named (its ``ErrorInfo`` domain, a
    reason of capitals, digits and underscores); never a message, which may name hosts. Never raises: details that
    do not decode, or that contradict the call's code, leave the code alone."""
    code = error.code().name
    try:
        info, _ = details_of(error)
    except Exception:  # noqa: BLE001 - any malformed trailer (DecodeError, ValueError): the code is still true
        info = None
    if info is None or info.domain != ERROR_DOMAIN or not _REASON.fullmatch(info.reason):
        return code
    return f"{code} ({info.reason})"


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _code_number(code: grpc.StatusCode) -> int:
    number = code.value[0]
    assert code_pb2.Code.Name(number) == code.name
    return number
