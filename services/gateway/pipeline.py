"""The request pipeline: named components of five kinds, run in a fixed order by one executor.

- **sources** propose candidates (run concurrently, each within its own deadline slice; fail-open or -closed);
- **filters** keep or remove candidates, never reorder (they answer a keep mask);
- **scorers** add score columns in input order, never drop;
- **selectors** alone sort and truncate;
- **side effects** run after the answer is built, fire-and-forget (exposure logging).

Candidates travel as columns (:class:`~services.gateway.candidates.Candidates`), not one object per item.

A policy (see :mod:`services.gateway.policies`) names the components of each step. Every stage gets a span; every
component gets a latency histogram under its name, and a span too when ``trace_components`` is set.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.core.errors import BudgetExhausted, DependencyUnavailable, ServiceError
from services.core.metrics import LATENCY_BUCKETS
from services.core.telemetry import ActiveSpan
from services.gateway.budget import RequestBudget
from services.gateway.candidates import Candidates, merge
from services.gateway.catalog import ItemCatalog
from services.gateway.events import EventLogFull

log = logging.getLogger(__name__)


def reason_name(reason: int) -> str:
    """A degradation reason's name; ``UNKNOWN`` for a number this build does not know (a retrieval or ranking
    rolled out first with a new reason: its answers must not fail here, nor grow the metric's labels)."""
    return common.DegradationReason.Name(reason) if reason in common.DegradationReason.values() else "UNKNOWN"


@dataclass
class RequestState:
    """Everything a component may read about one request (and the little it may write)."""

    request: pb.RecommendRequest
    subject_key: str  # hashed subject id: never the id in clear
    history: list[common.Interaction]  # request history merged with the session store (empty without consent)
    k: int
    budget: RequestBudget
    catalog: ItemCatalog
    variant: str = ""
    #: Ranking model name and version the variant asks for ("" = the served default).
    model: tuple[str, str] = ("", "")
    #: Times each item was already shown to the subject (empty without consent).
    exposures: dict[str, int] = field(default_factory=dict)
    degradations: list[common.Degradation] = field(default_factory=list)
    versions: list[common.ArtifactVersion] = field(default_factory=list)
    stage_ms: dict[str, float] = field(default_factory=dict)
    #: Candidates the sources (or the fallback) proposed, before any filter.
    fetched: int = 0
    #: A source failed or was dropped, or retrieval flagged a dropped part, during the retrieval stage (what a
    #: degradation recorded before it, e.g. the session store's, is not).
    retrieval_failed: bool = False
    #: The region whose sales ranked the answer's popular items, when not the request's ("" for the whole shop's: an
    #: index without sales by region, or the fallback's list of calls without a region; another region's when the
    #: fallback served that region's list): what the answer's "Popular in ..." says.
    popular_in: str | None = None

    @property
    def region(self) -> str:
        return self.request.context.region

    def degrade(self, reason: int, stage: str, detail: str) -> None:
        self.degradations.append(common.Degradation(reason=reason, stage=stage, detail=detail))
        trace.get_current_span().set_attribute(f"aisle.degraded.{stage}", reason_name(reason))


class Component(Protocol):
    kind: ClassVar[str]
    name: str
    #: Catalog fields the component reads; a policy using it is refused when the catalog lacks one.
    requires: ClassVar[frozenset[str]]


class SourceComponent(Component, Protocol):
    fail_open: bool
    share: float  # share of the request budget this source may use
    #: True for a source that answers from memory (the fallback cache): it runs even when the budget is spent.
    local: bool

    async def fetch(self, state: RequestState, timeout: float) -> Candidates: ...


class FilterComponent(Component, Protocol):
    def apply(self, state: RequestState, candidates: Candidates) -> np.ndarray | None:
        """A boolean mask of the candidates to keep, or None to keep them all (the cheap common case)."""


class ScorerComponent(Component, Protocol):
    async def score(self, state: RequestState, candidates: Candidates) -> None:
        """Sets score columns (``candidates.scores[name] = array``); never reorders or drops."""


class SelectorComponent(Component, Protocol):
    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        """The candidates reordered and/or cut (``candidates.take(order)``)."""


class SideEffectComponent(Component, Protocol):
    async def run(self, state: RequestState, items: Candidates, response: pb.RecommendResponse) -> None: ...


