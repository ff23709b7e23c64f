"""RecommendationService: retrieve -> merge -> rank -> select top-k, within the request's time budget."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Protocol

import grpc
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.recommendation.v1 import recommendation_service_pb2_grpc as pb_grpc
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.core.errors import BudgetExhausted, DependencyUnavailable
from services.core.metrics import LATENCY_BUCKETS
from services.core.telemetry import current_trace_id
from services.core.validation import Violations
from services.gateway.budget import RequestBudget
from services.gateway.merge import MergedCandidate, by_ranking, by_retrieval, merge_candidates
from services.gateway.policies import POLICIES, POLICY_VERSION
from services.gateway.reasons import reasons_for
from services.gateway.settings import GatewaySettings

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

SURFACE_NAMES = {value: name for name, value in common.Surface.items()}


class Downstream(Protocol):
    retrieval: object  # RetrievalServiceStub
    ranking: object  # RankingServiceStub


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry):
        self.stage = Histogram(
            "aisle_gateway_stage_seconds",
            "Time per Recommend stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.degraded = Counter("aisle_gateway_degraded", "Degraded answers, by reason.", ["reason"], registry=registry)


class RecommendationServicer(pb_grpc.RecommendationServiceServicer):
    def __init__(
        self,
        settings: GatewaySettings,
        downstream: Downstream,
        metrics: GatewayMetrics,
    ):
        """``downstream`` has ``retrieval`` and ``ranking`` stubs (set once it has connected)."""
        self.settings = settings
        self.downstream = downstream
        self.metrics = metrics

    async def Recommend(self, request: pb.RecommendRequest, context) -> pb.RecommendResponse:  # noqa: N802
        started = time.perf_counter()
        self.validate(request)
        settings = self.settings
        budget = RequestBudget(settings.total_budget_ms / 1000, context.time_remaining(), settings.min_stage_ms / 1000)
        policy = POLICIES[request.surface]
        k = request.k or settings.default_k
        response = pb.RecommendResponse(tracking_token=uuid.uuid4().hex, trace_id=current_trace_id())
        span = trace.get_current_span()
        span.set_attribute("aisle.surface", policy.name)
        span.set_attribute("aisle.k", k)
        # Without consent nothing about the shopper is used: context (region, page, cart) only.
        history = list(request.history) if request.consent else []

        with self._stage("retrieval", response):
            retrieved = await self._retrieve(request, history, policy, budget)
        response.versions.append(retrieved.index_version)
        response.degradations.extend(retrieved.degradations)
        candidates = merge_candidates(retrieved.candidates, limit=settings.candidates_per_source * len(policy.sources))

        with self._stage("ranking", response):
            ordered = await self._rank(request, history, candidates, budget, response)

        with self._stage("selection", response):
            events = {i.item_id: i.event_type for i in history}
            for position, candidate in enumerate(ordered[:k]):
                item = response.items.add(
                    item_id=candidate.item_id,
                    score=candidate.purchase_probability
                    if candidate.purchase_probability is not None
                    else 1.0 / (1 + position),
                    sources=candidate.sources,
                    reasons=reasons_for(candidate, events, request.context.region),
                    position=position,
                )
                if candidate.purchase_probability is not None:
                    item.purchase_probability = candidate.purchase_probability
            if len(response.items) < k:
                response.degradations.add(
                    reason=common.DEGRADATION_REASON_SHORT_ANSWER,
                    stage="selection",
                    detail=f"{len(response.items)} of {k} items after filters",
                )
        response.versions.add(kind="policy", name=policy.name, version=POLICY_VERSION)
        total_ms = (time.perf_counter() - started) * 1000
        response.stage_latencies.add(stage="total", duration_ms=total_ms)
        for degradation in response.degradations:
            self.metrics.degraded.labels(common.DegradationReason.Name(degradation.reason)).inc()
        span.set_attribute("aisle.degraded", len(response.degradations) > 0)
        return response

    async def _retrieve(self, request, history, policy, budget: RequestBudget) -> retrieval_pb.RetrieveResponse:
        timeout = budget.stage_timeout("retrieval", self.settings.retrieval_share)
        try:
            return await self.downstream.retrieval.Retrieve(
                retrieval_pb.RetrieveRequest(
                    subject=request.subject,
                    surface=request.surface,
                    context=request.context,
                    history=history,
                    anchor_item_ids=request.anchor_item_ids,
                    k=self.settings.candidates_per_source,
                    sources=policy.sources,
                    exclusions=request.exclusions,
                    exclude_history=policy.exclude_history,
                    consent=request.consent,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if budget.remaining() <= 0:
                raise BudgetExhausted("the deadline passed while retrieving candidates") from None
            raise DependencyUnavailable(
                f"retrieval failed: {error.code().name}", reason="RETRIEVAL_UNAVAILABLE"
            ) from None

    async def _rank(
        self, request, history, candidates: list[MergedCandidate], budget: RequestBudget, response
    ) -> list[MergedCandidate]:
        if not candidates:
            return []
        try:
            timeout = budget.stage_timeout("ranking", self.settings.ranking_share)
            ranked = await self.downstream.ranking.Rank(
                ranking_pb.RankRequest(
                    subject=request.subject,
                    surface=request.surface,
                    context=request.context,
                    history=history,
                    candidate_item_ids=[c.item_id for c in candidates],
                ),
                timeout=timeout,
            )
        except (grpc.aio.AioRpcError, BudgetExhausted) as error:
            late = isinstance(error, BudgetExhausted) or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = (
                common.DEGRADATION_REASON_RANKING_TIMEOUT if late else common.DEGRADATION_REASON_RANKING_UNAVAILABLE
            )
            detail = str(error) if isinstance(error, BudgetExhausted) else error.code().name
            response.degradations.add(reason=reason, stage="ranking", detail=detail)
            log.warning("ranking degraded: %s", detail)
            return by_retrieval(candidates)
        response.versions.append(ranked.model_version)
        response.degradations.extend(ranked.degradations)
        for candidate, scored in zip(candidates, ranked.scored_items, strict=True):
            candidate.purchase_probability = scored.purchase_probability
        return by_ranking(candidates)

    def _stage(self, name: str, response: pb.RecommendResponse):
        return _Stage(name, response, self.metrics)

    def validate(self, request: pb.RecommendRequest) -> None:
        settings = self.settings
        check = Violations()
        check.subject("subject", request.subject)
        check.enum("surface", request.surface, list(POLICIES), SURFACE_NAMES)
        check.region("context.region", request.context.region)
        check.count("context.attributes", request.context.attributes, limit=32)
        check.history("history", request.history, limit=settings.max_history)
        check.ids("anchor_item_ids", request.anchor_item_ids, limit=settings.max_anchors)
        if request.surface in (common.SURFACE_PRODUCT_PAGE, common.SURFACE_CART) and not request.anchor_item_ids:
            check.add(
                "anchor_item_ids",
                f"must name the page's product or the cart's items for {SURFACE_NAMES[request.surface]}",
            )
        check.k("k", request.k, limit=settings.max_k)
        exclusions = request.exclusions
        total = len(exclusions.item_ids) + len(exclusions.brands) + len(exclusions.categories)
        if total > settings.max_exclusions:
            check.add("exclusions", f"must have at most {settings.max_exclusions} entries in all, got {total}")
        else:
            check.ids("exclusions.item_ids", exclusions.item_ids, limit=settings.max_exclusions)
        check.raise_if_any()


class _Stage:
    """Times one stage into the response, the stage histogram and a child span."""

    def __init__(self, name: str, response: pb.RecommendResponse, metrics: GatewayMetrics):
        self.name, self.response, self.metrics = name, response, metrics

    def __enter__(self):
        self._span = tracer.start_as_current_span(self.name)
        self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        seconds = time.perf_counter() - self._started
        self.metrics.stage.labels(self.name).observe(seconds)
        self.response.stage_latencies.add(stage=self.name, duration_ms=seconds * 1000)
        return self._span.__exit__(*exc_info)
