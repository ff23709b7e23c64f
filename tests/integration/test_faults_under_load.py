"""Faults under steady open-loop load against the three services running as separate processes (as in production):
a killed and restarted ranking service, a slowed retrieval, a broken model and a corrupt index published while
serving, and SIGTERM to each service. Every call is accounted for; the figures go to docs/reliability.md
(``AISLE_RELIABILITY_REPORT=path`` appends them as JSON lines, ``-s`` prints them)."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as ranking_grpc
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as retrieval_grpc
from services.ranking.model_config import ModelConfigError
from services.ranking.repository import model_versions, publish
from services.retrieval.index import index_versions
from tests.integration.ranking.breakers import poison_weights
from tests.integration.requests import home_request
from tests.integration.test_recommend_path import history_of
from tests.support.fault_stack import FaultStack, fault_stack
from tests.support.faulty_service import HOLD_METADATA
from tests.support.load import Outcome, record, steady_load, summary

pytestmark = pytest.mark.e2e

#: The gateway's request budget in these tests (its default).
BUDGET_MS = 120.0
#: What a client may see on top of the budget on this 2-core machine shared with other engineers' benchmarks and
#: training runs (load average 5-6 measured while these tests ran): transport, scheduling, the client itself.
SLACK_MS = 400.0
#: How long a slowed retrieval holds each call: far past its 42 ms slice and past budget plus slack, so an answer
#: that waited for it would be late.
SLOW_MS = 2000.0
#: Offered load, requests per second.
RATE = 40.0
#: Share of answers that may be degraded for timing reasons other than the fault: on this shared 2-core machine a
#: scheduling hiccup now and then makes a source miss its 42 ms slice (SOURCE_DROPPED) or ranking its 54 ms
#: (RANKING_TIMEOUT). Recorded, not hidden; the fault's own flags are checked separately and strictly.
NOISE = 0.25
#: How long a held call (SIGTERM tests) stays in flight.
HOLD_MS = 300

FALLBACK_CACHE = common.CANDIDATE_SOURCE_FALLBACK_CACHE
#: A dependency away (the flags of a killed or stopped process).
RANKING_DOWN = ("DEGRADATION_REASON_RANKING_UNAVAILABLE",)
GONE_FLAGS = ("DEGRADATION_REASON_RANKING_UNAVAILABLE", "DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE")
#: Ranking did not score the answer (away, or too late).
RANKING_FLAGS = ("DEGRADATION_REASON_RANKING_UNAVAILABLE", "DEGRADATION_REASON_RANKING_TIMEOUT")


def copy_shop(trained, root: Path) -> SimpleNamespace:
    """The trained model repository, index and catalog copied, so publishing into them touches no other test."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(trained.model_repository, root / "model_repository")
    shutil.copytree(trained.index_root, root / "index")
    shutil.copy(trained.root / "catalog.json", root / "catalog.json")
    return SimpleNamespace(root=root, model_repository=root / "model_repository", index_root=root / "index")


@pytest.fixture(scope="module")
def shop(trained, tmp_path_factory) -> SimpleNamespace:
    return copy_shop(trained, tmp_path_factory.mktemp("faults") / "shop")


@pytest.fixture(scope="module")
def processes(shop) -> FaultStack:
    stack = fault_stack(shop.root / "run", shop, delay_ms=SLOW_MS, gateway={"total_budget_ms": str(BUDGET_MS)})
    stack.start()
    yield stack
    stack.stop()


@pytest.fixture
def stack(processes: FaultStack, trained) -> FaultStack:
    """The module's processes, every one running, SERVING, not slowed (whatever the previous test did) and warm."""
    processes.ensure_running()
    warm(processes, trained)
    return processes


def warm(stack: FaultStack, trained, calls: int = 10) -> None:
    """A few calls first: a process's first calls pay for connections and lazy set-up."""
    with grpc.insecure_channel(stack.gateway_target) as channel:
        for _ in range(calls):
            pb_grpc.RecommendationServiceStub(channel).Recommend(home_request(history_of(trained), k=5), timeout=5)


def recommend_load(stack: FaultStack, request, **options):
    return steady_load(
        stack.gateway_target, lambda channel: pb_grpc.RecommendationServiceStub(channel).Recommend, request, **options
    )


def answered(outcome: Outcome) -> bool:
    """An answer. (A call whose gateway budget ran out used to fail; test_spent_budget.py keeps it answering.)"""
    return outcome.ok


def show(outcomes: list[Outcome]) -> str:
    """An assertion message: the figures, and the first odd outcomes."""
    odd = [o for o in outcomes if not normal(o)][:3]
    return json.dumps(summary(outcomes)) + "".join(
        f"\n  {o.code} {o.degradations} {o.latency_ms:.0f} ms {o.detail}" for o in odd
    )


