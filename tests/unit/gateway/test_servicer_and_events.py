"""The servicer's cache rule and exposure records, the pipeline's failure rules, and the JSON-lines event log when
its file cannot be written."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from pathlib import Path

import grpc
import pytest
import yaml
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.core.errors import BudgetExhausted, DependencyUnavailable, InvalidArgument, Relayed, status_for
from services.gateway.candidates import Candidates
from services.gateway.components.base import ComponentBase, Params
from services.gateway.events import EventLogFull, JsonlEventSink, read_events
from services.gateway.pipeline import Pipeline, PipelineMetrics, SourceFailed
from services.gateway.policies import DEFAULT_POLICY_FILE, build_policies
from services.gateway.sessions import InMemorySessionStore, subject_key
from tests.unit.gateway.helpers import deps, state
from tests.unit.gateway.servicers import (
    ITEMS,
    Context,
    DownSessions,
    PopularRetrieval,
    guest,
    home,
    ids,
    recommend,
    servicer,
    shopper,
    shown_too_often,
)


async def test_a_guest_whose_exposures_shape_the_answer_is_not_served_from_the_cache():
    service = servicer()
    await shown_too_often(service, "capped", ["i0", "i1", "i2"])
    await recommend(service, guest("fresh"))  # fills the cache
    answer = await recommend(service, guest("capped"))
    assert service.deps.downstream.retrieval.calls == 2
    assert not {"i0", "i1", "i2"} & set(ids(answer)), "the guest's exposure cap applies"


async def test_a_guest_whose_exposures_shape_the_answer_does_not_fill_the_cache():
    service = servicer()
    await shown_too_often(service, "capped", ["i0", "i1", "i2"])
    await recommend(service, guest("capped"))
    assert len(service.cache) == 0
    other = await recommend(service, guest("fresh"))
    assert service.deps.downstream.retrieval.calls == 2
    assert ids(other)[:2] == ["i0", "i1"], "another guest's cap does not shape this answer"


async def test_guests_about_whom_nothing_is_known_still_share_the_cache():
    service = servicer()
    first = await recommend(service, guest("a"))
    second = await recommend(service, guest("b"))
    assert ids(second) == ids(first) and service.deps.downstream.retrieval.calls == 1


def explored(response: pb.RecommendResponse) -> list[str]:
    return [i.item_id for i in response.items if any(r.code == common.REASON_CODE_EXPLORATION for r in i.reasons)]


async def test_a_cache_hit_logs_the_exploration_picks_of_the_cached_answer():
    service = servicer()
    miss = await recommend(service, guest("a"))
    hit = await recommend(service, guest("b"))
    assert service.deps.downstream.retrieval.calls == 1 and explored(hit) == explored(miss) != []
    logged = [[i["item_id"] for i in r["items"] if i["exploration"]] for r in service.deps.events.records]
    assert logged == [explored(miss), explored(hit)]


async def test_a_session_store_outage_is_not_taken_for_a_retrieval_outage():
    service = servicer(items=[], sessions=DownSessions(), cache_ttl_s=0)
    request = pb.RecommendRequest(subject=common.Subject(user_id="u"), surface=common.SURFACE_HOME, consent=True, k=5)
    answer = await recommend(service, request)  # retrieval is healthy and finds nothing: a short answer
    assert not answer.items
    assert {(d.reason, d.stage) for d in answer.degradations} == {
        (common.DEGRADATION_REASON_SOURCE_DROPPED, "sessions"),
        (common.DEGRADATION_REASON_SHORT_ANSWER, "selection"),
    }


async def test_a_session_store_outage_is_one_warning_not_one_per_request(caplog):
    service = servicer(sessions=DownSessions(), cache_ttl_s=0)
    for n in range(20):
        answer = await recommend(service, shopper(f"u{n}"))
        assert [d.stage for d in answer.degradations] == ["sessions"]
    said = [r.getMessage() for r in caplog.records if "session store unavailable" in r.getMessage()]
    assert len(said) == 1


async def test_a_stored_event_of_a_type_this_build_does_not_know_is_not_forwarded():
    """A newer gateway sharing the Redis sessions (a rolling update) stored an event type retrieval and ranking
    refuse: forwarded, it cost the shopper their personal answers for the session's lifetime."""
    service = servicer(cache_ttl_s=0)
    seen = []

    class Recording(PopularRetrieval):
        async def Retrieve(self, request, timeout=None):  # noqa: N802
            seen.append([(i.item_id, i.event_type) for i in request.history])
            return await super().Retrieve(request, timeout)

    service.deps.downstream.retrieval = Recording(ITEMS)
    key = subject_key(common.Subject(user_id="alice@example.com"))
    await service.deps.sessions.append(
        key,
        [
            common.Interaction(item_id="i1", event_type=7),
            common.Interaction(item_id="i2", event_type=common.EVENT_TYPE_VIEW),
        ],
    )
    answer = await recommend(service, shopper())
    assert seen == [[("i2", common.EVENT_TYPE_VIEW)]] and not answer.degradations


