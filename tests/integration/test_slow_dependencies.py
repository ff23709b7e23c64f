"""Slowed (not stopped) retrieval and ranking servers: the answer still arrives within budget, flagged."""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc

from aisle.common.v1 import common_pb2 as common
from services.core.server import ServiceHost
from services.gateway.app import build_application as build_gateway
from services.ranking.app import build_application as build_ranking
from services.retrieval.app import build_application as build_retrieval
from tests.integration.conftest import gateway_settings, ranking_settings, retrieval_settings, serving
from tests.integration.requests import home_request
from tests.integration.test_recommend_path import history_of, recommend


class Delay(grpc.aio.ServerInterceptor):
    """Holds every call for ``seconds`` while ``on`` is set: a server that is up but slow."""

    def __init__(self, seconds: float):
        self.seconds, self.on = seconds, False

    async def intercept_service(self, continuation, details):
        if self.on and details.method.endswith(("/Retrieve", "/Rank")):
            await asyncio.sleep(self.seconds)
        return await continuation(details)


#: How slow a slowed dependency is: far past any budget here, so an answer that waited for it cannot pass for one
#: that was cut.
DELAY_S = 2.0
#: Client and transport time allowed past the budget, with room for a stall of this busy 2-core machine.
SLACK_MS = 300


@contextlib.asynccontextmanager
async def slowable_stack(trained, budget_ms: float):
    retrieval_app = build_retrieval(s := retrieval_settings(trained))
    ranking_app = build_ranking(r := ranking_settings(trained))
    delays = {"retrieval": Delay(DELAY_S), "ranking": Delay(DELAY_S)}
    retrieval_app.extra_interceptors = [delays["retrieval"]]
    ranking_app.extra_interceptors = [delays["ranking"]]
    async with serving(ServiceHost(s, retrieval_app)) as retrieval, serving(ServiceHost(r, ranking_app)) as ranking:
        g = gateway_settings(trained, retrieval.port, ranking.port, total_budget_ms=budget_ms)
        async with serving(ServiceHost(g, build_gateway(g))) as gateway:
            yield gateway, delays


async def timed(port: int, request) -> tuple[object, float]:
    started = time.perf_counter()
    response = await recommend(port, request)
    return response, (time.perf_counter() - started) * 1000


async def test_slow_ranking_times_out_into_a_flagged_answer_within_budget(trained):
    async with slowable_stack(trained, budget_ms=300) as (gateway, delays):
        await recommend(gateway.port, home_request(history_of(trained)))  # warm
        delays["ranking"].on = True
        response, elapsed_ms = await timed(gateway.port, home_request(history_of(trained), k=5))
    assert len(response.items) == 5
    assert common.DEGRADATION_REASON_RANKING_TIMEOUT in {d.reason for d in response.degradations}
    assert elapsed_ms < 300 + SLACK_MS  # the budget, not the slow dependency's 2 s


async def test_slow_retrieval_sources_are_cut_and_the_fallback_answers_within_budget(trained):
    async with slowable_stack(trained, budget_ms=300) as (gateway, delays):
        await recommend(gateway.port, home_request(history_of(trained)))  # fills the popular cache
        delays["retrieval"].on = True
        response, elapsed_ms = await timed(gateway.port, home_request(history_of(trained), k=5))
    assert len(response.items) == 5
    assert {d.reason for d in response.degradations} >= {common.DEGRADATION_REASON_SOURCE_DROPPED}
    assert all(item.sources == [common.CANDIDATE_SOURCE_FALLBACK_CACHE] for item in response.items)
    assert elapsed_ms < 300 + SLACK_MS