def normal(outcome: Outcome) -> bool:
    return outcome.ok and not outcome.degraded


def mostly_normal(outcomes: list[Outcome], never: tuple[str, ...] = ()) -> bool:
    """Every call answered, none flagged with a reason in ``never``, at most ``NOISE`` of them degraded at all."""
    return (
        bool(outcomes)
        and all(answered(o) and not set(never) & set(o.degradations) for o in outcomes)
        and sum(o.degraded for o in outcomes) <= NOISE * len(outcomes)
    )


def late(outcomes: list[Outcome]) -> list[Outcome]:
    return [o for o in outcomes if o.latency_ms > BUDGET_MS + SLACK_MS]


def versions_of(outcome: Outcome) -> dict[str, str]:
    return {v.kind: v.version for v in outcome.reply.versions}


async def test_killed_ranking_degrades_every_answer_then_recovers_without_a_gateway_restart(stack, trained):
    gateway_pid = stack.pid("gateway")
    async with recommend_load(stack, home_request(history_of(trained), k=5), rate=RATE) as load:
        await asyncio.sleep(1.0)
        load.mark("kill")
        await asyncio.to_thread(stack.kill, "ranking")
        load.mark("killed")
        await asyncio.sleep(2.0)
        load.mark("restart")
        restart_s = await asyncio.to_thread(stack.restart, "ranking")
        load.mark("serving")
        recovered_after_s = await load.wait_until(
            lambda o: o.ok and not set(RANKING_FLAGS) & set(o.degradations), timeout=10
        )
        load.mark("recovered")
        await asyncio.sleep(1.0)
    # Down: from the kill until the restart begins (once it begins, the new process may serve at any moment).
    before, down, after = load.between("start", "kill"), load.between("killed", "restart"), load.between("recovered")
    everything = load.between("start")
    # The restart itself (a new Python process importing ONNX Runtime on the same two cores) is recorded, not
    # judged: the machine, not the gateway, decides those latencies. Everything else is held to the budget.
    judged = load.between("start", "restart") + load.between("recovered")
    assert all(answered(o) for o in judged), show(judged)
    assert not late(judged), show(late(judged))
    assert mostly_normal(before, never=RANKING_DOWN), show(before)
    assert len(down) >= 2 * RATE * 0.8
    # Flagged: UNAVAILABLE (refused connections), or TIMEOUT when the gateway's retries of that ran out the slice.
    assert all(set(RANKING_FLAGS) & set(o.degradations) for o in down if o.ok), show(down)
    assert all(len(o.reply.items) == 5 for o in down if o.ok)
    assert mostly_normal(after, never=RANKING_DOWN), show(after)
    assert stack.pid("gateway") == gateway_pid  # the same gateway process throughout
    record(
        "ranking killed (SIGKILL) and restarted",
        {
            "rate_rps": RATE,
            "all": summary(everything),
            "ranking_down": summary(down),
            "ranking_restarting (not judged)": summary(load.between("restart", "recovered")),
            "restart_to_serving_s": round(restart_s, 2),
            "serving_to_normal_answers_s": round(recovered_after_s, 2),
            "after_recovery": summary(after),
        },
    )


async def test_slowed_retrieval_serves_the_cached_fallback_within_budget_then_recovers(stack, trained):
    async with recommend_load(stack, home_request(history_of(trained), k=5), rate=RATE) as load:
        await asyncio.sleep(1.0)
        load.mark("slow")
        stack.slow("retrieval", on=True)
        await asyncio.sleep(2.0)
        load.mark("fast")
        stack.slow("retrieval", on=False)
        recovered_after_s = await load.wait_until(
            lambda o: o.ok and FALLBACK_CACHE not in {s for i in o.reply.items for s in i.sources}, timeout=10
        )
        load.mark("recovered")
        await asyncio.sleep(1.0)
    everything = load.between("start")
    # The switch is a signal: give it 50 ms to land, and leave out the calls that reach retrieval after it is off.
    slowed = load.between(load.marks["slow"] + 0.05, load.marks["fast"] - 0.1)
    assert all(answered(o) for o in everything), show(everything)
    assert not late(everything), show(late(everything))
    assert mostly_normal(load.between("start", "slow")), show(load.between("start", "slow"))
    assert len(slowed) >= 2 * RATE * 0.8
    for outcome in (o for o in slowed if o.ok):
        assert "DEGRADATION_REASON_SOURCE_DROPPED" in outcome.degradations, outcome
        assert len(outcome.reply.items) == 5
        assert all(list(i.sources) == [FALLBACK_CACHE] for i in outcome.reply.items)
    assert mostly_normal(load.between("recovered")), show(load.between("recovered"))
    record(
        f"retrieval slowed ({stack.delay_ms:.0f} ms per call; its slice is 35% of {BUDGET_MS:.0f} ms)",
        {
            "rate_rps": RATE,
            "all": summary(everything),
            "retrieval_slow": summary(slowed),
            "fast_to_normal_answers_s": round(recovered_after_s, 2),
        },
    )


