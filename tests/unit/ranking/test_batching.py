"""The micro-batcher: own rows back under concurrency, max delay, mixed widths, errors to the right caller."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from services.ranking.batching import BatcherClosed, MicroBatcher

POISON = 666


def echo(key, tensors):
    """Scores = candidate token + 1000 * the history's first token: any cross-talk shows in the numbers."""
    candidates, history = tensors["candidates"], tensors["history"]
    if (candidates == POISON).any():
        raise ValueError("poisoned request")
    return [candidates.astype(np.float32) + 1000 * history[:, :1].astype(np.float32), None]


@pytest.fixture
def executor():
    with ThreadPoolExecutor(2) as pool:
        yield pool


def batcher(executor, run=echo, **options) -> MicroBatcher:
    defaults = {"max_batch_size": 16, "max_delay_s": 0.005, "max_cells": 10_000, "instances": 1}
    return MicroBatcher(run, executor, padded=("candidates",), **{**defaults, **options})


def request(user: int, width: int) -> dict[str, np.ndarray]:
    return {
        "history": np.full((1, 3), user, dtype=np.int64),
        "candidates": np.arange(1, width + 1, dtype=np.int64)[None, :] + user,
    }


async def test_each_caller_gets_its_own_rows_under_concurrency(executor):
    micro = batcher(executor)
    users = range(1, 65)
    widths = {user: 1 + (user * 7) % 23 for user in users}  # different candidate counts share batches
    results = await asyncio.gather(*(micro.submit("m", request(u, widths[u]), widths[u]) for u in users))
    for user, (purchase, returns) in zip(users, results, strict=True):
        want = np.arange(1, widths[user] + 1) + user + 1000 * user
        assert purchase.shape == (1, widths[user]) and returns is None
        assert purchase[0].tolist() == want.tolist()
    assert max(micro.batch_sizes) > 1 and sum(micro.batch_sizes) == 64
    await micro.close()


async def test_a_lone_request_waits_no_longer_than_the_max_delay(executor):
    micro = batcher(executor, max_delay_s=0.05)
    started = time.perf_counter()
    # Nothing else arrives: without the delay's end the request would wait for ever (the bound is only a guard).
    await asyncio.wait_for(micro.submit("m", request(1, 5), 5), timeout=10)
    assert time.perf_counter() - started >= 0.04  # it waited for company, up to the delay
    assert list(micro.batch_sizes) == [1]
    await micro.close()


async def test_a_full_batch_goes_without_waiting_for_the_delay(executor):
    micro = batcher(executor, max_delay_s=5.0, max_batch_size=4)
    started = time.perf_counter()
    await asyncio.gather(*(micro.submit("m", request(u, 3), 3) for u in range(4)))
    assert time.perf_counter() - started < micro.max_delay_s / 2  # it did not wait out the 5 s delay
    assert list(micro.batch_sizes) == [4]
    await micro.close()


async def test_batches_respect_size_and_cell_limits(executor):
    micro = batcher(executor, max_delay_s=0.02, max_batch_size=4, max_cells=40)
    await asyncio.gather(*(micro.submit("m", request(u, 10), 10) for u in range(10)))
    assert max(micro.batch_sizes) <= 4 and sum(micro.batch_sizes) == 10
    micro_cells = batcher(executor, max_delay_s=0.02, max_batch_size=64, max_cells=25)
    await asyncio.gather(*(micro_cells.submit("m", request(u, 10), 10) for u in range(6)))
    assert list(micro_cells.batch_sizes) == [2, 2, 2]
    await micro.close()
    await micro_cells.close()


async def test_different_models_never_share_a_batch(executor):
    seen = []

    def record(key, tensors):
        seen.append((key, tensors["candidates"].shape[0]))
        return echo(key, tensors)

    micro = batcher(executor, run=record, max_delay_s=0.02)
    await asyncio.gather(*(micro.submit(f"v{u % 2}", request(u, 4), 4) for u in range(8)))
    assert sorted(seen) == [("v0", 4), ("v1", 4)]
    await micro.close()


