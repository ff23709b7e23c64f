"""Candidate sources: each asks retrieval for one kind of candidate; the fallback serves cached popular items."""

from __future__ import annotations

import time
from collections.abc import Iterable
from itertools import islice
from typing import Annotated, ClassVar, Literal

import grpc
import numpy as np
from pydantic import Field

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.core.errors import Relayed, describe, refused_only
from services.gateway.candidates import Candidates, UnequalColumns
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import RequestState, SourceFailed

SOURCES = {
    "two_tower": common.CANDIDATE_SOURCE_TWO_TOWER,
    "item_to_item": common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
    "co_visitation": common.CANDIDATE_SOURCE_CO_VISITATION,
    "buy_again": common.CANDIDATE_SOURCE_BUY_AGAIN,
    "popularity": common.CANDIDATE_SOURCE_POPULARITY,
    "trending": common.CANDIDATE_SOURCE_TRENDING,
    "cold_start": common.CANDIDATE_SOURCE_COLD_START,
}


SourceName = Literal["two_tower", "item_to_item", "co_visitation", "buy_again", "popularity", "trending", "cold_start"]
#: Sources whose answers are the region's popular items: what the fallback cache keeps.
POPULAR_SOURCES = frozenset({common.CANDIDATE_SOURCE_POPULARITY, common.CANDIDATE_SOURCE_COLD_START})


class RetrievalParamsBase(Params):
    share: float = Field(0.35, gt=0, le=1)
    fail_open: bool = True
    #: Drop items the subject already interacted with / bought.
    exclude_history: bool = False
    exclude_purchased: bool = False


class RetrievalSourcesParams(RetrievalParamsBase):
    #: Source -> candidates wanted from it.
    sources: dict[SourceName, Annotated[int, Field(ge=1, le=2000)]] = Field(min_length=1)