def index_copy(source: Path, version: str, corrupt: bool = False) -> Path:
    """The index version ``source`` copied next to it as ``version`` (metadata renamed, so it is a new version);
    ``corrupt`` damages its embeddings."""
    index_root = source.parent
    staging = index_root / f".{version}-copy"
    shutil.copytree(source, staging)
    metadata = json.loads((staging / "metadata.json").read_text())
    metadata["version"] = version
    (staging / "metadata.json").write_text(json.dumps(metadata))
    if corrupt:
        (staging / "item_embeddings.npy").write_bytes(b"garbage")
    final = index_root / version
    staging.rename(final)
    return final


async def test_broken_model_and_corrupt_index_are_refused_while_the_gateway_serves(stack, shop, trained, tmp_path):
    model_dir = shop.model_repository / "ranker"
    serving_model = str(model_versions(model_dir)[-1])
    serving_index = index_versions(shop.index_root)[-1]
    export = tmp_path / "export"
    shutil.copytree(model_dir / serving_model, export)
    broken = tmp_path / "broken"
    shutil.copytree(export, broken)
    poison_weights(broken / "model.onnx")  # valid graph, NaN scores

    async with recommend_load(stack, home_request(history_of(trained), k=5), rate=RATE) as load:
        await asyncio.sleep(1.0)
        # 1. Through `publish`: its validation refuses the version; nothing lands in the repository.
        with pytest.raises(ModelConfigError):
            await asyncio.to_thread(publish, broken, model_dir)
        # 2. Copied in by hand, past `publish`: the running service's watch refuses it.
        careless = int(serving_model) + 10
        shutil.copytree(broken, model_dir / f".staging-{careless}-manual")
        (model_dir / f".staging-{careless}-manual").rename(model_dir / str(careless))
        # 3. An index version whose embeddings are damaged.
        index_copy(serving_index, "29990101T000000000000Z", corrupt=True)
        load.mark("broken in place")
        await asyncio.sleep(2.0)  # ten watch intervals
        load.mark("good published")
        # Then good versions: both watches were alive all along, so the refusals were refusals.
        good_model = str((await asyncio.to_thread(publish, export, model_dir)).version)
        index_copy(serving_index, "29990102T000000000000Z")
        good_after_s = await load.wait_until(
            lambda o: (
                o.ok
                and versions_of(o).get("model") == good_model
                and versions_of(o).get("index") == "29990102T000000000000Z"
            ),
            timeout=15,
        )
        load.mark("good serving")
        await asyncio.sleep(0.5)
    everything = load.between("start")
    while_broken = load.between("broken in place", "good published")
    assert all(answered(o) for o in everything), show(everything)
    assert not late(everything), show(late(everything))
    # Nothing went away (a model swap on two busy cores may make a call or two late: RANKING_TIMEOUT, counted).
    assert mostly_normal(everything, never=GONE_FLAGS), show(everything)
    assert len(while_broken) >= 2 * RATE * 0.8
    # Answers name the versions that made them (an answer whose ranking was late names no model).
    answers = [o for o in while_broken if o.ok]
    assert {versions_of(o).get("model") for o in answers} - {None} == {serving_model}
    assert {versions_of(o).get("index") for o in answers} == {serving_index.name}
    assert f"version {careless} of ranker refused" in stack.services["ranking"].log_path.read_text()
    assert "refused index" in stack.services["retrieval"].log_path.read_text()
    record(
        "broken model (publish + hand copy) and corrupt index published",
        {
            "rate_rps": RATE,
            "all": summary(everything),
            "while_broken_in_place": summary(while_broken),
            "good_versions_serving_after_s": round(good_after_s, 2),
        },
    )


# --- SIGTERM -----------------------------------------------------------------------------------------------------
def direct_load(stack: FaultStack, service: str, trained) -> object:
    """Held calls straight at ``service`` (each stays in flight ``HOLD_MS``), so a SIGTERM lands on many."""
    target = stack.services[service].target
    hold = ((HOLD_METADATA, str(HOLD_MS)),)
    ids = trained.item_ids
    if service == "retrieval":
        request = retrieval_pb.RetrieveRequest(
            k=20, sources=[common.CANDIDATE_SOURCE_POPULARITY], context=common.RequestContext(region="GB")
        )
        method = lambda channel: retrieval_grpc.RetrievalServiceStub(channel).Retrieve  # noqa: E731
    elif service == "ranking":
        request = ranking_pb.RankRequest(
            history=[common.Interaction(item_id=i, event_type=common.EVENT_TYPE_VIEW) for i in ids[:5]],
            candidate_item_ids=ids[:50],
        )
        method = lambda channel: ranking_grpc.RankingServiceStub(channel).Rank  # noqa: E731
    else:
        request = home_request(history_of(trained), k=5)
        method = lambda channel: pb_grpc.RecommendationServiceStub(channel).Recommend  # noqa: E731
    return steady_load(target, method, request, rate=RATE, metadata=hold)