def test_the_event_logs_readers_apply_its_erasure_records(tmp_path):
    log = tmp_path / "events.jsonl"
    records = [
        {"type": "purchase", "subject": "ann", "item_id": "a"},
        {"type": "purchase", "subject": "bob", "item_id": "b"},
        {"type": "forget", "subject": "ann", "at": 1.0},
        {"type": "view", "subject": "ann", "item_id": "c"},  # after the erasure: a new, consented session
    ]
    log.write_text("".join(json.dumps(r) + "\n" for r in records))
    assert [(r["type"], r["subject"]) for r in read_events(log)] == [
        ("purchase", "bob"),
        ("forget", "ann"),
        ("view", "ann"),
    ]


async def test_a_consenting_guest_whose_session_cannot_be_read_is_not_served_an_unflagged_cached_answer():
    """A cached answer ignores the guest's exposure caps and history: while the store is down it must not stand in
    for the guest's own answer, which says the sessions were dropped."""
    service = servicer()
    await shown_too_often(service, "capped", ["i0", "i1", "i2"])
    await recommend(service, home(common.Subject(session_id="anonymous"), consent=False))  # fills the guests' entry
    assert len(service.cache) == 1
    service.deps.sessions.history = DownSessions().history
    answer = await recommend(service, guest("capped"))
    assert [s.stage for s in answer.stage_latencies][0] != "cache", "answered from the shared cache"
    assert [(d.reason, d.stage) for d in answer.degradations] == [
        (common.DEGRADATION_REASON_SOURCE_DROPPED, "sessions")
    ]


class HangingSessions(DownSessions):
    """A session store that never answers (a Redis node gone: each connection attempt waits a second)."""

    async def history(self, key):
        await asyncio.sleep(60)


async def test_a_session_store_that_does_not_answer_costs_personalisation_not_the_deadline():
    service = servicer(sessions=HangingSessions(), cache_ttl_s=0)
    started = time.monotonic()
    answer = await recommend(service, shopper(k=5))
    elapsed = time.monotonic() - started
    assert len(answer.items) == 5
    assert [(d.stage, d.detail) for d in answer.degradations] == [
        ("sessions", "session store unavailable: TimeoutError")
    ]
    # Within its share of the budget (a tenth of total_budget_ms, 12 ms), not the store's own timeouts (a Redis
    # connection attempt waits 1 s); the bound leaves room for a stall of a busy machine.
    assert elapsed < 0.5, elapsed


class UnwritableSessions(InMemorySessionStore):
    """A session store whose writes fail (a Redis write stall past the client's 50 ms)."""

    async def add_exposures(self, key, item_ids):
        raise ConnectionError("session store write timed out")


async def test_an_exposure_record_reaches_the_log_when_the_session_store_cannot_count_it():
    service = servicer(sessions=UnwritableSessions(), cache_ttl_s=0)
    answer = await recommend(service, shopper(k=5))
    [record] = [r for r in service.deps.events.records if r["type"] == "exposure"]
    assert record["tracking_token"] == answer.tracking_token and len(record["items"]) == 5


class StricterRetrieval(PopularRetrieval):
    """Retrieval whose limit on excluded items is set lower than the gateway's: it refuses more than 2."""

    async def Retrieve(self, request, timeout=None):  # noqa: N802
        if len(request.exclusions.item_ids) > 2:
            count = len(request.exclusions.item_ids)
            status = status_for(InvalidArgument({"exclusions.item_ids": f"at most 2 items, got {count}"}))
            trailing = grpc.aio.Metadata(*status.trailing_metadata)
            raise grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), trailing, status.details)
        return await super().Retrieve(request, timeout)


