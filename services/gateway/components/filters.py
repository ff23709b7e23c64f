"""Hard rules: each filter returns (kept, removed) in input order and never reorders."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import ClassVar

from aisle.common.v1 import common_pb2 as common
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import Candidate, RequestState


def _split(candidates: list[Candidate], keep) -> tuple[list[Candidate], list[Candidate]]:
    kept, removed = [], []
    for candidate in candidates:
        (kept if keep(candidate) else removed).append(candidate)
    return kept, removed


def _block(candidates: list[Candidate], catalog, items: set, brands: set, categories: set):
    """Removes the listed items and items of the listed brands or categories; the catalog is read only when a
    brand or category is listed (most requests list none)."""
    if not (items or brands or categories):
        return candidates, []
    if not (brands or categories):
        return _split(candidates, lambda c: c.item_id not in items)
    return _split(
        candidates,
        lambda c: (
            c.item_id not in items
            and catalog.get(c.item_id, "brand") not in brands
            and catalog.get(c.item_id, "category") not in categories
        ),
    )


class RequestExclusionFilter(ComponentBase):
    """The request's own exclusions (items, brands, categories), applied again after every source (the fallback
    cache and future sources do not filter)."""

    kind: ClassVar[str] = "filter"

    def apply(self, state: RequestState, candidates: list[Candidate]):
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

    def apply(self, state: RequestState, candidates: list[Candidate]):
        p = self.params
        return _block(candidates, state.catalog, set(p.blocked_items), set(p.blocked_brands), set(p.blocked_categories))


class RecentlyBoughtParams(Params):
    days: float = 30.0


class RecentlyBoughtFilter(ComponentBase):
    """Items the subject bought within the window (events without a time count as recent)."""

    kind: ClassVar[str] = "filter"
    Params = RecentlyBoughtParams

    def apply(self, state: RequestState, candidates: list[Candidate]):
        cutoff = datetime.now(UTC) - timedelta(days=self.params.days)
        bought = {
            e.item_id
            for e in state.history
            if e.event_type == common.EVENT_TYPE_PURCHASE
            and (not e.HasField("event_time") or e.event_time.ToDatetime(UTC) >= cutoff)
        }
        return _split(candidates, lambda c: c.item_id not in bought)


class InStockFilter(ComponentBase):
    """Out-of-stock items per the catalog snapshot (retrieval's live availability is the first line)."""

    kind: ClassVar[str] = "filter"
    requires: ClassVar[frozenset[str]] = frozenset({"stock"})

    def apply(self, state: RequestState, candidates: list[Candidate]):
        catalog = state.catalog
        return _split(candidates, lambda c: c.item_id not in catalog.items or catalog.get(c.item_id, "stock", 1) > 0)