async def test_an_error_reaches_only_the_request_that_caused_it(executor):
    micro = batcher(executor, max_delay_s=0.02)
    bad = request(3, 4)
    bad["candidates"][0, 1] = POISON
    calls = [micro.submit("m", bad if u == 3 else request(u, 4), 4) for u in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[3], ValueError) and "poisoned" in str(results[3])
    for user, result in enumerate(results):
        if user != 3:
            assert result[0][0].tolist() == (np.arange(1, 5) + user + 1000 * user).tolist()
    await micro.close()


async def test_a_caller_that_gives_up_is_not_computed(executor):
    computed = []

    def record(key, tensors):
        computed.extend(tensors["history"][:, 0].tolist())
        return echo(key, tensors)

    micro = batcher(executor, run=record, max_delay_s=0.05)
    abandoned = asyncio.ensure_future(micro.submit("m", request(7, 2), 2))
    await asyncio.sleep(0)
    abandoned.cancel()
    await micro.submit("m", request(8, 2), 2)
    assert computed == [8]
    await micro.close()


async def test_close_fails_waiting_requests(executor):
    micro = batcher(executor, max_delay_s=10.0)
    waiting = asyncio.ensure_future(micro.submit("m", request(1, 2), 2))
    await asyncio.sleep(0.01)
    await micro.close()
    with pytest.raises(BatcherClosed):
        await waiting
    with pytest.raises(BatcherClosed):
        await micro.submit("m", request(1, 2), 2)


async def test_without_a_delay_an_idle_batcher_runs_at_once_and_batches_what_queues_meanwhile(executor):
    def slow(key, tensors):
        time.sleep(0.05)
        return echo(key, tensors)

    micro = batcher(executor, run=slow, max_delay_s=0.0)
    await micro.submit("m", request(1, 3), 3)
    assert list(micro.batch_sizes) == [1]
    results = await asyncio.gather(*(micro.submit("m", request(u, 3), 3) for u in range(10)))
    assert list(micro.batch_sizes) == [1, 1, 9]  # the first ran alone on the idle instance, the rest queued behind it
    assert [r[0][0, 0] for r in results] == [1 + u + 1000 * u for u in range(10)]
    await micro.close()


async def test_inline_runs_a_small_lone_request_on_the_loops_thread_and_the_rest_as_before(executor):
    threads: list[int] = []

    def recorded(key, tensors):
        threads.append(threading.get_ident())
        return echo(key, tensors)

    micro = batcher(executor, run=recorded, max_delay_s=0.0, inline_max_width=4)
    loop_thread = threading.get_ident()
    result = await micro.submit("m", request(2, 4), 4)
    assert threads == [loop_thread] and list(micro.batch_sizes) == [1]
    assert result[0].tolist() == [[2003, 2004, 2005, 2006]]
    await micro.submit("m", request(2, 5), 5)  # wider than the limit: the inference thread
    assert threads[1] != loop_thread
    poisoned = request(1, 3)
    poisoned["candidates"][0, 0] = POISON
    with pytest.raises(ValueError, match="poisoned"):  # an inline failure reaches its caller like any other
        await micro.submit("m", poisoned, 3)
    micro.inline_max_width = 0  # the backend sets it per loaded version
    await micro.submit("m", request(2, 4), 4)
    assert threads[-1] != loop_thread
    await micro.close()


async def test_inline_never_overtakes_a_running_batch_or_the_queue(executor):
    release = threading.Event()
    threads: list[int] = []

    def held(key, tensors):
        threads.append(threading.get_ident())
        if tensors["history"][0, 0] == 0:
            release.wait(5)
        return echo(key, tensors)

    micro = batcher(executor, run=held, max_delay_s=0.0, inline_max_width=0)
    first = asyncio.create_task(micro.submit("m", request(0, 3), 3))  # holds the only instance
    await asyncio.sleep(0.05)
    micro.inline_max_width = 100
    waiting = [asyncio.create_task(micro.submit("m", request(u, 3), 3)) for u in (1, 2, 3)]
    await asyncio.sleep(0.05)
    assert not any(task.done() for task in waiting)  # queued behind the running one, not run on the loop
    release.set()
    results = await asyncio.gather(first, *waiting)
    assert list(micro.batch_sizes) == [1, 3] and threading.get_ident() not in threads
    assert [r[0][0, 0] for r in results] == [1 + 1000 * u + u for u in range(4)]
    await micro.close()
