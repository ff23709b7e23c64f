"""RecommendationService: runs the surface's policy pipeline within the request's budget; ingests events."""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid

import numpy as np
from opentelemetry import trace

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from services.core.errors import DependencyUnavailable, InvalidArgument, ResourceExhausted
from services.core.logs import Throttled
from services.core.telemetry import current_trace_id
from services.core.validation import EVENT_TYPES, MAX_ID_LENGTH, Violations, timestamp_problem
from services.gateway.budget import RequestBudget
from services.gateway.cache import AnonymousCache
from services.gateway.candidates import Candidates
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import Dependencies
from services.gateway.events import EventLogFull
from services.gateway.pipeline import PipelineMetrics, RequestState, reason_name
from services.gateway.policies import SURFACES, PolicySet
from services.gateway.reasons import reasons_for
from services.gateway.sessions import Batch, RecentBatches, batch_digest, subject_key
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

SURFACE_NAMES = {value: name for name, value in common.Surface.items()}
EVENT_NAMES = {value: name for name, value in common.EventType.items()}
#: Events that count as a success for the exploration bandit.
SUCCESS_EVENTS = {common.EVENT_TYPE_CLICK, common.EVENT_TYPE_ADD_TO_CART, common.EVENT_TYPE_PURCHASE}
BATCH_REUSED = (
    "was given to other events within event_batch_ttl_s (an hour by default): give each batch its own id, and a "
    "retry the same id with the same events"
)


def events_bytes(request: pb.TrackEventsRequest) -> bytes:
    """A batch's events as bytes that a retry of it reproduces (deterministic serialization, the id left out)."""
    return pb.TrackEventsRequest(events=request.events).SerializeToString(deterministic=True)


#: Most bytes one history entry takes on the wire: an id of MAX_ID_LENGTH four-byte characters, its event type,
#: quantity and time. The history sent on is the session store's and the request's, up to ``max_history`` entries.
MAX_INTERACTION_BYTES = 4 * MAX_ID_LENGTH + 64
#: Share of the request budget the session reads (history, exposure counts) may take.
SESSION_SHARE = 0.1
#: The other fields of a Recommend request that the gateway forwards to retrieval.
#: What the gateway forwards of the caller's request as it came (the subject stays in the gateway).
FORWARDED_FIELDS = ("context", "anchor_item_ids", "exclusions")