async def test_a_request_retrieval_refuses_is_the_callers_error_not_a_retrieval_outage():
    """A request that passes the gateway's own checks and that retrieval refuses (its limits set lower there).
    The caller gets retrieval's INVALID_ARGUMENT with its field, not UNAVAILABLE "retrieval is down" (or a
    fallback answer flagged so), which a client would retry and an operator be paged for."""
    service = servicer(cache_ttl_s=0)
    service.deps.downstream.retrieval = StricterRetrieval(ITEMS)
    for region in ("", "GB"):  # as start-up warms them
        service.deps.popular_cache.store(region, ITEMS[:20])
    request = guest("abroad")
    request.exclusions.item_ids.extend(ITEMS[-3:])
    with pytest.raises(Relayed) as refused:
        await recommend(service, request)
    status = status_for(refused.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "exclusions.item_ids" in status.details
    assert len((await recommend(service, guest("home"))).items) == 5  # GB is answered


class DownRetrieval(PopularRetrieval):
    async def Retrieve(self, request, timeout=None):  # noqa: N802
        raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "down")


@pytest.mark.parametrize(("cached", "said"), [("DE", "Popular in DE"), ("", "Popular"), ("GB", "Popular in GB")])
async def test_a_fallback_answer_from_another_regions_list_says_whose_list_it_is(cached, said):
    """With ``other_regions`` the fallback may serve Germany's list to a GB shopper: telling them the items are
    popular in GB would be false."""
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    raw["policies"]["home"]["fallback"] = [{"component": "CachedPopularSource", "params": {"other_regions": True}}]
    service = servicer(cache_ttl_s=0)
    service.policies = build_policies(raw, service.catalog, service.deps)
    service.deps.downstream.retrieval = DownRetrieval(ITEMS)
    service.deps.popular_cache.store(cached, ITEMS[:20])
    answer = await recommend(service, guest("abroad"))  # a GB request
    assert len(answer.items) == 5
    popular = common.REASON_CODE_POPULAR_IN_REGION
    assert {r.text for item in answer.items for r in item.reasons if r.code == popular} == {said}
    assert [d.reason for d in answer.degradations] == [common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE]


@pytest.mark.parametrize(("regional", "said"), [(True, "Popular in GB"), (False, "Popular")])
async def test_popular_items_are_called_the_regions_only_when_its_sales_ranked_them(regional, said):
    """Retrieval's index without sales by region (as `aisle train` writes it) ranks every region by the shop's
    sales: "Popular in GB" would be false, in the answer and in the fallback answer from the list it left cached."""
    service = servicer(cache_ttl_s=0)
    service.deps.downstream.retrieval = PopularRetrieval(ITEMS, regional=regional)
    popular = common.REASON_CODE_POPULAR_IN_REGION

    def popular_reasons(answer):
        return {r.text for item in answer.items for r in item.reasons if r.code == popular}

    assert popular_reasons(await recommend(service, guest("abroad"))) == {said}  # a GB request
    service.deps.downstream.retrieval = DownRetrieval(ITEMS)
    fallback = await recommend(service, guest("abroad"))
    assert [d.reason for d in fallback.degradations] == [common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE]
    assert len(fallback.items) == 5 and popular_reasons(fallback) == {said}


async def test_a_variant_override_without_a_running_experiment_is_refused_not_silently_ignored():
    raw = yaml.safe_load(DEFAULT_POLICY_FILE.read_text())
    del raw["experiment"]
    service = servicer(cache_ttl_s=0)
    service.policies = build_policies(raw, service.catalog, service.deps)
    with pytest.raises(InvalidArgument) as refused:
        await recommend(service, guest("tester"))  # asks for the control variant
    assert "experiment_variant_override: no experiment is running" in str(status_for(refused.value).details)
    request = guest("tester")
    request.experiment_variant_override = ""
    answer = await recommend(service, request)
    assert len(answer.items) == 5 and answer.experiment_variant == ""


