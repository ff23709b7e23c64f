"""Selectors alone sort and cut. They run in the policy's order; the last one is usually TruncateSelector."""

from __future__ import annotations

import hashlib
import random
from typing import ClassVar

from pydantic import Field

from aisle.common.v1 import common_pb2 as common
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import Candidate, RequestState


class SortSelector(ComponentBase):
    """Best final score first (relevance when no scorer set a final score); ties keep the current order."""

    kind: ClassVar[str] = "selector"

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        return sorted(candidates, key=lambda c: -c.final)


class ExposureCapParams(Params):
    #: Items already shown this many times to the subject (within the session store's window) go to the back.
    max_exposures: int = 5


class ExposureCapSelector(ComponentBase):
    """Demotes items the subject has seen too often, keeping the order among the rest."""

    kind: ClassVar[str] = "selector"
    Params = ExposureCapParams

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        seen = state.exposures
        if not seen:
            return candidates
        fresh = [c for c in candidates if seen.get(c.item_id, 0) < self.params.max_exposures]
        tired = [c for c in candidates if seen.get(c.item_id, 0) >= self.params.max_exposures]
        return fresh + tired


class DiversityParams(Params):
    #: 1 keeps relevance order, 0 maximises category spread.
    relevance_weight: float = 0.7
    #: Only the top of the list is re-ordered (k x this).
    window: int = 3


class MMRDiversitySelector(ComponentBase):
    """Maximal marginal relevance over categories: each next item maximises
    w x relevance - (1 - w) x [its category is already shown], relevance scaled to [0, 1]."""

    kind: ClassVar[str] = "selector"
    requires: ClassVar[frozenset[str]] = frozenset({"category"})
    Params = DiversityParams

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        window = candidates[: state.k * self.params.window]
        rest = candidates[len(window) :]
        if not window:
            return candidates
        scores = [c.final for c in window]
        low, high = min(scores), max(scores)
        w, catalog = self.params.relevance_weight, state.catalog
        # (weighted relevance, category, candidate) once per item; the loop below only compares.
        remaining = [
            (w * (0.0 if high == low else (c.final - low) / (high - low)), catalog.get(c.item_id, "category"), c)
            for c in window
        ]
        penalty = 1 - w
        chosen: list[Candidate] = []
        shown: set[str] = set()
        while remaining:
            best = max(range(len(remaining)), key=lambda i: remaining[i][0] - penalty * (remaining[i][1] in shown))
            _, category, candidate = remaining.pop(best)
            chosen.append(candidate)
            shown.add(category)
        return chosen + rest


class BrandQuotaParams(Params):
    max_per_brand: int = 3


class BrandQuotaSelector(ComponentBase):
    """At most ``max_per_brand`` items of one brand (supplier) in the top k; the rest move after them."""

    kind: ClassVar[str] = "selector"
    requires: ClassVar[frozenset[str]] = frozenset({"brand"})
    Params = BrandQuotaParams

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        counts: dict[str, int] = {}
        top, later = [], []
        for position, candidate in enumerate(candidates):
            if len(top) == state.k:  # the top is full: the rest keep their order
                return top + later + candidates[position:]
            brand = state.catalog.get(candidate.item_id, "brand")
            if counts.get(brand, 0) < self.params.max_per_brand:
                counts[brand] = counts.get(brand, 0) + 1
                top.append(candidate)
            else:
                later.append(candidate)
        return top + later


class FeedbackStats:
    """Per-item exposures and successes (clicks, purchases) from tracked events: the bandit's evidence."""

    def __init__(self) -> None:
        self.shown: dict[str, int] = {}
        self.successes: dict[str, int] = {}

    def exposed(self, item_ids: list[str]) -> None:
        for item in item_ids:
            self.shown[item] = self.shown.get(item, 0) + 1

    def succeeded(self, item_id: str) -> None:
        """Counts a success for an item this gateway has shown; others are no evidence for the bandit, and counting
        them would let any caller grow memory with fresh ids (what is shown comes from the catalog: bounded)."""
        if item_id in self.shown:
            self.successes[item_id] = self.successes.get(item_id, 0) + 1

    def sample(self, item_id: str, rng: random.Random) -> float:
        wins = self.successes.get(item_id, 0)
        losses = max(0, self.shown.get(item_id, 0) - wins)
        return rng.betavariate(wins + 1, losses + 1)


class ExplorationParams(Params):
    #: Slots in the top k given to exploration (bounded).
    slots: int = 1
    #: Items shown fewer times than this (or marked "new" in the catalog) may be explored.
    under_exposed_below: int = 20
    #: Position of the first exploration slot (0-based); later slots follow every 3 positions.
    first_position: int = 2
    #: Only this many candidates after the top k compete for the slots (the best-ranked of the rest).
    pool: int = Field(default=50, ge=1)


class ExplorationSelector(ComponentBase):
    """Thompson sampling over new or under-exposed candidates: the best samples take a bounded number of slots
    in the top k, marked as exploration in the answer."""

    kind: ClassVar[str] = "selector"
    Params = ExplorationParams

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        p, feedback, k = self.params, self.deps.feedback, state.k
        slots = min(p.slots, max(0, k - 1))
        if slots == 0 or len(candidates) <= k:
            return candidates
        head, tail = candidates[: k - slots], candidates[k - slots :]
        eligible = [
            c
            for c in tail[: p.pool]
            if state.catalog.get(c.item_id, "new", False) or feedback.shown.get(c.item_id, 0) < p.under_exposed_below
        ]
        seed = hashlib.sha256(f"{state.subject_key}:{state.request.surface}".encode()).digest()
        rng = random.Random(seed)
        picked = sorted(eligible, key=lambda c: -feedback.sample(c.item_id, rng))[:slots]
        for candidate in picked:
            candidate.exploration = True
            text = "New arrival" if state.catalog.get(candidate.item_id, "new", False) else "Something new to try"
            candidate.reasons.append(common.Reason(code=common.REASON_CODE_EXPLORATION, text=text))
        rest = [c for c in tail if not c.exploration]
        result = list(head)
        for i, candidate in enumerate(picked):
            result.insert(min(len(result), p.first_position + 3 * i), candidate)
        return result + rest


class TruncateSelector(ComponentBase):
    """Cuts to the k the request asked for."""

    kind: ClassVar[str] = "selector"

    def select(self, state: RequestState, candidates: list[Candidate]) -> list[Candidate]:
        return candidates[: state.k]