async def watch_health(target: str, seen: list[tuple[float, int | None]], stop: asyncio.Event) -> None:
    """Records (time, status) every 20 ms; status None when the server does not answer."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while not stop.is_set():
            at = time.monotonic()
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)
                seen.append((at, reply.status))
            except grpc.aio.AioRpcError:
                seen.append((at, None))
            await asyncio.sleep(0.02)


@pytest.mark.parametrize("service", ["retrieval", "ranking", "gateway"])
async def test_sigterm_under_load_finishes_every_call_in_flight_and_says_not_serving_first(stack, trained, service):
    process = stack.services[service].process
    seen: list[tuple[float, int | None]] = []
    stop_watching = asyncio.Event()
    watcher = asyncio.create_task(watch_health(stack.services[service].target, seen, stop_watching))
    recommend = recommend_load(stack, home_request(history_of(trained), k=5), rate=RATE)
    async with direct_load(stack, service, trained) as direct, recommend as public:
        await asyncio.sleep(1.0)
        sigterm = direct.mark("sigterm")
        stack.terminate(service)
        code = await asyncio.to_thread(process.wait, 15)
        direct.mark("exited")
        await asyncio.sleep(0.3)
        public.mark("restart")
        restart_s = await asyncio.to_thread(stack.restart, service)
        recovered_after_s = await public.wait_until(
            lambda o: (
                o.ok
                and FALLBACK_CACHE not in {s for i in o.reply.items for s in i.sources}
                and not set(RANKING_FLAGS) & set(o.degradations)
            ),
            timeout=10,
        )
        public.mark("recovered")
        await asyncio.sleep(0.5)
    stop_watching.set()
    await watcher
    held = direct.between("start")
    in_flight = [o for o in held if o.started < sigterm and o.started + o.latency_ms / 1000 > sigterm]
    dropped = [o for o in held if o.started < sigterm and not o.ok]
    failed_after = [o for o in held if o.started >= sigterm and not o.ok]
    cancelled = [o for o in failed_after if o.code == "CANCELLED"]
    assert code == 0, f"{service} exited with {code}"
    assert len(in_flight) >= 5, "the SIGTERM must land on calls in flight for this test to mean anything"
    assert not dropped, show(dropped)
    # Calls sent after the signal are answered (during the drain) or refused as UNAVAILABLE. A call that reached
    # the server but was not yet picked up by its event loop when the drain ended is CANCELLED by gRPC core
    # (grpc/grpc#41785, open in grpcio 1.85): counted and reported, not hidden; nothing else is allowed.
    assert all(o.code in ("UNAVAILABLE", "CANCELLED") or answered(o) for o in failed_after), show(failed_after)
    statuses_after = [status for at, status in seen if at >= sigterm]
    first_not_serving = next(
        at for at, status in seen if at >= sigterm and status != health_pb2.HealthCheckResponse.SERVING
    )
    assert health_pb2.HealthCheckResponse.NOT_SERVING in statuses_after, statuses_after[:10]
    assert dict(seen)[first_not_serving] == health_pb2.HealthCheckResponse.NOT_SERVING, "went away before NOT_SERVING"
    if failed_after:
        assert first_not_serving <= min(o.started + o.latency_ms / 1000 for o in failed_after)
    public_judged = public.between("start", "restart")
    if service != "gateway":
        # The public API lost nothing: the gateway degraded while the dependency was away. (The restart that
        # follows competes for the two cores; its window is recorded, not judged.)
        assert all(answered(o) for o in public_judged), show(public_judged)
        assert not late(public_judged), show(late(public_judged))
    assert mostly_normal(public.between("recovered"), never=GONE_FLAGS), show(public.between("recovered"))
    record(
        f"SIGTERM to {service} under load",
        {
            "rate_rps": RATE,
            "hold_ms": HOLD_MS,
            "held_calls": summary(held),
            "in_flight_at_sigterm": len(in_flight),
            "dropped_in_flight": len(dropped),
            "refused_unavailable_after_sigterm": len(failed_after) - len(cancelled),
            "cancelled_at_drain_end": len(cancelled),
            "not_serving_after_ms": round((first_not_serving - sigterm) * 1000, 1),
            "exit_code": code,
            "public_recommend_until_restart": summary(public_judged),
            "public_recommend_restart_window (not judged)": summary(public.between("restart", "recovered")),
            "restart_s": round(restart_s, 2),
            "restart_to_normal_answers_s": round(recovered_after_s, 2),
        },
    )