async def test_a_degradation_reason_this_gateway_does_not_know_is_passed_on_not_an_internal_error():
    """A retrieval rolled out first with a new DegradationReason: proto3 keeps the number, and naming it for the
    metric raised, so every answer carrying it became INTERNAL after it was computed."""

    class NewerRetrieval(PopularRetrieval):
        async def Retrieve(self, request, timeout=None):  # noqa: N802
            answer = await super().Retrieve(request, timeout)
            answer.degradations.add(reason=99, stage="shard s1", detail="a reason added after this gateway")
            return answer

    service, registry = servicer(cache_ttl_s=0), CollectorRegistry()
    service.metrics = PipelineMetrics(registry)
    service.deps.downstream.retrieval = NewerRetrieval(ITEMS)
    answer = await recommend(service, guest("someone"))
    assert len(answer.items) == 5 and [d.reason for d in answer.degradations] == [99]
    assert registry.get_sample_value("aisle_gateway_degraded_total", {"reason": "UNKNOWN"}) == 1


async def test_an_answer_degraded_twice_for_one_reason_counts_once_for_it():
    """The alerts read ``aisle_gateway_degraded_total`` over Recommend answers as a share of answers: a router that
    dropped two shards (one SOURCE_DROPPED each) made it 200 %."""

    class TwoShardsDown(PopularRetrieval):
        async def Retrieve(self, request, timeout=None):  # noqa: N802
            answer = await super().Retrieve(request, timeout)
            for shard in ("s1", "s2"):
                answer.degradations.add(reason=common.DEGRADATION_REASON_SOURCE_DROPPED, stage=f"shard {shard}")
            return answer

    service, registry = servicer(cache_ttl_s=0), CollectorRegistry()
    service.metrics = PipelineMetrics(registry)
    service.deps.downstream.retrieval = TwoShardsDown(ITEMS)
    answer = await recommend(service, guest("someone"))
    assert len(answer.degradations) == 2  # both are told
    assert (
        registry.get_sample_value("aisle_gateway_degraded_total", {"reason": "DEGRADATION_REASON_SOURCE_DROPPED"}) == 1
    )


async def test_a_refusal_of_what_the_gateway_added_is_a_failed_source_not_the_callers_error():
    """Retrieval's history limit set lower than the gateway's: the stored session history (not the caller's
    request) is refused. The caller gets the fallback answer, flagged, not INVALID_ARGUMENT over a field it never
    sent."""

    class StrictRetrieval(PopularRetrieval):
        async def Retrieve(self, request, timeout=None):  # noqa: N802
            status = status_for(InvalidArgument({"history": "must have at most 50 interactions, got 60"}))
            trailing = grpc.aio.Metadata(*status.trailing_metadata)
            raise grpc.aio.AioRpcError(status.code, grpc.aio.Metadata(), trailing, status.details)

    service = servicer(cache_ttl_s=0)
    service.deps.downstream.retrieval = StrictRetrieval(ITEMS)
    service.deps.popular_cache.store("GB", ITEMS[:20])
    answer = await recommend(service, guest("regular"))
    assert len(answer.items) == 5
    assert common.DEGRADATION_REASON_SOURCE_DROPPED in [d.reason for d in answer.degradations]


class Source(ComponentBase):
    kind = "source"
    share = 0.5
    fail_open = True

    def __init__(self, name: str, answer=(), error: Exception | None = None, slow: bool = False, fail_open=True):
        super().__init__(name, Params(), deps())
        self.answer, self.error, self.slow, self.fail_open, self.fetched = list(answer), error, slow, fail_open, 0
        self.cancelled = False

    async def fetch(self, request_state, timeout):
        self.fetched += 1
        if self.slow:
            try:
                await asyncio.sleep(5)
            except asyncio.CancelledError:
                self.cancelled = True
                raise
        if self.error is not None:
            raise self.error
        return Candidates.of(self.answer, common.CANDIDATE_SOURCE_POPULARITY)


def pipeline(sources, fallback=()) -> Pipeline:
    return Pipeline("p", "1", list(sources), list(fallback), [], [], [], [])


