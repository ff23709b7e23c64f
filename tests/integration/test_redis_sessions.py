"""The Redis session store and event stream against a real Redis server: two gateways share one session."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import grpc
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.server import ServiceHost
from services.gateway.app import build_application as build_gateway
from services.gateway.redis_store import RedisSessionStore, RedisStreamEventSink, read_stream
from services.gateway.sessions import Batch, InMemorySessionStore
from services.ranking.app import build_application as build_ranking
from services.retrieval.app import build_application as build_retrieval
from tests.integration.conftest import (
    FUNCTIONAL_BUDGET_MS,
    gateway_settings,
    ranking_settings,
    retrieval_settings,
    serving,
)
from tests.integration.test_events_and_consent import home, tracked
from tests.integration.test_recommend_path import history_of
from tests.support.redis import redis_server


@pytest.fixture
def redis_url():
    with redis_server() as url:
        yield url


async def test_store_round_trip_bounds_and_exposures(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, max_events=3)
    await store.append("k", [common.Interaction(item_id=str(i), quantity=i) for i in range(5)])
    assert [(e.item_id, e.quantity) for e in await store.history("k")] == [("2", 2), ("3", 3), ("4", 4)]
    await store.add_exposures("k", ["a", "b", "a"])
    assert await store.exposures("k") == {"a": 2, "b": 1}
    assert await store.history("other") == []
    await store.close()


async def test_a_batch_is_stored_once_in_one_script_with_its_marker(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, max_events=2, batch_ttl_s=30)
    batches = {"a": [common.Interaction(item_id=f"a{i}") for i in range(3)], "b": [common.Interaction(item_id="b0")]}
    digest = b"\x00\xffdigest"  # bytes, as batch_digest gives
    assert await store.append_all(batches, "batch-1", digest) is Batch.STORED
    assert await store.append_all(batches, "batch-1", digest) is Batch.REPEAT  # a retry: nothing stored again
    assert await store.append_all({"a": [common.Interaction(item_id="x")]}, "batch-1", b"other") is Batch.CONFLICT
    assert [e.item_id for e in await store.history("a")] == ["a1", "a2"]  # trimmed to max_events
    assert [e.item_id for e in await store.history("b")] == ["b0"]
    assert 0 < await store.client.pttl("aisle:session:b:events") <= 60_000
    markers = [key async for key in store.client.scan_iter("aisle:track-batch:*")]
    assert len(markers) == 1 and 0 < await store.client.pttl(markers[0]) <= 30_000
    assert await store.append_all({"b": [common.Interaction(item_id="b1")]}, "batch-2", digest) is Batch.STORED
    assert await store.append_all({}, "batch-3", digest) is Batch.STORED
    assert await store.append_all({}, "batch-3", digest) is Batch.REPEAT
    assert [e.item_id for e in await store.history("b")] == ["b0", "b1"]
    await store.close()


async def test_one_calls_events_are_appended_for_every_subject_in_one_transaction(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, max_events=2)
    batches = {
        "a": [common.Interaction(item_id=f"a{i}") for i in range(3)],
        "b": [common.Interaction(item_id="b0")],
        "c": [],
    }
    await store.append_all(batches)
    assert [e.item_id for e in await store.history("a")] == ["a1", "a2"]  # trimmed to max_events
    assert [e.item_id for e in await store.history("b")] == ["b0"] and await store.history("c") == []
    assert 0 < await store.client.pttl("aisle:session:b:events") <= 60_000
    await store.close()


async def test_a_session_counts_exposures_for_at_most_max_exposed_items_in_redis_too(redis_url):
    store = RedisSessionStore(redis_url, ttl_s=60, max_events=3, max_exposed_items=3)
    await store.add_exposures("k", ["a", "a", "a", "b", "b", "c"])
    await store.add_exposures("k", ["d", "e"])  # c, d and e were shown once: two of them are forgotten
    counts = await store.exposures("k")
    assert len(counts) == 3 and (counts["a"], counts["b"]) == (3, 2)
    await store.close()


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_a_forgotten_session_is_gone_in_both_stores_and_only_that_one(redis_url, store_kind):
    store = InMemorySessionStore(ttl_s=60) if store_kind == "memory" else RedisSessionStore(redis_url, 60, 50)
    for key in ("ann", "bob"):
        await store.append(key, [common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_PURCHASE)])
        await store.add_exposures(key, ["i2"])
    assert await store.forget("ann") is True
    assert await store.history("ann") == [] and await store.exposures("ann") == {}
    assert [e.item_id for e in await store.history("bob")] == ["i1"] and await store.exposures("bob") == {"i2": 1}
    assert await store.forget("ann") is False  # nothing left to delete
    if store_kind == "redis":
        await store.close()


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_a_session_in_use_keeps_its_history_and_exposures_past_the_ttl_in_both_stores(redis_url, store_kind):
    """session_ttl_s is idle time: a shopper browsing with recommendations (reads of the history, exposures
    written) after one add-to-cart keeps that history, in Redis as in memory (Redis kept each key alive only with
    writes to it, and dropped the history while the exposures lived on)."""
    ttl = 1.0
    store = InMemorySessionStore(ttl_s=ttl) if store_kind == "memory" else RedisSessionStore(redis_url, ttl, 50)
    await store.append("k", [common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_ADD_TO_CART)])
    for _ in range(4):  # 1.6 s of browsing, each step well within the ttl of the one before
        await asyncio.sleep(0.4)
        await store.history("k")
        await store.exposures("k")
        await store.add_exposures("k", ["i2"])
    assert [e.item_id for e in await store.history("k")] == ["i1"]
    assert await store.exposures("k") == {"i2": 4}
    await asyncio.sleep(ttl + 0.3)  # idle past the ttl: gone, both parts
    assert await store.history("k") == [] and await store.exposures("k") == {}
    if store_kind == "redis":
        await store.close()


async def test_stream_sink_keeps_every_event_and_refuses_when_overloaded(redis_url):
    sink = RedisStreamEventSink(redis_url, max_pending=10)
    await sink.start()
    await sink.write([{"type": "click", "item_id": "a"}, {"type": "purchase", "item_id": "b"}])
    assert [e["item_id"] for e in await read_stream(redis_url)] == ["a", "b"]
    from services.gateway.events import EventLogFull

    with pytest.raises(EventLogFull):
        await sink.write([{"n": i} for i in range(11)])
    await sink.close()


async def test_a_stream_refusal_names_the_error_but_not_where_redis_runs():
    # The refusal's message reaches TrackEvents' caller: Redis' own text names its host and port.
    from services.gateway.events import EventLogFull

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens there
    sink = RedisStreamEventSink(f"redis://127.0.0.1:{port}/0", max_pending=10)
    with pytest.raises(EventLogFull) as refused:
        await sink.write([{"type": "click", "item_id": "a"}])
    await sink.close()
    assert "ConnectionError" in str(refused.value) and str(port) not in str(refused.value)


async def test_two_gateways_share_one_session_through_redis(trained, redis_url):
    retrieval = ServiceHost(s := retrieval_settings(trained), build_retrieval(s))
    ranking = ServiceHost(r := ranking_settings(trained), build_ranking(r))
    async with serving(retrieval), serving(ranking), contextlib.AsyncExitStack() as stack:
        ports = []
        for _ in range(2):  # separate apps, separate Redis clients: only Redis is shared
            settings = gateway_settings(
                trained, retrieval.port, ranking.port, session_store="redis", redis_url=redis_url, event_log="redis"
            )
            host = await stack.enter_async_context(serving(ServiceHost(settings, build_gateway(settings))))
            ports.append(host.port)
        async with (
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as first,
            grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as second,
        ):
            bought = history_of(trained, 3)
            await pb_grpc.RecommendationServiceStub(first).TrackEvents(
                pb.TrackEventsRequest(events=[tracked(i, user="shared") for i in bought]), timeout=5
            )
            answer = await pb_grpc.RecommendationServiceStub(second).Recommend(home(user="shared"), timeout=5)
    assert any(common.CANDIDATE_SOURCE_TWO_TOWER in i.sources for i in answer.items)
    recorded = await read_stream(redis_url)
    assert [e["item_id"] for e in recorded if e["type"] == "purchase"] == bought


async def test_a_redis_outage_costs_personalisation_not_the_answer(trained, redis_url):
    async with (
        serving(ServiceHost(s := retrieval_settings(trained), build_retrieval(s))) as retrieval,
        serving(ServiceHost(r := ranking_settings(trained), build_ranking(r))) as ranking,
    ):
        settings = gateway_settings(
            trained, retrieval.port, ranking.port, session_store="redis", redis_url="redis://127.0.0.1:1/0"
        )
        async with serving(ServiceHost(settings, build_gateway(settings))) as gateway:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
                answer = await pb_grpc.RecommendationServiceStub(channel).Recommend(home(), timeout=5)
                with pytest.raises(grpc.aio.AioRpcError) as failure:
                    await pb_grpc.RecommendationServiceStub(channel).TrackEvents(
                        pb.TrackEventsRequest(events=[tracked("I1")]), timeout=5
                    )
    assert answer.items and any(d.stage == "sessions" for d in answer.degradations)
    assert failure.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_two_gateway_processes_share_one_session(trained, redis_url, tmp_path):
    """As deployed: two gateway OS processes behind a balancer, sharing sessions only through Redis."""
    import asyncio
    import os
    import sys

    from services.core.health import wait_until_serving
    from services.demo.stack import free_ports

    async with (
        serving(ServiceHost(s := retrieval_settings(trained), build_retrieval(s))) as retrieval,
        serving(ServiceHost(r := ranking_settings(trained), build_ranking(r))) as ranking,
    ):
        ports = free_ports(2)
        env = {k: v for k, v in os.environ.items() if not k.startswith("AISLE_")}
        processes = []
        try:  # from the first start on: whatever fails, every gateway started is stopped
            for port in ports:
                settings = {
                    "PORT": port,
                    "METRICS_PORT": "none",
                    "RETRIEVAL_TARGET": f"127.0.0.1:{retrieval.port}",
                    "RANKING_TARGET": f"127.0.0.1:{ranking.port}",
                    "CATALOG_PATH": trained.root / "catalog.json",
                    "SESSION_STORE": "redis",
                    "REDIS_URL": redis_url,
                    "EVENT_LOG": "redis",
                    "ANONYMOUS_CACHE_TTL_S": 0,
                    "TOTAL_BUDGET_MS": FUNCTIONAL_BUDGET_MS,  # retrieval and ranking run in this busy process
                }
                process_env = {**env, **{f"AISLE_GATEWAY_{k}": str(v) for k, v in settings.items()}}
                # The gateway writes to its own copy of the descriptor: this process's is closed once it runs.
                with (tmp_path / f"gateway-{port}.log").open("wb") as log:
                    processes.append(
                        await asyncio.create_subprocess_exec(
                            sys.executable, "-m", "services.gateway", env=process_env, stdout=log, stderr=log
                        )
                    )
            for port in ports:
                async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                    await asyncio.wait_for(wait_until_serving(channel, "", 5.0), 120)
            bought = history_of(trained, 3)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[0]}") as first:
                await pb_grpc.RecommendationServiceStub(first).TrackEvents(
                    pb.TrackEventsRequest(events=[tracked(i, user="roaming") for i in bought]), timeout=5
                )
            async with grpc.aio.insecure_channel(f"127.0.0.1:{ports[1]}") as second:
                answer = await pb_grpc.RecommendationServiceStub(second).Recommend(home(user="roaming"), timeout=5)
        finally:
            for process in processes:  # all signalled first, so that one slow to stop does not delay the other
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        process.terminate()
            try:
                await asyncio.wait_for(asyncio.gather(*(p.wait() for p in processes)), 30)
            except TimeoutError:  # killed, not left behind; the exit codes below say it did not stop
                for process in processes:
                    if process.returncode is None:
                        process.kill()
                await asyncio.gather(*(p.wait() for p in processes))
    assert any(common.CANDIDATE_SOURCE_TWO_TOWER in i.sources for i in answer.items)
    logs = {port: (tmp_path / f"gateway-{port}.log").read_text(errors="replace")[-2000:] for port in ports}
    assert [p.returncode for p in processes] == [0, 0], logs
