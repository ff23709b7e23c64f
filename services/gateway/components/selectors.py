"""Selectors alone sort and cut, by returning ``candidates.take(order)``. They run in the policy's order; the last
one is usually TruncateSelector.

A selector that enforces a business rule (ExposureCapSelector, BrandQuotaSelector) cuts the rows that break it
instead of moving them back: a row only moved back was brought into the answer again by a later selector that
reorders or promotes (MMR's window once fewer than k x window rows were left, an exploration slot). It keeps such
rows only as far as they are needed to fill the top k, and then keeps no more than k rows, so the later selectors
can only reorder the answer, never change which rows break the rule. Candidates carry no record of a demotion, and
a per-row mark could not state a quota anyway (a brand's third item breaks it only with the other two in the top).
"""

from __future__ import annotations

import hashlib
from itertools import repeat
from typing import ClassVar

import numpy as np
from pydantic import Field

from aisle.common.v1 import common_pb2 as common
from services.gateway.candidates import Candidates, min_max_scaled
from services.gateway.components.base import ComponentBase, Dependencies, Params
from services.gateway.pipeline import RequestState


class SortSelector(ComponentBase):
    """Best final score first (relevance when no scorer set a final score); ties keep the current order."""

    kind: ClassVar[str] = "selector"

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        return candidates.take(np.argsort(-candidates.final, kind="stable"))


def within_rule(candidates: Candidates, keeps: np.ndarray, k: int) -> Candidates:
    """The rows that keep a rule (``keeps``), in their order, then the first of the others only as many as the top k
    needs; the other rows are cut (see the module's docstring)."""
    if keeps.all():
        return candidates
    kept = np.flatnonzero(keeps)
    fill = np.flatnonzero(~keeps)[: max(0, k - kept.size)]
    return candidates.take(np.concatenate([kept, fill]))


class ExposureCapParams(Params):
    #: Items already shown this many times to the subject (within the session store's window) are cut, unless
    #: fewer than k others are left: then the first of them fill the top k, after the others.
    max_exposures: int = Field(5, ge=1)


class ExposureCapSelector(ComponentBase):
    """Keeps out of the answer the items the subject has seen too often, as far as the other candidates fill it;
    the order is otherwise kept."""

    kind: ClassVar[str] = "selector"
    Params = ExposureCapParams

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        seen, cap = state.exposures, self.params.max_exposures
        if not seen:
            return candidates
        shown = np.fromiter(map(seen.get, candidates.ids(), repeat(0)), dtype=np.int64, count=len(candidates))
        return within_rule(candidates, shown < cap, state.k)


class DiversityParams(Params):
    #: 1 keeps relevance order, 0 maximises category spread.
    relevance_weight: float = Field(0.7, ge=0, le=1)
    #: Only the top of the list is re-ordered (k x this).
    window: int = Field(3, ge=1)


class MMRDiversitySelector(ComponentBase):
    """Maximal marginal relevance over categories: each next item maximises
    w x relevance - (1 - w) x [its category is already shown], relevance scaled to [0, 1]."""

    kind: ClassVar[str] = "selector"
    requires: ClassVar[frozenset[str]] = frozenset({"category"})
    Params = DiversityParams

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        size = min(len(candidates), state.k * self.params.window)
        if not size:
            return candidates
        w, catalog = self.params.relevance_weight, state.catalog
        weighted = (w * min_max_scaled(candidates.final[:size])).tolist()
        categories = [catalog.get(item, "category") for item in candidates.item_ids[:size].tolist()]
        penalty = 1 - w
        # The penalty is the same for every item of a category already shown, so the best next item is either the
        # best of the unshown categories or the best of the shown ones, less the penalty: the first of each kind in
        # relevance order (on a tie the earlier row, as taking the maximum one by one would).
        order = sorted(range(size), key=lambda row: (-weighted[row], row))
        taken = [False] * size
        chosen: list[int] = []
        shown: set[str] = set()
        kinds = len(set(categories))
        while len(chosen) < size:
            if len(shown) == kinds:  # every category shown: relevance order decides the rest
                chosen.extend(row for row in order if not taken[row])
                break
            fresh = repeated = -1
            for row in order:
                if taken[row]:
                    continue
                if categories[row] in shown:
                    if repeated < 0:
                        repeated = row
                elif fresh < 0:
                    fresh = row
                if fresh >= 0 and repeated >= 0:
                    break
            if repeated < 0:
                best = fresh
            elif fresh < 0:
                best = repeated
            else:
                gain, loss = weighted[fresh], weighted[repeated] - penalty
                best = fresh if gain > loss or (gain == loss and fresh < repeated) else repeated
            taken[best] = True
            chosen.append(best)
            shown.add(categories[best])
        return candidates.take(np.concatenate([np.array(chosen, dtype=np.int64), np.arange(size, len(candidates))]))


class BrandQuotaParams(Params):
    max_per_brand: int = Field(3, ge=1)
    #: Rows kept after the top k, for the selectors after this one (an exploration slot's pool: 50 by default);
    #: the candidates past them are cut unread, since looking up every candidate's brand costs about 0.6 ms for
    #: 500 of a 1M-item catalog.
    depth: int = Field(default=60, ge=0)