async def test_a_session_degradation_does_not_bring_in_the_fallback():
    fallback = Source("Fallback", ["i1"])
    request_state = state(budget_s=0.2)
    request_state.degrade(common.DEGRADATION_REASON_SOURCE_DROPPED, "sessions", "session store unavailable")
    items = await pipeline([Source("Retrieval")], [fallback]).run(request_state, PipelineMetrics(CollectorRegistry()))
    assert not len(items) and fallback.fetched == 0 and not request_state.retrieval_failed


async def test_a_dropped_source_that_left_nothing_brings_in_the_fallback():
    fallback = Source("Fallback", ["i1"])
    request_state = state(budget_s=0.2)
    dropped = Source("Retrieval", error=SourceFailed("down", common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE))
    items = await pipeline([dropped], [fallback]).run(request_state, PipelineMetrics(CollectorRegistry()))
    assert items.ids() == ["i1"] and request_state.retrieval_failed


async def test_a_fail_closed_source_that_failed_is_unavailable_not_internal():
    down = Source("Retrieval", error=SourceFailed("retrieval UNAVAILABLE"), fail_open=False)
    with pytest.raises(DependencyUnavailable) as failure:
        await pipeline([down]).run(state(budget_s=0.2), PipelineMetrics(CollectorRegistry()))
    assert failure.value.reason == "RETRIEVAL_UNAVAILABLE" and "Retrieval" in failure.value.message
    assert status_for(failure.value).code == grpc.StatusCode.UNAVAILABLE


async def test_a_fail_closed_source_that_timed_out_is_deadline_exceeded_not_internal():
    slow = Source("Retrieval", slow=True, fail_open=False)
    with pytest.raises(BudgetExhausted) as failure:
        await pipeline([slow]).run(state(budget_s=0.1), PipelineMetrics(CollectorRegistry()))
    assert failure.value.reason == "RETRIEVAL_TIMEOUT" and "Retrieval" in failure.value.message
    assert status_for(failure.value).code == grpc.StatusCode.DEADLINE_EXCEEDED


async def test_a_fail_closed_source_that_failed_cancels_the_other_sources_calls():
    """The answer is an error at once: the other sources' calls kept retrieval busy to the end of their slices, and
    could still write to the request's state and the popular cache after it was answered."""
    slow = Source("Trending", slow=True)
    down = Source("TwoTower", error=SourceFailed("retrieval UNAVAILABLE"), fail_open=False)
    with pytest.raises(DependencyUnavailable):
        await pipeline([down, slow]).run(state(budget_s=2), PipelineMetrics(CollectorRegistry()))
    assert slow.fetched == 1 and slow.cancelled


class RefusedLog(ComponentBase):
    kind = "side_effect"

    async def run(self, request_state, items, response):
        raise EventLogFull("the event log cannot be written now (OSError)")


async def test_a_refused_exposure_record_is_one_warning_not_a_traceback(caplog):
    logged = Pipeline("p", "1", [], [], [], [], [], [RefusedLog("ExposureLogger", Params(), deps())])
    registry = CollectorRegistry()
    await logged.after_response(state(), Candidates.empty(), pb.RecommendResponse(), PipelineMetrics(registry))
    [record] = [r for r in caplog.records if "ExposureLogger" in r.getMessage()]
    assert record.levelno == logging.WARNING and record.exc_info is None and "OSError" in record.getMessage()
    labels = {"policy": "p", "component": "ExposureLogger", "reason": "event_log_full"}
    assert registry.get_sample_value("aisle_gateway_side_effect_failures_total", labels) == 1  # counted, not lost


async def eventually(condition, within_s: float = 2.0) -> None:
    deadline = time.monotonic() + within_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_the_event_log_writer_survives_a_failed_append_and_writes_the_batch_later(tmp_path: Path, caplog):
    path = tmp_path / "events.jsonl"
    sink = JsonlEventSink(path, max_pending=100, retry_delay_s=0.01)
    await sink.start()
    path.mkdir()  # a transient failure: appending raises IsADirectoryError
    await sink.write([{"n": 1}, {"n": 2}])
    await eventually(lambda: sink.failure is not None)
    with pytest.raises(EventLogFull, match="IsADirectoryError"):
        await sink.write([{"n": 3}])  # refused, not accepted into a log that cannot be written
    path.rmdir()
    await eventually(lambda: sink.failure is None)
    await sink.write([{"n": 4}])
    await sink.close()
    assert [r["n"] for r in read_events(path)] == [1, 2, 4]
    failures = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert failures and all(r.exc_info is None for r in failures), "one line per failed attempt, no traceback"


