from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from services.core.errors import (
    ERROR_DOMAIN,
    BudgetExhausted,
    DependencyUnavailable,
    InvalidArgument,
    NotReady,
    Relayed,
    describe,
    refused_only,
    status_for,
)


def decoded(status: grpc.Status) -> status_pb2.Status:
    [value] = [value for key, value in status.trailing_metadata if key == "grpc-status-details-bin"]
    return status_pb2.Status.FromString(value)


def unpack(status: status_pb2.Status, kind):
    found = [d for d in status.details if d.Is(kind.DESCRIPTOR)]
    if not found:
        return None
    message = kind()
    found[0].Unpack(message)
    return message


def test_invalid_argument_carries_each_field_violation():
    status = status_for(InvalidArgument({"k": "too big", "history[2].item_id": "empty"}))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    rich = decoded(status)
    assert rich.code == 3 and "k: too big" in rich.message
    request = unpack(rich, error_details_pb2.BadRequest)
    assert {(v.field, v.description) for v in request.field_violations} == {
        ("k", "too big"),
        ("history[2].item_id", "empty"),
    }
    info = unpack(rich, error_details_pb2.ErrorInfo)
    assert info.reason == "INVALID_ARGUMENT" and info.domain == ERROR_DOMAIN


@pytest.mark.parametrize(
    ("error", "code", "reason"),
    [
        (NotReady("loading"), grpc.StatusCode.UNAVAILABLE, "NOT_READY"),
        (
            DependencyUnavailable("x", reason="RETRIEVAL_UNAVAILABLE"),
            grpc.StatusCode.UNAVAILABLE,
            "RETRIEVAL_UNAVAILABLE",
        ),
        (BudgetExhausted("late"), grpc.StatusCode.DEADLINE_EXCEEDED, "DEADLINE_TOO_SHORT"),
    ],
)
def test_service_errors_keep_code_and_reason(error, code, reason):
    status = status_for(error)
    assert status.code == code
    rich = decoded(status)
    assert unpack(rich, error_details_pb2.ErrorInfo).reason == reason
    assert unpack(rich, error_details_pb2.BadRequest) is None


def test_only_an_outage_every_replica_shares_asks_clients_not_to_retry():
    from services.ranking.backends.base import BackendUnavailable

    pushback = ("grpc-retry-pushback-ms", "-1")
    for error in (BackendUnavailable("triton down"), DependencyUnavailable("shards down", retryable=False)):
        assert pushback in status_for(error).trailing_metadata
    for error in (DependencyUnavailable("no cache here"), NotReady("loading"), BudgetExhausted("late"), KeyError("x")):
        assert pushback[0] not in dict(status_for(error).trailing_metadata)


def test_unexpected_errors_hide_internals():
    status = status_for(KeyError("secret path /etc/shadow"))
    assert status.code == grpc.StatusCode.INTERNAL
    assert "secret" not in status.details and status.details == "internal error"


def test_invalid_argument_needs_a_violation():
    with pytest.raises(ValueError):
        InvalidArgument({})


def failed_call(status: grpc.Status) -> grpc.aio.AioRpcError:
    """The error a grpc.aio client raises for a call the server ended with ``status``."""
    message = decoded(status).message
    return grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), grpc.aio.Metadata(*status.trailing_metadata), message)


def test_describe_names_the_code_and_the_reason_without_the_message():
    from services.ranking.backends.base import BackendUnavailable

    assert describe(failed_call(status_for(BackendUnavailable("triton at 10.0.0.7 down")))) == (
        "UNAVAILABLE (INFERENCE_SERVER_UNAVAILABLE)"
    )
    assert describe(failed_call(status_for(NotReady("loading")))) == "UNAVAILABLE (NOT_READY)"
    # A call that failed without rich details (a dead server, gRPC's own deadline): the code alone.
    bare = grpc.aio.AioRpcError(grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata(), "late")
    assert describe(bare) == "DEADLINE_EXCEEDED"
    # Details that do not decode, or that contradict the call's code, are not trusted; the call's code still is.
    garbage = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00 not a status"))
    broken = grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), garbage, "down")
    assert describe(broken) == "UNAVAILABLE"
    rich = status_for(NotReady("loading"))
    trailing = grpc.aio.Metadata(*rich.trailing_metadata)
    odd = grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, grpc.aio.Metadata(), trailing)
    assert describe(odd) == "INTERNAL"


def test_describe_names_only_an_aisle_reason():
    """Another server's ErrorInfo (a proxy's, another domain's, free text) is not copied into a public answer."""

    def call_with(info: error_details_pb2.ErrorInfo) -> grpc.aio.AioRpcError:
        packed = any_pb2.Any()
        packed.Pack(info)
        status = status_pb2.Status(code=14, message="down", details=[packed])
        trailing = grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
        return grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), trailing, "down")

    assert describe(call_with(error_details_pb2.ErrorInfo(reason="NOT_READY", domain=ERROR_DOMAIN))) == (
        "UNAVAILABLE (NOT_READY)"
    )
    assert describe(call_with(error_details_pb2.ErrorInfo(reason="NOT_READY", domain="proxy.example"))) == "UNAVAILABLE"
    free_text = error_details_pb2.ErrorInfo(reason="upstream 10.0.0.7:8001 refused", domain=ERROR_DOMAIN)
    assert describe(call_with(free_text)) == "UNAVAILABLE"
    assert describe(call_with(error_details_pb2.ErrorInfo(reason="A" * 64, domain=ERROR_DOMAIN))) == "UNAVAILABLE"


def test_a_relayed_refusal_reaches_the_caller_as_the_downstream_gave_it():
    # A shard's INVALID_ARGUMENT names the caller's fields: the router passes code, message and details on as they
    # are, not as a dependency's failure.
    refused = failed_call(status_for(InvalidArgument({"history[3].item_id": "unknown"})))
    relayed = status_for(Relayed(refused))
    assert relayed.code == grpc.StatusCode.INVALID_ARGUMENT
    assert relayed.details == refused.details()
    assert tuple(relayed.trailing_metadata) == tuple(refused.trailing_metadata())
    violations = unpack(decoded(relayed), error_details_pb2.BadRequest).field_violations
    assert [(v.field, v.description) for v in violations] == [("history[3].item_id", "unknown")]


@pytest.mark.parametrize(
    ("violations", "expected"),
    [
        ({"context.region": "unknown", "anchor_item_ids[2]": "empty"}, True),
        ({"context.region": "unknown", "history[0].item_id": "empty"}, False),  # one field is not the caller's
        ({"contexts": "unknown"}, False),  # a prefix of a name is not the name
    ],
)
def test_refused_only_asks_whether_every_named_field_is_one_of_the_given_ones(violations, expected):
    refusal = failed_call(status_for(InvalidArgument(violations)))
    assert refused_only(refusal, ("context", "anchor_item_ids")) is expected


def test_a_refusal_that_names_no_field_or_is_no_refusal_is_nobodys():
    fields = ("context",)
    assert not refused_only(failed_call(status_for(NotReady("loading"))), fields)
    bare = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), grpc.aio.Metadata(), "bad")
    assert not refused_only(bare, fields)
    garbage = grpc.aio.Metadata(("grpc-status-details-bin", b"\xff\x00 not a status"))
    undecodable = grpc.aio.AioRpcError(grpc.StatusCode.INVALID_ARGUMENT, grpc.aio.Metadata(), garbage)
    assert not refused_only(undecodable, fields)