class BrandQuotaSelector(ComponentBase):
    """At most ``max_per_brand`` items of one brand (supplier) in the answer: a brand's further items are cut,
    wherever they are, unless fewer than k items keep the quota; then the first of them fill the top k, after
    the others. The order is otherwise kept; ``depth`` rows are kept after the top k, the rest cut. Items the
    catalog snapshot does not hold have no brand and no quota."""

    kind: ClassVar[str] = "selector"
    requires: ClassVar[frozenset[str]] = frozenset({"brand"})
    Params = BrandQuotaParams

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        # Beyond the top k too, as deep as ``depth``: a later selector (an exploration slot) may promote those rows.
        # What lies deeper is cut, so nothing that breaks the quota is left for anyone to promote.
        brand_of, quota, wanted = state.catalog.get, self.params.max_per_brand, state.k + self.params.depth
        counts: dict[str, int] = {}
        kept: list[int] = []
        broke: list[int] = []
        for row, item in enumerate(candidates.ids()):
            brand = brand_of(item, "brand")
            seen = counts.get(brand, 0)
            if brand is None or seen < quota:  # None: not in the catalog snapshot (yet), no brand to count against
                kept.append(row)
                if len(kept) == wanted:
                    break
            else:
                broke.append(row)
            if brand is not None:
                counts[brand] = seen + 1
        if len(kept) == len(candidates):
            return candidates
        fill = broke[: max(0, state.k - len(kept))]  # only as many as the top k needs to be full
        return candidates.take(np.array(kept + fill, dtype=np.int64))


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

    def sample(self, item_ids: list[str], rng: np.random.Generator) -> np.ndarray:
        """One draw per item from its Beta(successes + 1, failures + 1) posterior."""
        wins = np.array([self.successes.get(item, 0) for item in item_ids], dtype=np.float64)
        shown = np.array([self.shown.get(item, 0) for item in item_ids], dtype=np.float64)
        return rng.beta(wins + 1, np.maximum(0, shown - wins) + 1)


class ExplorationParams(Params):
    #: Slots in the top k given to exploration (bounded).
    slots: int = Field(1, ge=0)
    #: Items shown fewer times than this (or marked "new" in the catalog) may be explored.
    under_exposed_below: int = Field(20, ge=0)
    #: Position of the first exploration slot (0-based); later slots follow every 3 positions.
    first_position: int = Field(default=2, ge=0)
    #: Only this many candidates after the top k compete for the slots (the best-ranked of the rest).
    pool: int = Field(default=50, ge=1)


class ExplorationSelector(ComponentBase):
    """Thompson sampling over new or under-exposed candidates: the best samples take a bounded number of slots
    in the top k, marked as exploration in the answer."""

    kind: ClassVar[str] = "selector"
    Params = ExplorationParams

    def __init__(self, name: str, params: ExplorationParams, deps: Dependencies):
        super().__init__(name, params, deps)
        self._bits = np.random.PCG64()
        self._rng = np.random.Generator(self._bits)

    def _rng_for(self, state: RequestState) -> np.random.Generator:
        """The same draws for the same subject and surface (until the feedback changes): the generator's state is
        set from a hash of the two, much cheaper than seeding a new generator. Shared by the requests of this
        gateway, which is safe because ``select`` never awaits."""
        seed = hashlib.sha256(f"{state.subject_key}:{state.request.surface}".encode()).digest()
        self._bits.state = {
            "bit_generator": "PCG64",
            "state": {"state": int.from_bytes(seed[:16], "little"), "inc": int.from_bytes(seed[16:], "little") | 1},
            "has_uint32": 0,
            "uinteger": 0,
        }
        return self._rng

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        p, feedback, k = self.params, self.deps.feedback, state.k
        slots = min(p.slots, max(0, k - 1))
        if slots == 0 or len(candidates) <= k:
            return candidates
        head = k - slots
        new, shown, below = state.catalog.flagged("new"), feedback.shown.get, p.under_exposed_below
        pool = candidates.item_ids[head : head + p.pool].tolist()
        eligible = [(row, item) for row, item in enumerate(pool, start=head) if item in new or shown(item, 0) < below]
        if not eligible:
            return candidates
        draws = feedback.sample([item for _, item in eligible], self._rng_for(state))
        picked = [eligible[i] for i in np.argsort(-draws, kind="stable")[:slots].tolist()]
        top = list(range(head))
        places = []
        for i, (row, _) in enumerate(picked):
            place = min(len(top), p.first_position + 3 * i)
            top.insert(place, row)
            places = [at + (at >= place) for at in places] + [place]
        rest = np.ones(len(candidates), dtype=bool)
        rest[top] = False
        order = np.concatenate([np.array(top, dtype=np.int64), np.flatnonzero(rest)])
        result = candidates.take(order)  # new columns: the input stays as it was
        result.exploration[places] = True
        reasons = dict(result.reasons)
        for _, item in picked:
            text = "New arrival" if item in new else "Something new to try"
            reasons[item] = [*reasons.get(item, ()), common.Reason(code=common.REASON_CODE_EXPLORATION, text=text)]
        result.reasons = reasons
        return result


class TruncateSelector(ComponentBase):
    """Cuts to the k the request asked for."""

    kind: ClassVar[str] = "selector"

    def select(self, state: RequestState, candidates: Candidates) -> Candidates:
        return candidates if len(candidates) <= state.k else candidates.take(slice(0, state.k))
