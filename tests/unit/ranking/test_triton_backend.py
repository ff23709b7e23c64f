"""The Triton backend against fake Triton clients: versions, round-robin, deadlines, trace context, errors,
and the fallback to the embedded backend (flagged in the response)."""

from __future__ import annotations

import asyncio
import functools
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from aisle.common.v1 import common_pb2
from aisle.ranking.v1 import ranking_service_pb2 as pb
from services.ranking.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    InferenceServerFault,
    InferenceTimeout,
    ModelNotReady,
    Ranking,
    VersionNotServed,
)
from services.ranking.backends.fallback import FallbackBackend
from services.ranking.backends.triton import CONTROL_TIMEOUT_S, DEADLINE_MARGIN_S, TritonBackend
from services.ranking.model_config import ModelConfigError
from services.ranking.served_model import ServedModel
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

CONFIG = Path(__file__).resolve().parents[3] / "model_repository" / "ranker" / "config.pbtxt"
ITEMS = [f"item-{i}" for i in range(1, 21)]
INPUTS = [{"name": "history_item_ids", "datatype": "INT64"}, {"name": "candidate_item_ids", "datatype": "INT64"}]
OUTPUTS = [{"name": "purchase_probability", "datatype": "FP32"}]


class FakeResult:
    def __init__(self, outputs):
        self.outputs = outputs

    def as_numpy(self, name):
        return self.outputs.get(name)


class FakeTriton:
    """Answers like Triton's gRPC client: P(purchase) = token / 100 + version / 1000."""

    def __init__(self, target: str, ready=("1",)):
        self.target = target
        self.ready = list(ready)
        self.error: InferenceServerException | None = None
        self.calls: list[dict] = []
        self.inputs = INPUTS

    async def get_model_repository_index(self, as_json=False, client_timeout=None):
        if self.error is not None and self.error.status() == "StatusCode.UNAVAILABLE":
            raise self.error
        return {"models": [{"name": "ranker", "version": v, "state": "READY"} for v in self.ready]}

    async def get_model_metadata(self, model_name, model_version="", as_json=False, client_timeout=None):
        return {"name": model_name, "versions": self.ready, "inputs": self.inputs, "outputs": OUTPUTS}

    async def infer(self, model_name, inputs, model_version="", outputs=None, client_timeout=None, headers=None):
        arrays = {i.name(): np.frombuffer(i._raw_content, dtype=np.int64).reshape(i.shape()) for i in inputs}
        self.calls.append({"version": model_version, "timeout": client_timeout, "headers": dict(headers or {})})
        if self.error is not None:
            raise self.error
        if model_version not in self.ready:
            raise InferenceServerException(
                f"Request for unknown model: '{model_name}' version {model_version} is not at ready state",
                status="StatusCode.UNAVAILABLE",
            )
        candidates = arrays["candidate_item_ids"]
        purchase = (candidates / 100 + int(model_version) / 1000).astype(np.float32)
        return FakeResult({"purchase_probability": purchase})

    async def close(self):
        pass


@pytest.fixture
def repository(tmp_path) -> Path:
    (tmp_path / "ranker").mkdir()
    shutil.copy(CONFIG, tmp_path / "ranker" / "config.pbtxt")
    for version in ("1", "2"):
        (tmp_path / "ranker" / version).mkdir()
        (tmp_path / "ranker" / version / "item_vocabulary.txt").write_text("\n".join(ITEMS) + "\n")
    return tmp_path


def backend_with(repository, *fakes: FakeTriton, version: str = "") -> TritonBackend:
    by_target = {fake.target: fake for fake in fakes}
    return TritonBackend(
        list(by_target), repository, "ranker", version, ready_timeout_s=0, client_factory=by_target.__getitem__
    )


async def test_serves_the_newest_ready_version_with_ids_turned_into_tokens(repository):
    fake = FakeTriton("a:1", ready=("1", "2"))
    backend = backend_with(repository, fake)
    await backend.load()
    ranking = await backend.rank(["item-3"], ["item-5", "unknown", "item-20"], timeout=0.5)
    assert backend.model_version == "2" and ranking.model_version == "2" and ranking.backend == "triton"
    assert np.allclose(ranking.purchase, [0.05 + 0.002, 0.0, 0.2 + 0.002])
    assert ranking.unknown.tolist() == [False, True, False]
    assert fake.calls[0]["version"] == "2"


async def test_calls_go_round_robin_with_the_callers_deadline_and_trace_context(repository):
    fakes = FakeTriton("a:1"), FakeTriton("b:1")
    backend = backend_with(repository, *fakes)
    await backend.load()
    with trace.get_tracer("test").start_as_current_span("caller") as span:
        for _ in range(4):
            await backend.rank([], ["item-1"], timeout=0.25)
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert [len(f.calls) for f in fakes] == [2, 2]
    call = fakes[0].calls[0]
    assert 0.2 < call["timeout"] <= 0.25 - DEADLINE_MARGIN_S
    assert trace_id in call["headers"]["traceparent"]


async def test_only_a_sampled_trace_sends_its_context_to_triton(repository, span_exporter):
    """Triton traces every request carrying a context, whatever its own rate: the 95 % of calls a 5 % sampler drops
    were traced by Triton too, under parents no one exported."""
    fake = FakeTriton("a:1")
    backend = backend_with(repository, fake)
    await backend.load()
    unsampled = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(TraceFlags.DEFAULT))
    with trace.use_span(NonRecordingSpan(unsampled)):
        await backend.rank([], ["item-1"], timeout=0.25)
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        await backend.rank([], ["item-1"], timeout=0.25)
    assert "traceparent" not in fake.calls[0]["headers"] and "traceparent" in fake.calls[1]["headers"]
    # The call is a CLIENT span of Triton's inference RPC, so tracing backends draw the ranking -> Triton edge.
    [infer] = [s for s in span_exporter.get_finished_spans() if s.name == "TritonInfer"]
    assert infer.parent.span_id == caller.get_span_context().span_id and infer.kind == SpanKind.CLIENT
    assert infer.attributes["rpc.service"] == "inference.GRPCInferenceService"
    assert infer.attributes["rpc.method"] == "ModelInfer" and infer.attributes["rpc.grpc.status_code"] == 0


