"""Open-loop steady load for fault tests: calls start on a fixed schedule whether or not earlier ones have answered,
so a stalled server shows up as late answers instead of fewer calls (no coordinated omission).

Every call is recorded (start time, latency, status code, degradations), and a test asks for the calls started
within a window of time (``load.since(mark)``), so it can say "every answer after the kill was degraded".
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from aisle.common.v1 import common_pb2 as common

#: Where ``record`` appends one JSON line per scenario (for docs/reliability.md); unset records nothing.
REPORT_VARIABLE = "AISLE_RELIABILITY_REPORT"


@dataclass(frozen=True)
class Outcome:
    started: float  # time.monotonic() when the call was sent
    latency_ms: float
    code: str  # "OK" or the gRPC status code's name
    degradations: tuple[str, ...] = ()  # DegradationReason names
    reply: object = None
    detail: str = ""  # the error's details, or each degradation's "stage: detail"

    @property
    def ok(self) -> bool:
        return self.code == "OK"

    @property
    def degraded(self) -> bool:
        return bool(self.degradations)


Call = Callable[[float], Awaitable[object]]  # takes the timeout in seconds, returns the reply


@dataclass
class SteadyLoad:
    """Starts ``call(timeout)`` ``rate`` times a second until stopped; records every outcome.

    ``call`` is usually ``lambda timeout: stub.Recommend(request, timeout=timeout)``. ``timeout`` is the client
    deadline: generous by default, so a late answer is measured as late rather than cut off by the client.
    """

    call: Call
    rate: float = 40.0
    timeout: float = 5.0
    outcomes: list[Outcome] = field(default_factory=list)
    marks: dict[str, float] = field(default_factory=dict)
    _task: asyncio.Task | None = None
    _in_flight: set[asyncio.Task] = field(default_factory=set)

    async def __aenter__(self) -> SteadyLoad:
        self.marks["start"] = time.monotonic()
        self._task = asyncio.create_task(self._schedule())
        return self

    async def __aexit__(self, *exc_info) -> None:
        await self.stop()

    async def stop(self) -> None:
        """Stops starting calls and waits for every call in flight to end (each has its own deadline)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)
        self.marks.setdefault("stop", time.monotonic())

    async def _schedule(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while True:
            task = asyncio.create_task(self._one())
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            # Running late (a busy machine): start the missed calls at once rather than skipping them.

    async def _one(self) -> None:
        started = time.monotonic()
        try:
            reply = await self.call(self.timeout)
        except grpc.aio.AioRpcError as error:
            latency_ms = (time.monotonic() - started) * 1000
            self.outcomes.append(Outcome(started, latency_ms, error.code().name, detail=error.details() or ""))
            return
        latency_ms = (time.monotonic() - started) * 1000
        degradations = getattr(reply, "degradations", ())
        reasons = tuple(common.DegradationReason.Name(d.reason) for d in degradations)
        detail = "; ".join(f"{d.stage}: {d.detail}" for d in degradations)
        self.outcomes.append(Outcome(started, latency_ms, "OK", reasons, reply, detail))

    def mark(self, name: str) -> float:
        """Remembers now under ``name``; returns it."""
        self.marks[name] = at = time.monotonic()
        return at

    def between(self, start: float | str, end: float | str | None = None) -> list[Outcome]:
        """Calls started in [start, end) (times or mark names), in start order."""
        lo = self.marks[start] if isinstance(start, str) else start
        hi = float("inf") if end is None else (self.marks[end] if isinstance(end, str) else end)
        return sorted((o for o in self.outcomes if lo <= o.started < hi), key=lambda o: o.started)

    async def wait_calls(self, count: int, since: float | str, timeout: float = 15.0) -> list[Outcome]:
        """Waits until ``count`` calls started after ``since`` have ended; returns them."""
        deadline = time.monotonic() + timeout
        while len(done := self.between(since)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(done)} of {count} calls ended within {timeout} s")
            await asyncio.sleep(0.05)
        return done[:count]

    async def wait_until(self, predicate: Callable[[Outcome], bool], timeout: float = 15.0) -> float:
        """Waits for the first call started from now on whose outcome satisfies ``predicate``; returns the
        seconds it took, from now to that call's start."""
        began = time.monotonic()
        deadline = began + timeout
        while time.monotonic() < deadline:
            for outcome in self.between(began):
                if predicate(outcome):
                    return outcome.started - began
            await asyncio.sleep(0.05)
        recent = self.between(began)[-3:]
        raise AssertionError(f"no matching answer within {timeout} s; the latest were {recent}")


def summary(outcomes: Sequence[Outcome]) -> dict:
    """Counts and latency percentiles (ms) of ``outcomes``; the figures docs/reliability.md reports."""
    latencies = sorted(o.latency_ms for o in outcomes)
    errors: dict[str, int] = {}
    degraded: dict[str, int] = {}
    for outcome in outcomes:
        if not outcome.ok:
            errors[outcome.code] = errors.get(outcome.code, 0) + 1
        for reason in set(outcome.degradations):
            degraded[reason] = degraded.get(reason, 0) + 1
    answers = sum(o.ok for o in outcomes)
    return {
        "calls": len(outcomes),
        "answers": answers,
        "errors": errors,
        "degraded": sum(o.ok and o.degraded for o in outcomes),
        "degraded_pct": round(100 * sum(o.ok and o.degraded for o in outcomes) / max(answers, 1), 1),
        "degradations": degraded,
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(latencies[-1], 1) if latencies else 0.0,
    }


def percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    if len(sorted_values) == 1:
        return sorted_values[0]
    return statistics.quantiles(sorted_values, n=100, method="inclusive")[min(max(int(q), 1), 99) - 1]


def record(scenario: str, figures: dict) -> None:
    """Appends ``{"scenario": ..., **figures}`` to the file named by $AISLE_RELIABILITY_REPORT, if set, and prints
    it (``pytest -s`` shows it)."""
    line = json.dumps({"scenario": scenario, **figures}, sort_keys=False)
    print(f"RELIABILITY {line}")
    target = os.environ.get(REPORT_VARIABLE)
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as sink:
            sink.write(line + "\n")


@contextlib.asynccontextmanager
async def steady_load(
    target: str,
    method: Callable[[grpc.aio.Channel], Callable[..., Awaitable[object]]],
    request: object,
    *,
    rate: float = 40.0,
    timeout: float = 5.0,
    metadata: Sequence[tuple[str, str]] = (),
) -> AsyncIterator[SteadyLoad]:
    """``SteadyLoad`` of one request over one channel to ``target``; ``method(channel)`` is the stub's method, e.g.
    ``lambda channel: RecommendationServiceStub(channel).Recommend``."""
    async with grpc.aio.insecure_channel(target) as channel:
        bound = method(channel)
        load = SteadyLoad(
            lambda deadline: bound(request, timeout=deadline, metadata=tuple(metadata)), rate=rate, timeout=timeout
        )
        async with load:
            yield load