async def test_the_event_log_writes_to_a_pipe_as_a_container_s_stdout_is(tmp_path: Path):
    # In Kubernetes the log path is /dev/stdout, a pipe to the container runtime: it cannot seek or truncate.
    path = tmp_path / "stdout"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # the runtime's end, open before the writer's
    try:
        sink = JsonlEventSink(path, max_pending=100, retry_delay_s=0.01)
        await sink.start()
        await sink.write([{"n": 1}, {"n": 2}])
        await asyncio.wait_for(sink.flush(), timeout=5)
        assert sink.failure is None
        await sink.write([{"n": 3}])
        await sink.close()
        lines = os.read(reader, 65536).decode().splitlines()
    finally:
        os.close(reader)
    assert [json.loads(line)["n"] for line in lines] == [1, 2, 3]


async def test_close_returns_within_its_bound_and_says_what_was_lost(tmp_path: Path, caplog, monkeypatch):
    path = tmp_path / "events.jsonl"
    sink = JsonlEventSink(path, max_pending=100, retry_delay_s=0.01, close_timeout_s=0.2)
    await sink.start()
    path.mkdir()  # stays broken
    await sink.write([{"n": 1}, {"n": 2}, {"n": 3}])
    # What close hands to its wait on the writer: the bound, never None (an unbounded wait on a broken disk).
    bounds: list[float | None] = []
    wait = asyncio.wait

    async def recorded_wait(tasks, *, timeout=None, return_when=asyncio.ALL_COMPLETED):
        if sink._writer in tasks:
            bounds.append(timeout)
            assert timeout is not None, "close waits for the writer without a bound"
        return await wait(tasks, timeout=timeout, return_when=return_when)

    monkeypatch.setattr(asyncio, "wait", recorded_wait)
    await sink.close()
    assert bounds == [0.2]
    assert sink._writer.done()
    assert "3 events could not be written" in caplog.text
    with pytest.raises(EventLogFull):
        await sink.write([{"n": 4}])


async def test_a_stopped_writer_refuses_writes(tmp_path: Path):
    sink = JsonlEventSink(tmp_path / "events.jsonl", max_pending=100)
    await sink.start()
    sink._writer.cancel()
    await asyncio.sleep(0)
    with pytest.raises(EventLogFull, match="stopped"):
        await sink.write([{"n": 1}])
    await sink.close()


async def test_the_buffer_is_bounded_in_bytes_as_well_as_in_records(tmp_path: Path):
    # A log agent that stops reading /dev/stdout: 10,000 exposure records of k=200 would hold about 165 MiB.
    path = tmp_path / "stdout"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # opened, never read: the pipe fills, the writer waits
    try:
        sink = JsonlEventSink(path, max_pending=10_000, max_pending_bytes=512 * 1024)
        await sink.start()
        record = {"type": "exposure", "items": ["x" * 40] * 200}  # about 9 KB encoded
        accepted = 0
        with pytest.raises(EventLogFull, match="bytes of events pending"):
            for _ in range(1000):
                await sink.write([record])
                accepted += 1
                await asyncio.sleep(0)  # the writer takes what the pipe (64 KiB) holds, then blocks
        assert accepted < 100  # about (512 KiB + the pipe's 64 KiB) / 9 KB, not 1,000
        closing = asyncio.ensure_future(sink.close())
        while not closing.done():  # the reader comes back: what was accepted is written, and close ends
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1 << 20)
            await asyncio.sleep(0.01)
        await closing
        assert sink.queue.qsize() == 0 and sink._pending_bytes == 0
    finally:
        os.close(reader)