class SourceFailed(Exception):
    """A source could not answer; ``reason`` is the degradation to report."""

    def __init__(self, message: str, reason: int = common.DEGRADATION_REASON_SOURCE_DROPPED):
        super().__init__(message)
        self.reason = reason


#: Degradations that say a source (or part of retrieval) did not answer.
_RETRIEVAL_FAILURES = frozenset(
    {common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE, common.DEGRADATION_REASON_SOURCE_DROPPED}
)


def _fail_closed(source: str, error: Exception, detail: str) -> ServiceError:
    """What the caller gets when a fail-closed source does not answer: a status it can act on, not INTERNAL."""
    if isinstance(error, ServiceError):  # BudgetExhausted: too little of the deadline was left to ask
        return error
    if isinstance(error, TimeoutError):
        return BudgetExhausted(f"source {source}: {detail}", reason="RETRIEVAL_TIMEOUT")
    return DependencyUnavailable(f"source {source} failed: {detail}", reason="RETRIEVAL_UNAVAILABLE")


class PipelineMetrics:
    """Histograms and counters of the pipeline, and whether each component also gets a span (stages always do)."""

    def __init__(self, registry: CollectorRegistry, trace_components: bool = False):
        self.trace_components = trace_components
        #: Got here, after the process's tracer provider is set (services/core/bootstrap.py), not at import: a
        #: module-level tracer is the API's proxy, which wraps every span in a second context manager
        #: (docs/benchmarks.md, "A slower machine, the CPU ratio to the echo chain, and cheaper spans").
        self.tracer = trace.get_tracer(__name__)
        self._children: dict[tuple, Any] = {}
        self.component = Histogram(
            "aisle_gateway_component_seconds",
            "Time per pipeline component.",
            ["policy", "component"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.removed = Counter(
            "aisle_gateway_filtered", "Candidates removed, by filter.", ["policy", "component"], registry=registry
        )
        self.stage = Histogram(
            "aisle_gateway_stage_seconds",
            "Time per Recommend stage.",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.degraded = Counter(
            "aisle_gateway_degraded",
            "Degraded answers, by reason (an answer counts once per reason it carries, however many times).",
            ["reason"],
            registry=registry,
        )
        self.side_effect_failed = Counter(
            "aisle_gateway_side_effect_failures",
            "Side effects that did not run to the end (an exposure record the event log refused, for instance).",
            ["policy", "component", "reason"],
            registry=registry,
        )
        self.candidates = Histogram(
            "aisle_gateway_candidates",
            "Candidates per request after the merge (what the scorers see).",
            ["policy"],
            buckets=(0, 10, 50, 100, 200, 300, 400, 500, 750, 1000, 2000, 5000),
            registry=registry,
        )

    def child(self, metric, *labels: str):
        """``metric.labels(*labels)``, looked up once: ``labels()`` takes a lock and builds a key on every call,
        and the pipeline asks for the same dozen children on every request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found


@dataclass
class Pipeline:
    """One policy's components, ready to run."""

    name: str
    version: str
    sources: Sequence[SourceComponent]
    fallback: Sequence[SourceComponent]
    filters: Sequence[FilterComponent]
    scorers: Sequence[ScorerComponent]
    selectors: Sequence[SelectorComponent]
    side_effects: Sequence[SideEffectComponent]
    candidate_limit: int = 500
    settings: dict[str, Any] = field(default_factory=dict)

    async def run(self, state: RequestState, metrics: PipelineMetrics) -> Candidates:
        with self._stage("retrieval", state, metrics):
            before = len(state.degradations)
            candidates = await self._fetch(self.sources, state, metrics)
            state.retrieval_failed = any(d.reason in _RETRIEVAL_FAILURES for d in state.degradations[before:])
            # Retrieval down or too slow (a source was dropped) and nothing came back: serve the fallback.
            if not len(candidates) and state.retrieval_failed and self.fallback:
                candidates = await self._fetch(self.fallback, state, metrics)
        metrics.child(metrics.candidates, self.name).observe(len(candidates))
        state.fetched = len(candidates)
        with self._stage("filtering", state, metrics):
            for component in self.filters:
                with self._component(component, metrics):
                    keep = component.apply(state, candidates)
                    removed = 0 if keep is None else len(keep) - int(np.count_nonzero(keep))
                    if removed:
                        candidates = candidates.take(keep)
                if removed:
                    metrics.removed.labels(self.name, component.name).inc(removed)
        with self._stage("scoring", state, metrics):
            for component in self.scorers:
                with self._component(component, metrics):
                    await component.score(state, candidates)
        with self._stage("selection", state, metrics):
            for component in self.selectors:
                with self._component(component, metrics):
                    candidates = component.select(state, candidates)
        return candidates

    async def _fetch(
        self, sources: Sequence[SourceComponent], state: RequestState, metrics: PipelineMetrics
    ) -> Candidates:
        async def one(source: SourceComponent) -> Candidates:
            with self._component(source, metrics):
                if getattr(source, "local", False):  # answers from memory: no deadline slice to spend
                    return await source.fetch(state, state.budget.remaining())
                timeout = 0.0
                try:
                    timeout = state.budget.stage_timeout(source.name, source.share)
                    async with asyncio.timeout(timeout):  # no task of its own, unlike wait_for
                        return await source.fetch(state, timeout)
                except (TimeoutError, SourceFailed, BudgetExhausted) as error:
                    if isinstance(error, SourceFailed):
                        reason, detail = error.reason, str(error)
                    elif isinstance(error, BudgetExhausted):
                        reason, detail = common.DEGRADATION_REASON_SOURCE_DROPPED, str(error)
                    else:
                        reason = common.DEGRADATION_REASON_SOURCE_DROPPED
                        detail = f"no answer within {timeout * 1000:.0f} ms"
                    if not source.fail_open:
                        raise _fail_closed(source.name, error, detail) from None
                    state.degrade(reason, source.name, detail)
                    return Candidates.empty()

        if len(sources) == 1:  # the usual policy (one RetrievalSources call): no task to gather
            return merge([await one(sources[0])], self.candidate_limit)
        tasks = [asyncio.ensure_future(one(s)) for s in sources]
        try:
            results = await asyncio.gather(*tasks)
        except Exception:  # a fail-closed source failed: the answer is an error now, the others' calls are waste
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # ended before the request's error goes up
            raise
        return merge(results, self.candidate_limit)

    def _component(self, component: Component, metrics: PipelineMetrics):
        histogram = metrics.child(metrics.component, self.name, component.name)
        return _Timed(component.name, histogram, tracer=metrics.tracer if metrics.trace_components else None)

    def _stage(self, name: str, state: RequestState, metrics: PipelineMetrics):
        return _Timed(name, metrics.child(metrics.stage, name), state.stage_ms, metrics.tracer)

    async def after_response(self, state: RequestState, items: Candidates, response, metrics: PipelineMetrics) -> None:
        for effect in self.side_effects:
            try:
                with self._component(effect, metrics):
                    await effect.run(state, items, response)
            except EventLogFull as error:  # says what is wrong; a traceback per request during an outage would not
                metrics.side_effect_failed.labels(self.name, effect.name, "event_log_full").inc()
                log.warning("side effect %s: %s", effect.name, error)
            except Exception:  # a side effect never fails the request that triggered it
                metrics.side_effect_failed.labels(self.name, effect.name, "error").inc()
                log.exception("side effect %s failed", effect.name)


class _Timed:
    """Times a block into a histogram (and ``sink``), inside a span of its name when given a ``tracer``."""

    __slots__ = ("name", "histogram", "sink", "_tracer", "_span", "_started")

    def __init__(self, name: str, histogram, sink: dict[str, float] | None = None, tracer: trace.Tracer | None = None):
        self.name, self.histogram, self.sink, self._tracer = name, histogram, sink, tracer

    def __enter__(self):
        self._span = None if self._tracer is None else ActiveSpan(self._tracer.start_span(self.name))
        if self._span is not None:
            self._span.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(self, *exc_info):
        seconds = time.perf_counter() - self._started
        if self.histogram is not None:
            self.histogram.observe(seconds)
        if self.sink is not None:
            self.sink[self.name] = self.sink.get(self.name, 0.0) + seconds * 1000
        if self._span is not None:
            self._span.__exit__(*exc_info)
