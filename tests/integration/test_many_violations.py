"""A request with thousands of bad fields still gets INVALID_ARGUMENT with a BadRequest the caller can read: the
first violations are listed and the rest counted. (Listing every one made a trailer past gRPC's 16 KB limit, and
the caller saw RESOURCE_EXHAUSTED naming no field; found by the hostile batches of test_memory_bounds.py.)"""

from __future__ import annotations

import grpc
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.core.errors import details_of
from tests.integration.conftest import stack
from tests.integration.requests import home_request

BAD_IDS = ["\x00"] * 5000  # within the 5,000-entry limit, each one unprintable


def assert_names_the_field(error: grpc.aio.AioRpcError, field: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details()[:200])
    assert any(name.startswith(field) for name in details_of(error)[1])


async def test_thousands_of_bad_ids_are_invalid_argument_naming_the_field(trained):
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['retrieval'].port}") as channel:
            request = retrieval_pb.RetrieveRequest(
                k=10, sources=[common.CANDIDATE_SOURCE_POPULARITY], exclusions=common.Exclusions(item_ids=BAD_IDS)
            )
            with pytest.raises(grpc.aio.AioRpcError) as retrieval_error:
                await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(request, timeout=10)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['gateway'].port}") as channel:
            request = home_request(["a"])
            request.exclusions.item_ids.extend(BAD_IDS)
            with pytest.raises(grpc.aio.AioRpcError) as gateway_error:
                await pb_grpc.RecommendationServiceStub(channel).Recommend(request, timeout=10)
    codes = {"retrieval": retrieval_error.value.code(), "gateway": gateway_error.value.code()}
    assert set(codes.values()) == {grpc.StatusCode.INVALID_ARGUMENT}, codes
    assert_names_the_field(retrieval_error.value, "exclusions.item_ids")
    assert_names_the_field(gateway_error.value, "exclusions.item_ids")


async def test_violations_that_echo_callers_characters_stay_invalid_argument(trained):
    """Attribute keys of emoji (each entry is named by its key) made a 17.7 KB trailer, and the caller saw
    RESOURCE_EXHAUSTED "received metadata size exceeds hard limit"."""
    keys = {"\U0001f600" * 31 + chr(0x1F601 + i): "v" * 1025 for i in range(32)}
    async with stack(trained) as hosts:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{hosts['retrieval'].port}") as channel:
            request = retrieval_pb.RetrieveRequest(
                k=10,
                sources=[common.CANDIDATE_SOURCE_POPULARITY],
                context=common.RequestContext(region="GB", attributes=keys),
            )
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await retrieval_grpc.RetrievalServiceStub(channel).Retrieve(request, timeout=10)
    assert_names_the_field(refused.value, "context.attributes")