async def test_a_call_larger_than_the_byte_budget_is_taken_when_nothing_is_pending_not_refused_forever(
    tmp_path: Path,
):
    """With a byte budget smaller than one full TrackEvents call, the call was refused on every retry, with an
    empty buffer ("0 bytes of events pending"), and its events lost once the caller gave up."""
    path = tmp_path / "stdout"
    os.mkfifo(path)
    reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # never read meanwhile: what is taken stays pending
    try:
        sink = JsonlEventSink(path, max_pending=10_000, max_pending_bytes=64 * 1024)
        await sink.start()
        call = [{"type": "purchase", "item_id": "x" * 200}] * 1000  # about 230 KB encoded
        await sink.write(call)  # nothing pending: taken
        with pytest.raises(EventLogFull, match="bytes of events pending"):
            await sink.write(call[:1])  # the budget holds for what comes while it is pending
        closing = asyncio.ensure_future(sink.close())
        while not closing.done():
            with contextlib.suppress(BlockingIOError):
                os.read(reader, 1 << 20)
            await asyncio.sleep(0.01)
        await closing
        assert sink._pending_bytes == 0
    finally:
        os.close(reader)


async def test_nothing_to_write_is_not_refused_while_the_log_cannot_be_written(tmp_path: Path):
    # TrackEvents without consent writes nothing: its feedback counts, whatever the log's state.
    path = tmp_path / "events.jsonl"
    sink = JsonlEventSink(path, max_pending=100, retry_delay_s=0.01)
    await sink.start()
    path.mkdir()  # appending raises IsADirectoryError
    await sink.write([{"n": 1}])
    await eventually(lambda: sink.failure is not None)
    await sink.write([])
    with pytest.raises(EventLogFull):
        await sink.write([{"n": 2}])
    path.rmdir()
    await sink.close()


async def test_a_record_that_cannot_be_encoded_is_refused_and_the_log_keeps_writing(tmp_path: Path):
    sink = JsonlEventSink(tmp_path / "events.jsonl", max_pending=100)
    await sink.start()
    with pytest.raises(TypeError):
        await sink.write([{"n": 1}, {"n": object()}])
    await sink.write([{"n": 2}])
    await sink.close()
    assert [r["n"] for r in read_events(tmp_path / "events.jsonl")] == [2]


class FailsOnceSessions(InMemorySessionStore):
    """A store that fails one call's appends whole (Redis: one transaction that never reached EXEC)."""

    def __init__(self):
        super().__init__()
        self.failed = False

    async def append_all(self, batches, batch_id="", digest=b""):
        if not self.failed:
            self.failed = True
            raise ConnectionError("session store write timed out")
        return await super().append_all(batches, batch_id, digest)


class StoresThenTimesOut(InMemorySessionStore):
    """A store that takes one call's events, then its reply is lost (Redis past the client's 50 ms)."""

    def __init__(self):
        super().__init__()
        self.lost = False

    async def append_all(self, batches, batch_id="", digest=b""):
        outcome = await super().append_all(batches, batch_id, digest)
        if not self.lost:
            self.lost = True
            raise TimeoutError("reply lost")
        return outcome


async def test_a_retried_track_events_call_stores_each_shoppers_events_once():
    """Appended one subject at a time, a failure at the second left the first's stored, and the caller's retry
    (SESSIONS_UNAVAILABLE says retry) stored them twice, taking two of the shopper's history slots."""
    service = servicer(sessions=FailsOnceSessions())
    events = [
        pb.TrackedEvent(subject=common.Subject(user_id=user), item_id=item, event_type=common.EVENT_TYPE_PURCHASE)
        for user, item in (("alice", "i1"), ("bob", "i2"))
    ]
    for event in events:
        event.consent = True
    request = pb.TrackEventsRequest(events=events)
    with pytest.raises(DependencyUnavailable):
        await service.TrackEvents(request, Context())
    assert (await service.TrackEvents(request, Context())).accepted_count == 2
    for user, item in (("alice", "i1"), ("bob", "i2")):
        history = await service.deps.sessions.history(subject_key(common.Subject(user_id=user), "aisle"))
        assert [e.item_id for e in history] == [item]


def purchases(*users: str, batch_id: str = "", item: str = "i1") -> pb.TrackEventsRequest:
    events = [
        pb.TrackedEvent(
            subject=common.Subject(user_id=user), item_id=item, event_type=common.EVENT_TYPE_PURCHASE, consent=True
        )
        for user in users
    ]
    return pb.TrackEventsRequest(events=events, batch_id=batch_id)