class RetrievalSources(ComponentBase):
    """Several retrieval sources in one call (one round trip, one deadline slice): the default, because every
    call costs both services CPU time. Per-source failures inside retrieval come back as degradations."""

    kind: ClassVar[str] = "source"
    Params = RetrievalSourcesParams
    local = False

    @property
    def share(self) -> float:
        return self.params.share

    @property
    def fail_open(self) -> bool:
        return self.params.fail_open

    def wanted(self) -> dict[int, int]:
        return {SOURCES[name]: k for name, k in self.params.sources.items()}

    async def fetch(self, state: RequestState, timeout: float) -> Candidates:
        p, request = self.params, state.request
        wanted = self.wanted()
        if not state.history:
            wanted.pop(common.CANDIDATE_SOURCE_TWO_TOWER, None)
            # Without history the context sources are all there is: each popular one can fill any k alone. (With
            # history they keep their counts, which leave the personal sources room within the candidate limit.)
            for source in POPULAR_SOURCES & wanted.keys():
                wanted[source] = max(wanted[source], state.k)
        if not request.anchor_item_ids:
            wanted.pop(common.CANDIDATE_SOURCE_ITEM_TO_ITEM, None)
        if not wanted:
            return Candidates.empty()
        try:
            reply = await self.deps.downstream.retrieval.Retrieve(
                retrieval_pb.RetrieveRequest(  # no subject: what retrieval needs of the shopper is the history
                    surface=request.surface,
                    context=request.context,
                    history=state.history,
                    anchor_item_ids=request.anchor_item_ids,
                    sources=list(wanted),
                    source_limits=[retrieval_pb.SourceLimit(source=s, k=k) for s, k in wanted.items()],
                    exclusions=request.exclusions,
                    exclude_history=p.exclude_history,
                    exclude_purchased=p.exclude_purchased,
                    consent=request.consent,
                    columnar=self.deps.columnar,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            if refused_only(error, CALLERS_FIELDS):
                # Retrieval refused what the caller sent (more exclusions or anchors than its limits, set lower there
                # than here): the caller's error, with retrieval's field named, not an outage for the fallback to
                # cover (the answer would say retrieval is down). A refusal of what the gateway added (the stored
                # history, source limits) stays a failed source.
                raise Relayed(error) from None
            reason = (
                common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE
                if error.code() == grpc.StatusCode.UNAVAILABLE
                else common.DEGRADATION_REASON_SOURCE_DROPPED
            )
            raise SourceFailed(f"retrieval {describe(error)}", reason) from None
        if reply.index_version.version and reply.index_version not in state.versions:
            state.versions.append(reply.index_version)
        if reply.popularity_region != state.region:  # the shop's popular items, not the region's
            state.popular_in = reply.popularity_region
        state.degradations.extend(reply.degradations)
        if reply.candidates:  # a retrieval server that predates `columnar` answers with messages
            fields = [(c.item_id, c.source, c.source_rank, c.score, c.anchor_item_id) for c in reply.candidates]
            item_ids, sources, ranks, scores, anchors = (list(column) for column in zip(*fields, strict=True))
        else:
            columns = reply.columns
            item_ids, sources, ranks = list(columns.item_ids), list(columns.sources), list(columns.source_ranks)
            scores, anchors = list(columns.scores), list(columns.anchor_item_ids)
        try:
            candidates = Candidates.from_columns(item_ids, sources, ranks, scores, anchors)
        except UnequalColumns as error:
            raise SourceFailed(f"retrieval answered {error}") from None
        if not len(candidates):
            return Candidates.empty()
        # A partial answer (a shard dropped: its items are missing) is not the region's list either.
        if self._shared_by_the_region(state) and not reply.degradations:
            popular = np.zeros(len(candidates), dtype=bool)
            for source in POPULAR_SOURCES:
                popular |= candidates.source == source
            if popular.any():
                # Popularity and cold start propose much the same items: each once, in the order first proposed.
                items = list(dict.fromkeys(candidates.item_ids[popular].tolist()))
                self.deps.popular_cache.store(state.region, items, ranked_in=reply.popularity_region)
        return candidates

    def _shared_by_the_region(self, state: RequestState) -> bool:
        """Whether this call's popular items are the region's, fit for its fallback: retrieval leaves out the
        anchors, the request's exclusions, the items the shopper returned and (per the params) the shopper's
        history, so one shopper's answer would otherwise become everyone's fallback without the items that were
        only that shopper's to skip."""
        request = state.request
        exclusions = request.exclusions
        return not (
            request.anchor_item_ids
            or exclusions.item_ids
            or exclusions.brands
            or exclusions.categories
            or self.params.exclude_history
            or self.params.exclude_purchased
            or any(event.event_type == common.EVENT_TYPE_RETURN for event in state.history)
        )


#: Fields of a Retrieve request that come from the caller's Recommend request as the caller sent them.
CALLERS_FIELDS = ("context", "exclusions", "anchor_item_ids")


class RetrievalSourceParams(RetrievalParamsBase):
    source: SourceName
    k: int = Field(100, ge=1, le=2000)


class RetrievalSource(RetrievalSources):
    """One retrieval source as its own call with its own deadline slice: for a source that must not hold the
    others up (a slow experimental source, for instance)."""

    Params = RetrievalSourceParams

    def wanted(self) -> dict[int, int]:
        return {SOURCES[self.params.source]: self.params.k}


class PopularCache:
    """Popular items per region from recent successful answers: what the gateway serves when retrieval is down.

    Any region a call names gets a list (retrieval accepts any region when its index has none), so besides the
    region-less list and the ``keep`` regions (the configured fallback regions, never pushed out) it keeps at most
    ``max_regions`` lists, the least recently stored going first; expired lists go whenever one is stored. Each list
    remembers whose sales ranked it (``ranked_in``): a region's list is the shop's when retrieval's index does not rank
    it by its own sales (no sales by region, too few of its own, or a region the index does not list)."""

    def __init__(self, ttl_s: float = 3600, max_regions: int = 256, keep: Iterable[str] = (), clock=time.monotonic):
        self.ttl_s, self.max_regions, self.clock = ttl_s, max_regions, clock
        self.keep = frozenset(("", *keep))
        #: region -> (stored at, items, ranked in), least recently stored first.
        self._items: dict[str, tuple[float, list[str], str]] = {}

    def store(self, region: str, item_ids: list[str], ranked_in: str | None = None) -> None:
        """``item_ids`` as ``region``'s list, ranked by ``ranked_in``'s sales (default the region's own; "": the
        shop's)."""
        self._items.pop(region, None)
        # One ttl for all, in the order stored: the expired lists are the first ones.
        while self._items and not self._fresh(next(iter(self._items.values()))):
            del self._items[next(iter(self._items))]
        self._items[region] = (self.clock(), list(item_ids), region if ranked_in is None else ranked_in)
        excess = len(self._items) - sum(key in self._items for key in self.keep) - self.max_regions
        if excess > 0:
            for key in list(islice((key for key in self._items if key not in self.keep), excess)):
                del self._items[key]

    def get(self, region: str, other_regions: bool = False) -> list[str]:
        """The region's fresh list ("" is the list of calls without a region). Another region's list, the
        region-less one first, only with ``other_regions``: retrieval filtered it by that region's stock and
        sales, so it may hold items not sold in this one."""
        return self.lookup(region, other_regions)[1]

    def lookup(self, region: str, other_regions: bool = False) -> tuple[str, list[str]]:
        """:meth:`get`'s list with the region whose sales ranked it ("": the shop's; ``region`` itself when there is
        no list)."""
        entry = self._items.get(region)
        if entry and self._fresh(entry):
            return entry[2], entry[1]
        if not other_regions:
            return region, []
        for key in ["", *self._items]:
            entry = self._items.get(key)
            if key != region and entry and self._fresh(entry):
                return entry[2], entry[1]
        return region, []

    def _fresh(self, entry: tuple[float, list[str], str]) -> bool:
        return self.clock() - entry[0] <= self.ttl_s

    def __len__(self) -> int:
        return len(self._items)


class CachedPopularParams(Params):
    share: float = Field(0.05, gt=0, le=1)
    #: When the region has no cached list: serve another region's (items perhaps not sold in this region) rather
    #: than fail the call. Off: a shop that sells by region would rather show nothing than a forbidden item.
    other_regions: bool = False


class CachedPopularSource(ComponentBase):
    """The fallback: the region's cached popular items, used only when every source failed or came back empty
    because retrieval is down."""

    kind: ClassVar[str] = "source"
    Params = CachedPopularParams
    fail_open = True
    local = True

    @property
    def share(self) -> float:
        return self.params.share

    async def fetch(self, state: RequestState, timeout: float) -> Candidates:
        ranked_in, items = self.deps.popular_cache.lookup(state.region, self.params.other_regions)
        if ranked_in != state.region and items:
            state.popular_in = ranked_in  # another region's list, or the shop's: not to be called this region's
        return Candidates.of(
            items, common.CANDIDATE_SOURCE_FALLBACK_CACHE, scores={"retrieval": -np.arange(len(items), dtype=float)}
        )