async def test_no_deadline_uses_the_default_timeout(repository):
    fake = FakeTriton("a:1")
    backend = TritonBackend(["a:1"], repository, "ranker", default_timeout_s=0.7, client_factory=lambda t: fake)
    await backend.load()
    await backend.rank([], ["item-1"], timeout=None)
    assert 0.6 < fake.calls[0]["timeout"] <= 0.7


async def test_a_reloaded_model_is_followed_without_failing_the_call(repository):
    fake = FakeTriton("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    fake.ready = ["2"]  # a publish made Triton load version 2 and unload version 1
    ranking = await backend.rank([], ["item-1"], timeout=0.5)
    assert ranking.model_version == "2" and backend.model_version == "2"
    assert [c["version"] for c in fake.calls] == ["1", "2"]


class SlowControl(FakeTriton):
    """Control calls (repository index, metadata) that take ``delay`` seconds; records each one's client timeout."""

    def __init__(self, target: str, ready=("1",), delay: float = 0.01):
        super().__init__(target, ready)
        self.delay = delay
        self.control_timeouts: list[float | None] = []

    async def get_model_repository_index(self, as_json=False, client_timeout=None):
        self.control_timeouts.append(client_timeout)
        await asyncio.sleep(self.delay)
        return await super().get_model_repository_index(as_json, client_timeout)

    async def get_model_metadata(self, model_name, model_version="", as_json=False, client_timeout=None):
        self.control_timeouts.append(client_timeout)
        await asyncio.sleep(self.delay)
        return await super().get_model_metadata(model_name, model_version, as_json, client_timeout)


async def test_a_version_switch_makes_one_round_of_control_calls_for_all_requests_in_flight(repository):
    fake = SlowControl("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    fake.ready = ["2"]  # a publish reloaded the model
    fake.control_timeouts.clear()
    rankings = await asyncio.gather(*(backend.rank([], ["item-1"], timeout=1.0) for _ in range(50)))
    assert {r.model_version for r in rankings} == {"2"}
    assert len(fake.control_timeouts) == 2  # one repository index, one metadata call


async def test_following_a_version_switch_keeps_to_the_callers_deadline(repository):
    fake = SlowControl("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    fake.ready, fake.delay = ["2"], 1.0  # Triton's control calls got slow
    fake.control_timeouts.clear()
    started = time.monotonic()
    with pytest.raises(InferenceTimeout, match="version switch"):
        await backend.rank([], ["item-1"], timeout=0.1)
    assert time.monotonic() - started < fake.delay  # it did not wait for the slow control call to answer
    # Waiting for a switch another caller (here the repository watch) is making is bounded the same way.
    watch = asyncio.create_task(backend.refresh())
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with pytest.raises(InferenceTimeout, match="version switch"):
        await backend.rank([], ["item-1"], timeout=0.1)
    assert time.monotonic() - started < fake.delay  # nor for the watch's switch
    await watch
    # The switch the first caller started went on without it (its control calls within the watch's timeout), so
    # the new version serves: the callers gave up waiting, not the switch.
    assert backend.model_version == "2" and all(t == CONTROL_TIMEOUT_S for t in fake.control_timeouts)


async def test_one_unreachable_server_is_skipped(repository):
    down, up = FakeTriton("a:1"), FakeTriton("b:1")
    backend = backend_with(repository, down, up)
    await backend.load()
    down.error = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    for _ in range(3):
        assert (await backend.rank([], ["item-1"], timeout=0.5)).model_version == "1"
    up.error = down.error
    with pytest.raises(BackendUnavailable, match="unavailable"):
        await backend.rank([], ["item-1"], timeout=0.5)


class AwaitingTriton(FakeTriton):
    """Lets other calls run while its answer is on the way, as a real call does."""

    async def infer(self, *args, **kwargs):
        await asyncio.sleep(0)
        return await super().infer(*args, **kwargs)


async def test_concurrent_calls_retry_on_a_server_they_have_not_tried(repository):
    # With one of two servers down, a retry that took the next turn of the counter every call shares often went to
    # the dead server again under concurrency: a quarter of the calls failed although the other server was up.
    down, up = AwaitingTriton("a:1"), AwaitingTriton("b:1")
    backend = backend_with(repository, down, up)
    await backend.load()
    down.error = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    answers = await asyncio.gather(
        *(backend.rank([], ["item-1"], timeout=0.5) for _ in range(200)), return_exceptions=True
    )
    assert [type(a).__name__ for a in answers if isinstance(a, BaseException)] == []


class HungTriton(FakeTriton):
    """A frozen server (SIGSTOP, a stuck node): its control calls run past their timeout, as its calls would."""

    hung = False
    #: What a control call meets while ``hung``: (message, status).
    control_error = ("Deadline Exceeded", "StatusCode.DEADLINE_EXCEEDED")

    async def get_model_repository_index(self, as_json=False, client_timeout=None):
        if self.hung:
            raise InferenceServerException(self.control_error[0], status=self.control_error[1])
        return await super().get_model_repository_index(as_json, client_timeout)


async def test_a_server_that_does_not_answer_gets_no_calls_until_it_answers_again(repository):
    hung, up = HungTriton("a:1"), FakeTriton("b:1")
    backend = backend_with(repository, hung, up)
    await backend.load()
    hung.hung = True  # its calls would each wait out their deadline: none may go to it
    await backend.refresh()
    for _ in range(6):
        await backend.rank([], ["item-1"], timeout=0.5)
    assert (len(hung.calls), len(up.calls)) == (0, 6)
    hung.hung = False  # answers again: back in turn at the next refresh
    await backend.refresh()
    for _ in range(6):
        await backend.rank([], ["item-1"], timeout=0.5)
    assert (len(hung.calls), len(up.calls)) == (3, 9)


async def test_a_version_switch_reads_the_new_versions_files_once_however_short_the_callers_deadlines(repository):
    """A million-item vocabulary takes over a second to read; every call that met the unloaded version read it
    again within its own deadline (50 ms), was cancelled, and left the next caller to start over: seconds of failed
    calls, seven reads of the same files."""
    fake = FakeTriton("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    reads, read = [], backend._local_model

    def slow_read(*args):
        reads.append(args[0])
        time.sleep(0.3)  # in the read's thread, as a large vocabulary's
        return read(*args)

    backend._local_model = slow_read
    fake.ready = ["2"]  # Triton switched: version 1 is gone
    answers = await asyncio.gather(
        *(backend.rank([], ["item-1"], timeout=0.05) for _ in range(10)), return_exceptions=True
    )
    assert all(isinstance(a, InferenceTimeout | ModelNotReady) for a in answers), answers
    await asyncio.sleep(0.5)  # the one read ends, though no caller waited for it
    ranking = await backend.rank([], ["item-1"], timeout=0.05)
    assert ranking.model_version == "2" and reads == ["2"]


async def test_model_not_ready_is_a_clear_error(repository):
    fake = FakeTriton("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    fake.ready = []  # unloaded
    with pytest.raises(ModelNotReady, match=r"model 'ranker' version 1 on Triton at a:1 is not ready"):
        await backend.rank([], ["item-1"], timeout=0.5)
    with pytest.raises(ModelNotReady, match="version 2 is not ready on Triton at a:1"):
        await backend_with(repository, FakeTriton("a:1", ready=("1",)), version="2").load()
    with pytest.raises(ModelNotReady, match="no ready version"):
        await backend_with(repository, FakeTriton("a:1", ready=())).load()


async def test_a_triton_deadline_is_a_timeout(repository):
    fake = FakeTriton("a:1")
    backend = backend_with(repository, fake)
    await backend.load()
    fake.error = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    with pytest.raises(InferenceTimeout):
        await backend.rank([], ["item-1"], timeout=0.5)
    with pytest.raises(InferenceTimeout, match="no time left"):
        await backend.rank([], ["item-1"], timeout=0.001)


async def test_a_server_with_other_tensors_is_refused_at_load(repository):
    fake = FakeTriton("a:1")
    fake.inputs = [{"name": "history", "datatype": "INT64"}, INPUTS[1]]
    with pytest.raises(ModelConfigError, match="inputs"):
        await backend_with(repository, fake).load()


@pytest.mark.parametrize(("history_shape", "refused"), [(["-1", "50"], False), (["-1", "60"], True), (["50"], True)])
async def test_a_server_with_other_tensor_shapes_is_refused_at_load(repository, history_shape, refused):
    """config.pbtxt is the model folder's, synced apart from Triton's copy: a history length changed in one of them
    passed (names and types agree), and every call then failed INVALID_ARGUMENT, which the fallback does not cover."""
    fake = FakeTriton("a:1")
    fake.inputs = [{**INPUTS[0], "shape": history_shape}, {**INPUTS[1], "shape": ["-1", "-1"]}]
    backend = backend_with(repository, fake)
    if refused:
        with pytest.raises(ModelConfigError, match=r"history_item_ids of shape .* declares \[-1, 50\]"):
            await backend.load()
    else:
        await backend.load()
        assert (await backend.rank(["item-1"], ["item-2"], timeout=0.5)).backend == "triton"


class FakeEmbedded:
    kind = "onnxruntime"
    model_name = "ranker"
    model_version = "1"
    model = None

    async def load(self):
        pass

    async def refresh(self):
        return False

    async def rank(self, history_ids, candidate_ids, timeout, version=""):
        count = len(candidate_ids)
        return Ranking("ranker", "1", np.full(count, 0.5, np.float32), None, np.zeros(count, bool), self.kind)

    async def close(self):
        pass


async def test_fallback_answers_when_triton_is_unavailable_and_the_response_says_so(repository):
    fake = FakeTriton("a:1")
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    servicer = RankingServicer(RankingSettings(), backend)
    request = pb.RankRequest(candidate_item_ids=["item-1", "item-2"])
    healthy = await servicer.Rank(request, None)
    assert not healthy.degradations and healthy.scored_items[0].purchase_probability == pytest.approx(0.011)
    fake.error = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    degraded = await servicer.Rank(request, None)
    assert [s.purchase_probability for s in degraded.scored_items] == [0.5, 0.5]
    assert [d.reason for d in degraded.degradations] == [common_pb2.DEGRADATION_REASON_RANKING_FALLBACK_BACKEND]
    assert degraded.degradations[0].stage == "ranking" and "onnxruntime" in degraded.degradations[0].detail
    assert degraded.degradations[0].detail.endswith("INFERENCE_SERVER_UNAVAILABLE")


async def test_fallback_answers_for_a_fault_of_triton_not_for_a_refusal_a_full_queue_or_a_spent_deadline(repository):
    fake = FakeTriton("a:1")
    reasons: list[str] = []
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded(), reasons.append)
    await backend.load()
    fake.error = InferenceServerException("Stub process 'ranker_0_0' is not healthy.", status="StatusCode.INTERNAL")
    with pytest.raises(InferenceServerFault, match="not healthy"):  # Triton alone: the caller gets INTERNAL
        await backend.primary.rank([], ["item-1"], timeout=0.5)
    answered = await backend.rank([], ["item-1"], timeout=0.5)
    assert answered.fallback and answered.fallback_reason == "INFERENCE_SERVER_FAULT"
    assert reasons == ["INFERENCE_SERVER_FAULT"]
    # A request Triton refuses (its config and the local contract disagree) or cannot queue reaches the caller.
    for status in ("StatusCode.INVALID_ARGUMENT", "StatusCode.RESOURCE_EXHAUSTED"):
        fake.error = InferenceServerException("refused", status=status)
        with pytest.raises(InferenceFailed) as failure:
            await backend.rank([], ["item-1"], timeout=0.5)
        assert not isinstance(failure.value, InferenceServerFault)
    fake.error = InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
    with pytest.raises(InferenceTimeout):
        await backend.rank([], ["item-1"], timeout=0.5)
    assert reasons == ["INFERENCE_SERVER_FAULT"]


async def test_a_fallback_is_logged_once_per_outage_not_once_per_call(repository, caplog):
    fake = FakeTriton("a:1")
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    fake.error = InferenceServerException("failed to connect to all addresses", status="StatusCode.UNAVAILABLE")
    for _ in range(5):
        assert (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    fake.error = None
    assert not (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    said = [r.getMessage() for r in caplog.records if r.name.endswith("fallback")]
    assert len(said) == 2 and "falling back" in said[0] and "answers again" in said[1]


class HungInferences(HungTriton):
    """Answers nothing in time, its inferences as its control calls."""

    async def infer(self, *args, **kwargs):
        if self.hung:
            raise InferenceServerException("Deadline Exceeded", status="StatusCode.DEADLINE_EXCEEDED")
        return await super().infer(*args, **kwargs)


async def test_calls_stop_going_to_triton_once_no_server_answers_and_the_fallback_answers(repository):
    """A hung Triton kept its routes: every call waited out its budget (InferenceTimeout, which the fallback does
    not cover), so the fallback never answered in the very outage it is for."""
    fake = HungInferences("a:1")
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    assert not (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    fake.hung = True
    await backend.refresh()  # one round without an answer is not an outage: calls still go to Triton
    with pytest.raises(InferenceTimeout):
        await backend.rank([], ["item-1"], timeout=0.5)
    await backend.refresh()  # a second one is
    assert (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    with pytest.raises(BackendUnavailable, match="no Triton server answer"):  # Triton alone: refused at once
        await backend.primary.rank([], ["item-1"], timeout=0.5)
    fake.hung = False
    assert await backend.refresh()  # back
    assert not (await backend.rank([], ["item-1"], timeout=0.5)).fallback


class Stopping(HungTriton):
    """Triton going away (while ``hung``): the model unloaded (its calls NOT_FOUND), the control port answering
    nothing."""

    control_error = ("failed to connect to all addresses", "StatusCode.UNAVAILABLE")

    async def infer(self, model_name, inputs, model_version="", **options):
        if self.hung:
            raise InferenceServerException(
                f"Request for unknown model: '{model_name}' version {model_version} is not found",
                status="StatusCode.NOT_FOUND",
            )
        return await super().infer(model_name, inputs, model_version, **options)


async def test_a_call_that_follows_a_switch_in_vain_never_stops_the_calls_for_good(repository):
    """With the watch off (watch_interval_s=0) only calls ask Triton what it serves: a call's failed follow that sent
    no call anywhere afterwards would never have been undone."""
    fake = Stopping("a:1")
    backend = backend_with(repository, fake)
    await backend.load()
    fake.hung = True
    with pytest.raises(ModelNotReady):
        await backend.rank([], ["item-1"], timeout=0.5)
    fake.hung = False  # back, serving version 1; no refresh
    assert (await backend.rank([], ["item-1"], timeout=0.5)).backend == "triton"


async def test_a_version_served_but_refused_here_is_asked_about_once_a_second_not_once_per_call(repository, caplog):
    """Every call met the gone version, asked Triton again (a control round to every server, config.pbtxt read
    again) and logged "keeping version": one warning and two control calls per request."""
    fake = SlowControl("a:1", ready=("1",))
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    (repository / "ranker" / "2" / "item_vocabulary.txt").write_text("")  # version 2 is refused here
    fake.ready = ["2"]
    fake.control_timeouts.clear()
    for _ in range(10):
        assert (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    assert len(fake.control_timeouts) == 2  # one index call, one metadata call: the calls after wait for the watch
    kept = [r for r in caplog.records if "keeping version" in r.getMessage()]
    assert len(kept) == 1


async def test_each_episode_of_triton_not_answering_is_logged_not_only_the_first(repository, caplog):
    fake = HungInferences("a:1")
    backend = backend_with(repository, fake)
    await backend.load()
    for _ in range(2):  # a one-round blip, then Triton answers again; twice
        fake.hung = True
        await backend.refresh()
        fake.hung = False
        await backend.refresh()
    assert len([r for r in caplog.records if "keeping version" in r.getMessage()]) == 2


async def test_dark_routes_say_why_when_triton_answers_again_with_a_version_refused_here(repository):
    fake = HungInferences("a:1")
    backend = backend_with(repository, fake)
    await backend.load()
    fake.hung = True
    await backend.refresh()
    await backend.refresh()
    with pytest.raises(BackendUnavailable, match="no Triton server answered"):
        await backend.rank([], ["item-1"], timeout=0.5)
    (repository / "ranker" / "2" / "item_vocabulary.txt").write_text("")
    fake.hung, fake.ready = False, ["2"]  # back, with a version this pod refuses
    assert not await backend.refresh()
    with pytest.raises(ModelNotReady, match="no items"):  # not "no answer": the version is refused here
        await backend.rank([], ["item-1"], timeout=0.5)


async def test_an_abandoned_inference_ends_its_client_span_cancelled(repository, span_exporter):
    class Slow(FakeTriton):
        async def infer(self, *args, **kwargs):
            await asyncio.sleep(5)

    backend = backend_with(repository, Slow("a:1"))
    await backend.load()
    with trace.get_tracer("test").start_as_current_span("caller") as caller:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await backend.rank([], ["item-1"], timeout=2)
    [infer] = [s for s in span_exporter.get_finished_spans() if s.name == "TritonInfer"]
    assert infer.parent.span_id == caller.get_span_context().span_id
    assert infer.attributes["rpc.grpc.status_code"] == 1 and infer.status.status_code.name == "ERROR"


async def test_fallback_starts_on_the_embedded_backend_when_triton_is_down(repository):
    fake = FakeTriton("a:1")
    fake.error = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    assert backend.model_version == "1"
    assert (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    fake.error = None
    assert await backend.refresh()  # the watch finds Triton back
    assert not (await backend.rank([], ["item-1"], timeout=0.5)).fallback


async def test_fallback_starts_and_answers_when_the_version_triton_serves_is_refused_here(repository, caplog):
    """The docstring's promise, "Triton failing to load at start-up does not stop the service": a version refused
    here (an empty vocabulary) stopped the pod, though the embedded backend could answer; the watch then logged
    the refusal's traceback at every interval."""
    (repository / "ranker" / "1" / "item_vocabulary.txt").write_text("")
    fake = FakeTriton("a:1")
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded())
    await backend.load()
    assert (await backend.rank([], ["item-1"], timeout=0.5)).fallback
    assert await backend.refresh() is False  # still refused: no change, and no traceback
    assert not [r for r in caplog.records if r.exc_info]
    (repository / "ranker" / "1" / "item_vocabulary.txt").write_text("\n".join(ITEMS) + "\n")
    assert await backend.refresh()  # mended: Triton answers again
    assert not (await backend.rank([], ["item-1"], timeout=0.5)).fallback


# --- versions across servers and version folders -------------------------------------------------------------------
def reversed_vocabulary(folder: Path) -> Path:
    """A version folder whose vocabulary lists ITEMS backwards: item-1 is token 20 there, token 1 elsewhere."""
    folder.mkdir()
    (folder / "item_vocabulary.txt").write_text("\n".join(reversed(ITEMS)) + "\n")
    return folder


def token_sent(ranking: Ranking) -> int:
    """The item-1 token the call sent, read back from the fake's score (token / 100 + version / 1000)."""
    return round((float(ranking.purchase[0]) - int(ranking.model_version) / 1000) * 100)


async def test_servers_reloading_one_after_another_each_answer_with_their_own_version_and_its_tokens(repository):
    shutil.rmtree(repository / "ranker" / "2")
    reversed_vocabulary(repository / "ranker" / "2")
    a, b = FakeTriton("a:1", ready=("1",)), FakeTriton("b:1", ready=("1",))
    backend = backend_with(repository, a, b)
    await backend.load()
    # `aisle models publish --triton a:1 --triton b:1` loads a first; with version_policy latest 1, a then serves
    # only version 2 while b still serves only version 1.
    a.ready = ["2"]
    rankings = [await backend.rank([], ["item-1"], timeout=0.5) for _ in range(8)]
    assert {r.model_version for r in rankings} == {"1", "2"}  # no call failed, both servers kept answering
    assert all(token_sent(r) == (20 if r.model_version == "2" else 1) for r in rankings)  # each version's tokens
    assert [c["version"] for c in b.calls] == ["1"] * len(b.calls) and len(b.calls) >= 3
    assert backend.model_version == "2"
    # b has loaded version 2 as well.
    b.ready = ["2"]
    rankings = [await backend.rank([], ["item-1"], timeout=0.5) for _ in range(4)]
    assert [(r.model_version, token_sent(r)) for r in rankings] == [("2", 20)] * 4
    # The reviewer's case: a server with both versions ready and one with the old one only.
    a.ready, b.ready = ["1", "2"], ["1"]
    backend = backend_with(repository, a, b)
    await backend.load()
    rankings = [await backend.rank([], ["item-1"], timeout=0.5) for _ in range(6)]
    assert sorted(r.model_version for r in rankings) == ["1"] * 3 + ["2"] * 3


async def test_a_server_serving_a_version_missing_here_gets_no_calls(repository):
    a, b = FakeTriton("a:1", ready=("3",)), FakeTriton("b:1", ready=("2",))  # no ranker/3 in the local copy
    backend = backend_with(repository, a, b)
    await backend.load()
    assert {(await backend.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(4)} == {"2"}
    assert not a.calls
    reversed_vocabulary(repository / "ranker" / "3")  # the local copy catches up
    assert await backend.refresh()
    assert {(await backend.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(4)} == {"2", "3"}


async def test_a_version_number_reused_for_other_files_is_read_again(repository):
    model_dir = repository / "ranker"
    shutil.copytree(model_dir / "2", model_dir / "3")
    fake = FakeTriton("a:1", ready=("3",))
    backend = backend_with(repository, fake)
    await backend.load()
    assert token_sent(await backend.rank([], ["item-1"], timeout=0.5)) == 1
    # Version 3 retired and a new 3 put in place by hand, while this pod was not looking: Triton serves the new 3.
    (model_dir / "3").rename(model_dir / ".retired-3-1")
    reversed_vocabulary(model_dir / "3")
    assert await backend.refresh()
    ranking = await backend.rank([], ["item-1"], timeout=0.5)
    assert (ranking.model_version, token_sent(ranking)) == ("3", 20)
    # A retired folder put back (a rollback undone) is the same folder: nothing to read again.
    (model_dir / "3").rename(model_dir / ".retired-3-2")
    (model_dir / ".retired-3-1").rename(model_dir / "3")
    assert await backend.refresh()
    assert token_sent(await backend.rank([], ["item-1"], timeout=0.5)) == 1
    assert not await backend.refresh()


async def test_a_pod_starts_on_the_embedded_backend_while_triton_serves_a_version_missing_here(repository):
    from services.ranking.backends.onnxruntime import BatchingOptions, OnnxRuntimeBackend
    from tests.integration.ranking.tiny_models import add_version, item_ids

    # The local copy has version 1 only (3 retired by a rollback Triton did not hear of, or not synced yet).
    shutil.rmtree(repository / "ranker" / "1")
    shutil.rmtree(repository / "ranker" / "2")
    add_version(repository / "ranker", 1, items=20)
    fake = FakeTriton("a:1", ready=("3",))
    with pytest.raises(ModelNotReady, match=r"serves 'ranker' version 3, which .*/ranker lacks"):
        await backend_with(repository, fake).load()
    embedded = OnnxRuntimeBackend(repository, "ranker", batching=BatchingOptions(enabled=False))
    backend = FallbackBackend(backend_with(repository, fake), embedded)
    try:
        await backend.load()
        assert backend.model_version == "1"
        answer = await backend.rank([], item_ids(2), timeout=1.0)
        assert answer.backend == "onnxruntime" and answer.fallback_reason == "MODEL_NOT_READY"
        add_version(repository / "ranker", 3, items=20)  # the copy catches up: Triton is used again
        assert await backend.refresh()
        answer = await backend.rank([], item_ids(2), timeout=1.0)
        assert answer.backend == "triton" and answer.model_version == "3" and not answer.fallback
    finally:
        await backend.close()


async def test_a_pinned_version_is_scored_by_the_servers_that_serve_it_and_found_while_one_does(repository):
    """Mid-publish, server a serves version 2 and b still serves 1: a caller pinning a version gets it from the
    server that has it (not from whichever server's turn it is), and NOT_FOUND only for a version none serves."""
    a, b = FakeTriton("a:1", ready=("2",)), FakeTriton("b:1", ready=("1",))
    backend = backend_with(repository, a, b)
    await backend.load()
    servicer = RankingServicer(RankingSettings(), backend)
    for pinned, server in (("2", a), ("1", b)):
        before = len(server.calls)
        for _ in range(4):
            reply = await servicer.Rank(pb.RankRequest(candidate_item_ids=["item-1"], model_version=pinned), None)
            assert reply.model_version.version == pinned
        assert len(server.calls) - before == 4 and {c["version"] for c in server.calls[before:]} == {pinned}
    with pytest.raises(VersionNotServed, match=r"version 3 of 'ranker' is not served \(serving 1, 2\)"):
        await servicer.Rank(pb.RankRequest(candidate_item_ids=["item-1"], model_version="3"), None)
    unpinned = [(await servicer.Rank(pb.RankRequest(candidate_item_ids=["item-1"]), None)).model_version.version]
    unpinned.append((await servicer.Rank(pb.RankRequest(candidate_item_ids=["item-1"]), None)).model_version.version)
    assert sorted(unpinned) == ["1", "2"], "without a pin, each server keeps its share of the calls"


async def test_a_restarted_pod_starts_on_the_servers_whose_version_passes_as_running_pods_serve_from_them(repository):
    """Version 2's local copy is bad (an empty vocabulary line) and server a serves only 2: running pods give a no
    calls and keep serving from b; a restarted pod must start the same way, not crash-loop. With no server left on
    a version that passes, start-up still refuses, naming the bad folder."""
    (repository / "ranker" / "2" / "item_vocabulary.txt").write_text("item-1\n\nitem-2\n")
    a, b = FakeTriton("a:1", ready=("2",)), FakeTriton("b:1", ready=("1",))
    restarted = backend_with(repository, a, b)
    await restarted.load()
    versions = {(await restarted.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(4)}
    assert versions == {"1"} and not a.calls and len(b.calls) == 4
    alone = backend_with(repository, FakeTriton("c:1", ready=("2",)))
    with pytest.raises(ModelConfigError, match="item_vocabulary.txt: line 2 is empty"):
        await alone.load()


def headless_service(repository, pods: dict[str, FakeTriton], addresses: list[str], closed: list[str]):
    """A backend on ``dns:///triton:8001``, which resolves to ``addresses`` (as they are when looked up), each
    address's client being its fake in ``pods``; a closed client's address is added to ``closed``."""

    async def resolve(host, port):
        assert (host, port) == ("triton", "8001")
        return sorted(addresses)

    def client(address):
        fake = pods[address]

        async def close():
            closed.append(address)

        fake.close = close
        return fake

    return TritonBackend(
        ["dns:///triton:8001"], repository, "ranker", ready_timeout_s=0, client_factory=client, resolver=resolve
    )


async def test_a_headless_service_name_is_resolved_into_one_server_per_pod_each_called_with_its_version(
    repository, monkeypatch
):
    """k8s names Triton by one dns:/// target. During a Triton rollout its pods serve different versions; resolved
    into one server per pod, each call names the version of the pod it goes to, so none fails (through the one
    name, gRPC spread calls over the pods and a review measured 35 % of them failing). A pod that leaves the
    Service's addresses is no longer called and its client is closed; a new one is called from the next refresh."""
    pods = {"10.0.0.1:8001": FakeTriton("10.0.0.1:8001", ready=("1",)), "10.0.0.2:8001": FakeTriton("10.0.0.2:8001")}
    pods["10.0.0.2:8001"].ready = ["2"]
    addresses = ["10.0.0.2:8001", "10.0.0.1:8001"]
    closed: list[str] = []
    backend = headless_service(repository, pods, addresses, closed)
    await backend.load()
    assert backend.targets == ["10.0.0.1:8001", "10.0.0.2:8001"]
    answered = [(await backend.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(100)]
    assert sorted(set(answered)) == ["1", "2"] and answered.count("1") == 50
    assert {c["version"] for c in pods["10.0.0.1:8001"].calls} == {"1"}
    assert {c["version"] for c in pods["10.0.0.2:8001"].calls} == {"2"}
    # The old pod leaves (rollout done), a new one on version 2 joins. The old pod's client stays open a while for
    # the calls that may still use it, then is closed.
    monkeypatch.setattr("services.ranking.backends.triton.CLIENT_CLOSE_GRACE_S", 0.05)
    pods["10.0.0.3:8001"] = FakeTriton("10.0.0.3:8001", ready=("2",))
    addresses[:] = ["10.0.0.2:8001", "10.0.0.3:8001"]
    assert await backend.refresh()
    assert closed == [] and backend.targets == ["10.0.0.2:8001", "10.0.0.3:8001"]
    await asyncio.sleep(0.2)
    assert closed == ["10.0.0.1:8001"]
    before = len(pods["10.0.0.1:8001"].calls)
    answered = [(await backend.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(10)]
    assert answered == ["2"] * 10 and len(pods["10.0.0.1:8001"].calls) == before
    assert len(pods["10.0.0.3:8001"].calls) == 5


async def test_close_closes_the_clients_of_departed_pods_still_within_their_grace(repository):
    pods = {"10.0.0.1:8001": FakeTriton("10.0.0.1:8001"), "10.0.0.2:8001": FakeTriton("10.0.0.2:8001")}
    addresses = ["10.0.0.1:8001", "10.0.0.2:8001"]
    closed: list[str] = []
    backend = headless_service(repository, pods, addresses, closed)
    await backend.load()
    addresses.remove("10.0.0.1:8001")  # its client waits out CLIENT_CLOSE_GRACE_S (60 s) for calls still on it
    assert await backend.refresh()
    await backend.close()
    assert sorted(closed) == ["10.0.0.1:8001", "10.0.0.2:8001"]


async def test_a_new_versions_item_files_are_read_off_the_event_loop(repository, monkeypatch):
    # A million-item vocabulary takes about a second to read: on the event loop, every call in flight waited.
    fake = FakeTriton("a:1", ready=("1",))
    backend = backend_with(repository, fake)
    await backend.load()
    loop_thread, reader_threads = threading.get_ident(), []
    read = ServedModel.read

    def recorded_read(*args, **kwargs):
        reader_threads.append(threading.get_ident())
        return read(*args, **kwargs)

    monkeypatch.setattr(ServedModel, "read", staticmethod(recorded_read))
    fake.ready = ["2"]
    assert await backend.refresh()
    assert reader_threads and loop_thread not in reader_threads


async def test_a_name_that_stops_resolving_keeps_its_last_addresses(repository):
    fake = FakeTriton("10.0.0.1:8001", ready=("1",))
    failing = [False]

    async def resolve(host, port):
        if failing[0]:
            raise OSError("Temporary failure in name resolution")
        return ["10.0.0.1:8001"]

    backend = TritonBackend(
        ["dns:///triton:8001"], repository, "ranker", ready_timeout_s=0, client_factory=lambda a: fake, resolver=resolve
    )
    await backend.load()
    failing[0] = True
    await backend.refresh()
    assert backend.targets == ["10.0.0.1:8001"]
    assert (await backend.rank([], ["item-1"], timeout=0.5)).model_version == "1"


async def test_the_resolver_gives_each_address_of_a_name_with_its_port():
    from services.ranking.backends.triton import resolve_addresses

    addresses = await resolve_addresses("localhost", "8001")
    assert "127.0.0.1:8001" in addresses and all(a.endswith(":8001") for a in addresses)


async def test_one_servers_failed_metadata_call_does_not_bench_the_others_serving_the_version(repository):
    """Both servers serve version 2; asking the first about it fails (a transient error, a reload under way there):
    the version is described by the second, and both keep their share of the calls."""

    class Flaky(FakeTriton):
        async def get_model_metadata(self, model_name, model_version="", as_json=False, client_timeout=None):
            raise InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")

    a, b = Flaky("a:1", ready=("2",)), FakeTriton("b:1", ready=("2",))
    backend = backend_with(repository, a, b)
    await backend.load()
    versions = [(await backend.rank([], ["item-1"], timeout=0.5)).model_version for _ in range(4)]
    assert versions == ["2"] * 4 and len(a.calls) == len(b.calls) == 2


async def test_a_refused_version_is_not_read_again_at_every_refresh_until_its_files_change(repository, monkeypatch):
    """Reading a catalog's vocabulary takes a while: a version whose files were refused is not read again at each
    watch (every 2 s) while its folder is unchanged; changed, it is read again and served once it passes."""
    from services.ranking.backends import triton as triton_module

    reads: list[str] = []
    real_read = triton_module.ServedModel.read

    def counting_read(name, version, folder, contract):
        reads.append(version)
        return real_read(name, version, folder, contract)

    monkeypatch.setattr(triton_module.ServedModel, "read", staticmethod(counting_read))
    vocabulary = repository / "ranker" / "2" / "item_vocabulary.txt"
    good = vocabulary.read_text()
    vocabulary.write_text("item-1\n\nitem-2\n")
    a, b = FakeTriton("a:1", ready=("2",)), FakeTriton("b:1", ready=("1",))
    backend = backend_with(repository, a, b)
    await backend.load()
    for _ in range(3):
        await backend.refresh()
    assert reads.count("2") == 1 and backend.model_version == "1"
    await asyncio.sleep(0.01)  # a new modification time
    vocabulary.write_text(good)
    assert await backend.refresh()
    assert reads.count("2") == 2 and backend.model_version == "2"


async def test_a_refused_version_is_counted_once_for_its_files_and_again_when_new_files_are_refused(repository):
    """The refusal metric (aisle_artifact_refused_total, through ``on_refused``) counts each version's refused
    files once, not once per watch, and a new refusal after the files changed counts again."""
    refusals: list[bool] = []
    a, b = FakeTriton("a:1", ready=("2",)), FakeTriton("b:1", ready=("1",))
    by_target = {fake.target: fake for fake in (a, b)}
    backend = TritonBackend(
        list(by_target),
        repository,
        "ranker",
        ready_timeout_s=0,
        client_factory=by_target.__getitem__,
        on_refused=lambda: refusals.append(True),
    )
    vocabulary = repository / "ranker" / "2" / "item_vocabulary.txt"
    vocabulary.write_text("item-1\n\nitem-2\n")
    await backend.load()
    for _ in range(3):
        await backend.refresh()
    assert backend.model_version == "1" and len(refusals) == 1
    await asyncio.sleep(0.01)  # a new modification time
    vocabulary.write_text("item-1\n\n\nitem-2\n")
    await backend.refresh()
    assert len(refusals) == 2 and backend.model_version == "1"


async def test_the_services_triton_backend_counts_its_refusals_in_the_artifact_metrics(repository, monkeypatch):
    from services.ranking import app as ranking_app

    a = FakeTriton("a:1", ready=("2", "1"))
    monkeypatch.setattr(ranking_app, "TritonBackend", functools.partial(TritonBackend, client_factory={"a:1": a}.get))
    registry = CollectorRegistry()
    settings = RankingSettings(
        backend="triton", triton_targets="a:1", model_repository=repository, fallback_to_embedded=False
    )
    backend = ranking_app.build_backend(settings, ranking_app.RankingMetrics(registry))
    (repository / "ranker" / "2" / "item_vocabulary.txt").write_text("item-1\n\nitem-2\n")
    with pytest.raises(ModelConfigError):
        await backend.load()
    labels = {"service": "ranking", "kind": "model"}
    assert registry.get_sample_value("aisle_artifact_refused_total", labels) == 1
    assert registry.get_sample_value("aisle_artifact_last_refusal_timestamp_seconds", labels) > 0


async def test_a_refresh_that_cannot_use_the_new_pods_keeps_the_old_ones_and_their_clients_open(repository):
    """The old pod leaves the name's addresses while the new one serves a version not synced here yet: the routes
    in use stay, and so does the old pod's client (closing it made every call fail INTERNAL, "Channel is closed")."""
    old_pod, new_pod = FakeTriton("10.0.0.1:8001", ready=("1",)), FakeTriton("10.0.0.2:8001", ready=("3",))
    pods, addresses, closed = {"10.0.0.1:8001": old_pod, "10.0.0.2:8001": new_pod}, ["10.0.0.1:8001"], []
    backend = headless_service(repository, pods, addresses, closed)
    await backend.load()
    addresses[:] = ["10.0.0.2:8001"]
    assert not await backend.refresh()  # version 3 is not in the local copy: nothing to switch to
    assert (await backend.rank([], ["item-1"], timeout=0.5)).model_version == "1"
    assert closed == [] and len(old_pod.calls) == 1
    await backend.close()
    assert sorted(closed) == ["10.0.0.1:8001", "10.0.0.2:8001"]


@pytest.mark.parametrize("target", ["dns:///triton", "dns:triton:8001", "dns:///triton:http"])
def test_a_dns_target_without_a_port_is_refused_at_start_up(target):
    from services.core.settings import SettingsError, load_settings

    with pytest.raises(SettingsError, match="TRITON_TARGETS"):
        load_settings(RankingSettings, {"backend": "triton", "triton_targets": target})


async def test_a_pinned_version_the_fallback_does_not_serve_gets_the_primarys_failure_not_not_found(repository):
    fake, fallbacks = FakeTriton("a:1", ready=("2",)), []
    backend = FallbackBackend(backend_with(repository, fake), FakeEmbedded(), on_fallback=fallbacks.append)
    await backend.load()
    fake.error = InferenceServerException("failed to connect", status="StatusCode.UNAVAILABLE")
    with pytest.raises(BackendUnavailable):
        await backend.rank([], ["item-1"], timeout=0.5, version="2")
    assert fallbacks == []  # no fallback answered
    unpinned = await backend.rank([], ["item-1"], timeout=0.5)
    assert unpinned.fallback and fallbacks == ["INFERENCE_SERVER_UNAVAILABLE"]


async def test_a_dual_stack_name_gives_each_pod_once(monkeypatch):
    """Each pod of a dual-stack headless Service has an IPv4 and an IPv6 address: listed under both, it would get
    two shares of the calls."""
    import socket

    from services.ranking.backends.triton import resolve_addresses

    async def getaddrinfo(host, port, type=0):  # noqa: A002 - the name getaddrinfo gives it
        return [
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", 8001, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.1", 8001)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::2", 8001, 0, 0)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.0.0.2", 8001)),
        ]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", getaddrinfo)
    assert await resolve_addresses("triton", "8001") == ["10.0.0.1:8001", "10.0.0.2:8001"]

    async def only_v6(host, port, type=0):  # noqa: A002
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("fd00::1", 8001, 0, 0))]

    monkeypatch.setattr(asyncio.get_running_loop(), "getaddrinfo", only_v6)
    assert await resolve_addresses("triton", "8001") == ["[fd00::1]:8001"]