async def alices_history(service) -> list[str]:
    return [e.item_id for e in await service.deps.sessions.history(subject_key(common.Subject(user_id="alice")))]


@pytest.mark.parametrize("sessions", [InMemorySessionStore, StoresThenTimesOut])
async def test_a_batch_retried_after_it_was_stored_is_not_stored_or_counted_again(sessions):
    """A TrackEvents reply lost after the events were stored (a timeout): the retry, with the same batch_id, gets
    the same answer and stores nothing again, and the bandit counts the batch once (also when the first attempt
    failed after the store took it). The log's records carry the batch and each event's place in it."""
    service = servicer(sessions=sessions())
    service.deps.feedback.exposed(["i1"])
    request = purchases("alice", "bob", batch_id="b-42")
    request.events[1].consent = False  # bob's is counted for the bandit, not stored
    answers = []
    for _ in range(2):
        try:
            answers.append(await service.TrackEvents(request, Context()))
        except DependencyUnavailable:
            answers.append(None)
    assert [(a.accepted_count, a.rejected_count) for a in answers if a] == [(2, 0)] * len([a for a in answers if a])
    assert answers[-1] is not None
    assert await alices_history(service) == ["i1"]
    assert service.deps.feedback.successes == {"i1": 2}  # both events of the batch, once
    records = service.deps.events.records
    assert [(r["batch_id"], r["batch_index"]) for r in records] == [("b-42", 0), ("b-42", 0)]  # a copy per attempt
    # Another batch, or none, is stored.
    await service.TrackEvents(purchases("alice", batch_id="b-43"), Context())
    await service.TrackEvents(purchases("alice"), Context())
    await service.TrackEvents(purchases("alice"), Context())
    assert await alices_history(service) == ["i1"] * 4
    with pytest.raises(InvalidArgument) as refused:
        await service.TrackEvents(purchases("alice", batch_id="x" * 300), Context())
    assert "batch_id" in refused.value.violations


async def test_a_batch_id_given_to_other_events_is_refused_not_dropped_as_a_retry():
    """Two producers numbering batches alike, or a counter that restarts: the second batch was answered accepted
    and silently not stored."""
    service = servicer()
    await service.TrackEvents(purchases("alice", batch_id="7"), Context())
    with pytest.raises(InvalidArgument) as refused:
        await service.TrackEvents(purchases("alice", batch_id="7", item="i2"), Context())
    assert "was given to other events" in refused.value.violations["batch_id"]
    assert await alices_history(service) == ["i1"]
    # Another replica saw the id first: the session store says so.
    other = servicer(sessions=service.deps.sessions)
    with pytest.raises(InvalidArgument):
        await other.TrackEvents(purchases("alice", batch_id="7", item="i3"), Context())
    assert (await other.TrackEvents(purchases("alice", batch_id="7"), Context())).accepted_count == 1
    assert await alices_history(service) == ["i1"]


async def test_tracked_events_keep_the_time_the_shop_gives_them():
    service = servicer()
    event = pb.TrackedEvent(
        subject=common.Subject(user_id="u1"), item_id="i1", event_type=common.EVENT_TYPE_PURCHASE, consent=True
    )
    dated = pb.TrackedEvent()
    dated.CopyFrom(event)
    dated.event_time.FromSeconds(1_700_000_000)
    dated.event_time.nanos = 250_000_000
    await service.TrackEvents(pb.TrackEventsRequest(events=[dated, event]), Context())
    records = service.deps.events.records
    assert [r["event_time"] for r in records] == [1_700_000_000.25, None]
    assert all(r["at"] > 1_700_000_000 for r in records)  # the time it was received, as before


async def test_the_subject_keys_in_the_log_follow_the_configured_salt():
    event = pb.TrackedEvent(
        subject=common.Subject(user_id="ann@example.com"), item_id="i1", event_type=common.EVENT_TYPE_VIEW, consent=True
    )
    keys = []
    for salt in ("aisle", "a-secret", "another-secret"):
        service = servicer(salt=salt)
        await service.TrackEvents(pb.TrackEventsRequest(events=[event]), Context())
        keys.append(service.deps.events.records[0]["subject"])
    assert keys[0] == subject_key(event.subject)  # the public default
    assert len(set(keys)) == 3 and not any("ann" in key for key in keys)
