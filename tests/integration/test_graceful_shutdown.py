"""SIGTERM: health NOT_SERVING first, new calls refused, the in-flight call finishes.

The gateway's downstream is a slow in-memory fake here, so the call is reliably in flight when the signal lands;
the server, its signal handling and the client are real. The fake records when it is closed: the gateway must close
its downstream channels only after the call in flight has finished (a closed channel would fail its Rank call).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal

import grpc
import pytest
from grpc_health.v1 import health_pb2

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.core.server import ServiceHost
from services.gateway.app import build_application
from services.gateway.settings import GatewaySettings
from tests.integration.conftest import health_status
from tests.integration.requests import home_request


class SlowDownstream:
    """Retrieval that waits for ``release``; ranking that scores every candidate 0.5."""

    def __init__(self) -> None:
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.armed = False
        self.retrieval, self.ranking = self, self
        self.in_flight = 0
        self.closed_with_calls_in_flight: int | None = None  # set by close()

    async def connect(self) -> None:
        return None

    async def close(self) -> None:
        self.closed_with_calls_in_flight = self.in_flight

    async def Retrieve(self, request, timeout):  # noqa: N802
        if self.armed:  # start-up (the popular-cache warm-up) passes straight through
            self.in_flight += 1  # until its Rank call answers
            self.entered.set()
            await self.release.wait()
        return retrieval_pb.RetrieveResponse(
            candidates=[
                retrieval_pb.Candidate(
                    item_id=f"item-{i}", score=1.0, source=common.CANDIDATE_SOURCE_POPULARITY, source_rank=i
                )
                for i in range(10)
            ]
        )

    async def Rank(self, request, timeout):  # noqa: N802
        assert self.closed_with_calls_in_flight is None, "the downstream was closed before the call ranked"
        self.in_flight = max(0, self.in_flight - 1)
        return ranking_pb.RankResponse(
            scored_items=[
                ranking_pb.ScoredItem(item_id=i, purchase_probability=0.5) for i in request.candidate_item_ids
            ]
        )


async def test_sigterm_lets_the_in_flight_call_finish_and_refuses_new_ones(tmp_path):
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({f"item-{i}": {"category": "c", "brand": "b"} for i in range(10)}))
    settings = GatewaySettings(
        host="127.0.0.1",
        port=0,
        metrics_port=None,
        grace_period_s=10,
        drain_delay_s=0.5,
        total_budget_ms=10_000,
        catalog_path=catalog,
        event_log="off",
    )
    downstream = SlowDownstream()
    host = ServiceHost(settings, build_application(settings, downstream=downstream))
    port = await host.start()
    await host.load()
    downstream.armed = True
    host.install_signal_handlers()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.RecommendationServiceStub(channel)
            in_flight = asyncio.ensure_future(stub.Recommend(home_request(["a"], k=3), timeout=20))
            await asyncio.wait_for(downstream.entered.wait(), 5)

            os.kill(os.getpid(), signal.SIGTERM)
            await asyncio.sleep(0.1)
            # Draining: still reachable, but telling balancers to go away.
            assert await health_status(port) == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.sleep(0.6)
            # Past the drain delay: new calls are refused while the old one is still running.
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await pb_grpc.RecommendationServiceStub(fresh).Recommend(home_request(["a"]), timeout=2)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
            assert not in_flight.done()

            downstream.release.set()
            response = await asyncio.wait_for(in_flight, 10)
            assert len(response.items) == 3 and all(i.item_id.startswith("item-") for i in response.items)
        await asyncio.wait_for(host.wait_stopped(), 10)
        assert downstream.closed_with_calls_in_flight == 0  # closed, and only once the call had finished
    finally:
        host.remove_signal_handlers()
        downstream.release.set()
        await host.stop(grace=0, drain=0)


class SlowEventLog:
    """An event sink whose writes take 0.3 s; records what happened, in order."""

    def __init__(self) -> None:
        self.happened: list[str] = []

    async def start(self) -> None:
        return None

    async def write(self, records) -> None:
        self.happened.append("write started")
        await asyncio.sleep(0.3)
        self.happened.append("write ended")

    async def close(self) -> None:
        self.happened.append("closed")


async def test_a_stop_closes_the_event_log_after_the_answers_side_effects_not_during_them(tmp_path):
    """The exposures of the last answers are written after the answer is sent: the stop closed the event log (and
    the session store: Redis drops connections in use) while they were being written, and lost them."""
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps({f"item-{i}": {"category": "c", "brand": "b"} for i in range(10)}))
    settings = GatewaySettings(
        host="127.0.0.1", port=0, metrics_port=None, grace_period_s=5, drain_delay_s=0, catalog_path=catalog
    )
    events = SlowEventLog()
    host = ServiceHost(settings, build_application(settings, downstream=SlowDownstream(), events=events))
    port = await host.start()
    await host.load()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            answer = await pb_grpc.RecommendationServiceStub(channel).Recommend(home_request(["a"], k=3), timeout=5)
        assert len(answer.items) == 3 and events.happened == ["write started"]  # answered; the log still writing
    finally:
        await host.stop(grace=5, drain=0)
    assert events.happened == ["write started", "write ended", "closed"]