def shown_in(response: pb.RecommendResponse) -> Candidates:
    """A cached answer's items as the exposure logger reads them, its exploration picks marked again (the
    answer's items carry the exploration reason)."""
    shown = Candidates.of([i.item_id for i in response.items], common.CANDIDATE_SOURCE_UNSPECIFIED)
    shown.exploration = np.array(
        [any(r.code == common.REASON_CODE_EXPLORATION for r in i.reasons) for i in response.items], dtype=bool
    )
    return shown


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        policies: PolicySet,
        catalog: ItemCatalog,
        deps: Dependencies,
        metrics: PipelineMetrics,
        cache: AnonymousCache | None = None,
    ):
        self.settings, self.policies, self.catalog, self.deps, self.metrics = settings, policies, catalog, deps, metrics
        self.cache = cache if cache is not None else AnonymousCache(0)
        self._salt = settings.subject_key_salt.get_secret_value()
        self._background: set[asyncio.Task] = set()
        self._outages = Throttled(log)  # a store outage would otherwise be a warning per request
        #: The named TrackEvents batches this replica counted for the bandit (its counts are this replica's too).
        self._counted_batches = RecentBatches(settings.event_batch_ttl_s, settings.max_remembered_batches)

    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:  # noqa: N802
        started = time.perf_counter()
        self.validate(request)
        settings = self.settings
        key = subject_key(request.subject, self._salt)
        variant = self.policies.variant_for(key, request.experiment_variant_override)
        pipeline = self.policies.pipeline_for(request.surface, variant)
        k = request.k or settings.default_k
        span = trace.get_current_span()
        span.set_attribute("aisle.surface", SURFACE_NAMES[request.surface])
        span.set_attribute("aisle.policy", pipeline.name)
        span.set_attribute("aisle.variant", variant)
        # Without consent nothing about the shopper is used or stored: context (region, page, cart) only. The key
        # (hashed, never the id in clear) picks the variant and seeds exploration for this request only; it goes
        # onto the exported span only with consent (with the public default salt a guessable id is recoverable).
        if request.consent:
            span.set_attribute("aisle.subject", key)
        # The budget counts from here: the session reads are part of the request's time.
        budget = RequestBudget(settings.total_budget_ms / 1000, context.time_remaining(), settings.min_stage_ms / 1000)
        history, exposures, session_error = [], {}, ""
        if request.consent:
            # Within a share of the budget: a session store that does not answer (a dead Redis node holds a
            # connection attempt for a second) costs personalisation, not the caller's deadline.
            reads_within = budget.stage_timeout("sessions", SESSION_SHARE)
            try:
                async with asyncio.timeout(reads_within):
                    stored = usable(await self.deps.sessions.history(key))
                    exposures = await self.deps.sessions.exposures(key)
            except Exception as error:  # a session store outage costs personalisation, not the answer
                self._outages.warning("sessions", "session store unavailable: %r", error)
                stored, exposures = [], {}
                session_error = f"session store unavailable: {type(error).__name__}"
            history = (stored + list(request.history))[-settings.max_history :]
        # The shared cache only holds answers that nothing about the subject shapes: no history, no exposures. A
        # consenting shopper whose session could not be read is not such a one: answered from the cache, the answer
        # would ignore their history and exposure caps without saying so (only a fresh answer flags the outage).
        shaped = history or exposures or session_error
        segment = self.cache.segment(request, variant, k) if not shaped else None
        if segment is not None and (cached := self.cache.get(segment)) is not None:
            response = pb.RecommendResponse()
            response.CopyFrom(cached)
            response.tracking_token, response.trace_id = uuid.uuid4().hex, current_trace_id()
            # This request's own times: the stored ones are another request's stages.
            elapsed_ms = (time.perf_counter() - started) * 1000
            del response.stage_latencies[:]
            response.stage_latencies.add(stage="cache", duration_ms=elapsed_ms)
            response.stage_latencies.add(stage="total", duration_ms=elapsed_ms)
            span.set_attribute("aisle.cache_hit", True)
            # A cached answer is still an exposure: log it with this request's variant and token.
            state = RequestState(
                request, key, [], k, RequestBudget(1.0, None, 0.0), self.catalog, variant, ("", ""), exposures
            )
            self._after(pipeline.after_response(state, shown_in(response), response, self.metrics))
            return response
        budget.check_feasible()
        state = RequestState(
            request, key, history, k, budget, self.catalog, variant, self.policies.model_for(variant), exposures
        )
        if session_error:
            state.degrade(common.DEGRADATION_REASON_SOURCE_DROPPED, "sessions", session_error)
        items = await pipeline.run(state, self.metrics)
        # Nothing proposed at all because retrieval failed: no answer is possible. (Proposed, then all filtered out,
        # is a short answer, not an outage: a retry would not help. A session-store outage is not retrieval's.)
        if not len(items) and not state.fetched and state.retrieval_failed:
            raise DependencyUnavailable(
                "retrieval is down or too slow and no popular items are cached for this region yet",
                reason="RETRIEVAL_UNAVAILABLE",
            )
        response = self._response(state, items, pipeline, variant)
        response.stage_latencies.add(stage="total", duration_ms=(time.perf_counter() - started) * 1000)
        # Each reason once per answer: the alerts read it as a share of answers (two dropped shards are one answer).
        for reason in {reason_name(degradation.reason) for degradation in response.degradations}:
            self.metrics.degraded.labels(reason).inc()
        span.set_attribute("aisle.degraded", len(response.degradations) > 0)
        if segment is not None and not response.degradations:
            self.cache.put(segment, response)
        self._after(pipeline.after_response(state, items, response, self.metrics))
        return response

    def _response(self, state: RequestState, items: Candidates, pipeline, variant: str) -> pb.RecommendResponse:
        response = pb.RecommendResponse(
            tracking_token=uuid.uuid4().hex, trace_id=current_trace_id(), experiment_variant=variant
        )
        events = {e.item_id: e.event_type for e in state.history}
        region = state.region
        for position, candidate in enumerate(items.rows()):
            item = response.items.add(
                item_id=candidate.item_id,
                score=candidate.final,
                sources=candidate.sources,
                reasons=reasons_for(candidate, events, region, self.catalog, state.popular_in),
                position=position,
            )
            if "purchase" in candidate.scores:
                item.purchase_probability = candidate.scores["purchase"]
        if len(items) < state.k:
            state.degrade(common.DEGRADATION_REASON_SHORT_ANSWER, "selection", f"{len(items)} of {state.k} items")
        response.versions.extend(state.versions)
        response.versions.add(kind="policy", name=pipeline.name, version=pipeline.version)
        response.degradations.extend(state.degradations)
        for stage, ms in state.stage_ms.items():
            response.stage_latencies.add(stage=stage, duration_ms=ms)
        self.cache.observe_versions([v for v in response.versions if v.kind in ("model", "index")], variant)
        return response

    def _after(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self, timeout_s: float) -> None:
        """Waits up to ``timeout_s`` for the side effects of the answers already sent (their exposures), which the
        event log and the session store must outlive."""
        if not self._background:
            return
        _, pending = await asyncio.wait(set(self._background), timeout=timeout_s)
        if pending:
            log.warning("%d answers' side effects still unfinished after %.0f s", len(pending), timeout_s)

    async def ForgetSubject(self, request: pb.ForgetSubjectRequest, context) -> pb.ForgetSubjectResponse:  # noqa: N802
        """Deletes the subject's session, then writes the erasure record for the event log's readers; a failure of
        either is the caller's to retry (both are idempotent)."""
        check = Violations()
        check.subject("subject", request.subject)
        check.raise_if_any()
        key = subject_key(request.subject, self._salt)
        # The side effects of answers this replica already sent (their exposure writes, a few milliseconds each)
        # would otherwise make the session again just after it is deleted.
        await self.drain(timeout_s=1.0)
        try:
            deleted = await self.deps.sessions.forget(key)
        except Exception as error:
            raise DependencyUnavailable(
                f"session store unavailable: {type(error).__name__}; nothing was deleted, retry",
                reason="SESSIONS_UNAVAILABLE",
            ) from None
        try:
            await self.deps.events.write([{"type": "forget", "at": time.time(), "subject": key}])
        except EventLogFull as error:
            raise ResourceExhausted(
                f"the session is deleted, the event log cannot take the erasure record now ({error}); retry shortly",
                retry_after_s=1.0,
            ) from None
        log.info("forgot subject %s (session %s)", key, "deleted" if deleted else "empty")
        return pb.ForgetSubjectResponse(session_deleted=deleted)

    async def TrackEvents(self, request: pb.TrackEventsRequest, context) -> pb.TrackEventsResponse:  # noqa: N802
        check = Violations()
        check.count("events", request.events, limit=self.settings.max_events_per_call)
        if not request.events:
            check.add("events", "must contain at least one event")
        check.id("batch_id", request.batch_id, required=False)
        for i, event in enumerate(request.events[: self.settings.max_events_per_call]):
            check.subject(f"events[{i}].subject", event.subject)
            check.id(f"events[{i}].item_id", event.item_id)
            check.id(f"events[{i}].tracking_token", event.tracking_token, required=False)
            check.enum(f"events[{i}].event_type", event.event_type, list(EVENT_NAMES)[1:], EVENT_NAMES)
            if event.quantity < 0:
                check.add(f"events[{i}].quantity", f"must not be negative, got {event.quantity}")
            if not (math.isfinite(event.unit_price) and event.unit_price >= 0):
                check.add(f"events[{i}].unit_price", f"must be a finite number, not negative, got {event.unit_price}")
            check.timestamp(f"events[{i}].event_time", event.event_time)
            check.context(f"events[{i}].context", event.context)
        check.raise_if_any()
        batch_id = request.batch_id
        # What a named batch is remembered by: a retry must carry the same events.
        digest = batch_digest(events_bytes(request)) if batch_id else b""
        consented = [e for e in request.events if e.consent]
        records = [
            {
                "type": EVENT_NAMES[e.event_type].removeprefix("EVENT_TYPE_").lower(),
                "at": time.time(),
                # When the shop says it happened (a batch sent later, a queue on its side); None: not given.
                "event_time": e.event_time.seconds + e.event_time.nanos / 1e9 if e.HasField("event_time") else None,
                "subject": subject_key(e.subject, self._salt),
                "item_id": e.item_id,
                "quantity": e.quantity,
                "unit_price": e.unit_price,
                "tracking_token": e.tracking_token,
                "region": e.context.region,
                # The caller's batch and the event's place in it (a retry's copy has the same): what a reader of the
                # log drops a retry's copies by, without taking two equal events of one batch for copies.
                "batch_id": batch_id,
                "batch_index": i,
            }
            for i, e in enumerate(request.events)
            if e.consent
        ]
        try:
            await self.deps.events.write(records)
        except EventLogFull as error:
            raise ResourceExhausted(
                f"event log cannot take events now ({error}); retry shortly", retry_after_s=1.0
            ) from None
        by_subject: dict[str, list[common.Interaction]] = {}
        for event in consented:
            interaction = common.Interaction(
                item_id=event.item_id, event_type=event.event_type, quantity=event.quantity
            )
            if event.HasField("event_time"):
                interaction.event_time.CopyFrom(event.event_time)
            by_subject.setdefault(subject_key(event.subject, self._salt), []).append(interaction)
        try:
            # Every subject's, or (failing) none: a retry adds no twin; with a batch id, a batch stored already
            # (its reply lost) is not stored again.
            stored = await self.deps.sessions.append_all(by_subject, batch_id, digest)
        except Exception as error:
            # The log already has the events: a retry may duplicate them there (at-least-once), never lose them.
            raise DependencyUnavailable(
                f"session store unavailable ({type(error).__name__}); retry", reason="SESSIONS_UNAVAILABLE"
            ) from None
        if stored is Batch.CONFLICT:
            raise InvalidArgument({"batch_id": BATCH_REUSED})
        # Aggregate feedback for the bandit is kept with or without consent: it says nothing about the shopper. It
        # counts a call once the store took it (a failed call's retry counts it then), and a named batch once on
        # this replica: also when the store had taken it on an attempt whose reply was lost.
        if not batch_id or self._counted_batches.see(batch_id, digest) is Batch.STORED:
            self._count_successes(request)
        return pb.TrackEventsResponse(accepted_count=len(request.events), rejected_count=0)

    def _count_successes(self, request: pb.TrackEventsRequest) -> None:
        for event in request.events:
            if event.event_type in SUCCESS_EVENTS:
                self.deps.feedback.succeeded(event.item_id)

    def validate(self, request: pb.RecommendRequest) -> None:
        settings = self.settings
        check = Violations()
        check.subject("subject", request.subject)
        check.enum("surface", request.surface, list(SURFACES.values()), SURFACE_NAMES)
        check.context("context", request.context)
        check.history("history", request.history, limit=settings.max_history)
        check.ids("anchor_item_ids", request.anchor_item_ids, limit=settings.max_anchors)
        if request.surface in (common.SURFACE_PRODUCT_PAGE, common.SURFACE_CART) and not request.anchor_item_ids:
            check.add(
                "anchor_item_ids",
                f"must name the page's product or the cart's items for {SURFACE_NAMES[request.surface]}",
            )
        check.k("k", request.k, limit=settings.max_k)
        check.exclusions("exclusions", request.exclusions, limit=settings.max_exclusions)
        if request.experiment_variant_override:
            try:
                self.policies.variant_for("", request.experiment_variant_override)
            except KeyError:
                running = self.policies.experiment
                check.add(
                    "experiment_variant_override",
                    "is not a variant of the running experiment"
                    if running is not None
                    else "no experiment is running (the policy file defines none): leave it empty",
                )
        if not check:
            self._check_forwarded_size(check, request)
        check.raise_if_any()

    def _check_forwarded_size(self, check: Violations, request: pb.RecommendRequest) -> None:
        """What retrieval is sent (this request's context, anchors and exclusions, and up to
        ``max_history`` entries of history) fits in the message size it accepts, ``downstream_max_message_bytes``
        (the gateway itself reads up to 16 MB, so that an oversized field is named: a request retrieval refused at
        the transport would look like a retrieval outage). The fields' own limits count entries and characters,
        and 5,000 exclusions of 256 four-byte characters would not fit. Names the largest field. (History is given
        room for its limit, at most half the message.)"""
        limit = self.settings.downstream_max_message_bytes
        history_room = min(self.settings.max_history * MAX_INTERACTION_BYTES, limit // 2)
        room = limit - history_room - 1024
        exclusions = request.exclusions
        entries = len(exclusions.item_ids) + len(exclusions.brands) + len(exclusions.categories)
        entries += len(request.anchor_item_ids) + 1  # the region
        if entries * (4 * MAX_ID_LENGTH + 8) + request.context.ByteSize() <= room:
            return  # cannot be too large: skip serialising the request to measure it
        sizes = {name: _wire_size(request, name) for name in FORWARDED_FIELDS}
        if sum(sizes.values()) > room:
            largest = max(sizes, key=sizes.__getitem__)
            check.add(
                largest,
                f"is {sizes[largest]} bytes; with the rest of the request it must fit in the {room} bytes "
                f"left for it in a message to retrieval (at most {limit} bytes)",
            )


def usable(stored: list[common.Interaction]) -> list[common.Interaction]:
    """Stored events the pipeline can read: one with an ``event_time`` out of Timestamp's range (stored before
    TrackEvents checked it), or an event type this build does not know (stored by a newer gateway sharing the
    Redis sessions, in a rolling update), is left out, so it neither fails the request nor is forwarded for
    retrieval and ranking to refuse."""
    return [e for e in stored if e.event_type in EVENT_TYPES and timestamp_problem(e.event_time) is None]


def _wire_size(request: pb.RecommendRequest, name: str) -> int:
    value = getattr(request, name)
    if name == "anchor_item_ids":
        return sum(len(item.encode()) + 3 for item in value)
    return value.ByteSize() + 4 if request.HasField(name) else 0


__all__ = ["RecommendationServicer", "InvalidArgument"]
