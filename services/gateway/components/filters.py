"""Hard rules: each filter answers a keep mask over the candidates (None: keep all) and never reorders."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import ClassVar

import numpy as np
from pydantic import Field

from aisle.common.v1 import common_pb2 as common
from services.core.validation import timestamp_problem
from services.gateway.candidates import Candidates
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import RequestState


def _mask(candidates: Candidates, keep: Callable[[str], bool]) -> np.ndarray:
    return np.fromiter(map(keep, candidates.ids()), dtype=bool, count=len(candidates))


def _block(candidates: Candidates, catalog, items: set, brands: set, categories: set) -> np.ndarray | None:
    """Removes the listed items and items of the listed brands or categories; the catalog is read only when a
    brand or category is listed (most requests list none)."""
    if not (items or brands or categories):
        return None
    if not (brands or categories):
        return _mask(candidates, lambda item: item not in items)
    return _mask(
        candidates,
        lambda item: (
            item not in items
            and catalog.get(item, "brand") not in brands
            and catalog.get(item, "category") not in categories
        ),
    )


class RequestExclusionFilter(ComponentBase):
    """The request's own exclusions (items, brands, categories), applied again after every source (the fallback
    cache and future sources do not filter)."""

    kind: ClassVar[str] = "filter"

    def apply(self, state: RequestState, candidates: Candidates) -> np.ndarray | None:
        exclusions = state.request.exclusions
        return _block(
            candidates,
            state.catalog,
            set(exclusions.item_ids) | set(state.request.anchor_item_ids),
            set(exclusions.brands),
            set(exclusions.categories),
        )


class ComplianceParams(Params):
    blocked_items: list[str] = []
    blocked_brands: list[str] = []
    blocked_categories: list[str] = []


class ComplianceFilter(ComponentBase):
    """Items the shop must not recommend on this surface (legal, age-restricted, recalled), from the policy."""

    kind: ClassVar[str] = "filter"
    Params = ComplianceParams

    def apply(self, state: RequestState, candidates: Candidates) -> np.ndarray | None:
        p = self.params
        return _block(candidates, state.catalog, set(p.blocked_items), set(p.blocked_brands), set(p.blocked_categories))


class RecentlyBoughtParams(Params):
    #: Up to 100 years: "never show a bought item again" (a window past what a datetime can reach back would fail
    #: every request).
    days: float = Field(30.0, gt=0, le=36_500)


def _when(timestamp) -> datetime | None:
    """A Timestamp as a datetime; None for one out of Timestamp's range, which ``ToDatetime`` refuses (requests
    are validated, but a session store may hold events written before TrackEvents checked their time)."""
    return None if timestamp_problem(timestamp) else timestamp.ToDatetime(UTC)


class RecentlyBoughtFilter(ComponentBase):
    """Items the subject bought within the window before the request's time (``context.request_time``, else the
    server's clock); events without a time count as recent, events whose time is not a valid Timestamp do not."""

    kind: ClassVar[str] = "filter"
    Params = RecentlyBoughtParams

    def apply(self, state: RequestState, candidates: Candidates) -> np.ndarray | None:
        context = state.request.context
        now = (_when(context.request_time) if context.HasField("request_time") else None) or datetime.now(UTC)
        # A window reaching back before year 1 (a request time in its first days) starts at year 1.
        cutoff = now - min(timedelta(days=self.params.days), now - datetime.min.replace(tzinfo=UTC))
        bought = set()
        for e in state.history:
            if e.event_type != common.EVENT_TYPE_PURCHASE:
                continue
            if not e.HasField("event_time"):
                bought.add(e.item_id)
            elif (when := _when(e.event_time)) is not None and when >= cutoff:
                bought.add(e.item_id)
        return _mask(candidates, lambda item: item not in bought) if bought else None


class InStockFilter(ComponentBase):
    """Out-of-stock items per the catalog snapshot (retrieval's live availability is the first line)."""

    kind: ClassVar[str] = "filter"
    requires: ClassVar[frozenset[str]] = frozenset({"stock"})

    def apply(self, state: RequestState, candidates: Candidates) -> np.ndarray | None:
        catalog = state.catalog
        return _mask(candidates, lambda item: item not in catalog.items or catalog.get(item, "stock", 1) > 0)
