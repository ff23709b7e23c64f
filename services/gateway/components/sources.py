"""Candidate sources: each asks retrieval for one kind of candidate; the fallback serves cached popular items."""

from __future__ import annotations

import time
from typing import ClassVar, Literal

import grpc

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import Candidate, RequestState, SourceFailed

SOURCES = {
    "two_tower": common.CANDIDATE_SOURCE_TWO_TOWER,
    "item_to_item": common.CANDIDATE_SOURCE_ITEM_TO_ITEM,
    "popularity": common.CANDIDATE_SOURCE_POPULARITY,
    "trending": common.CANDIDATE_SOURCE_TRENDING,
    "cold_start": common.CANDIDATE_SOURCE_COLD_START,
}


class RetrievalSourceParams(Params):
    source: Literal["two_tower", "item_to_item", "popularity", "trending", "cold_start"]
    k: int = 100
    share: float = 0.35
    fail_open: bool = True
    #: Drop items the subject already interacted with / bought.
    exclude_history: bool = False
    exclude_purchased: bool = False


class RetrievalSource(ComponentBase):
    """One retrieval source, as its own concurrent call with its own deadline slice."""

    kind: ClassVar[str] = "source"
    Params = RetrievalSourceParams

    @property
    def share(self) -> float:
        return self.params.share

    @property
    def fail_open(self) -> bool:
        return self.params.fail_open

    async def fetch(self, state: RequestState, timeout: float) -> list[Candidate]:
        p, request = self.params, state.request
        source = SOURCES[p.source]
        if source == common.CANDIDATE_SOURCE_TWO_TOWER and not state.history:
            return []
        if source == common.CANDIDATE_SOURCE_ITEM_TO_ITEM and not request.anchor_item_ids:
            return []
        try:
            reply = await self.deps.downstream.retrieval.Retrieve(
                retrieval_pb.RetrieveRequest(
                    subject=request.subject,
                    surface=request.surface,
                    context=request.context,
                    history=state.history,
                    anchor_item_ids=request.anchor_item_ids,
                    k=p.k,
                    sources=[source],
                    exclusions=request.exclusions,
                    exclude_history=p.exclude_history,
                    exclude_purchased=p.exclude_purchased,
                    consent=request.consent,
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            reason = (
                common.DEGRADATION_REASON_RETRIEVAL_UNAVAILABLE
                if error.code() == grpc.StatusCode.UNAVAILABLE
                else common.DEGRADATION_REASON_SOURCE_DROPPED
            )
            raise SourceFailed(f"retrieval {error.code().name}", reason) from None
        if reply.index_version.version and reply.index_version not in state.versions:
            state.versions.append(reply.index_version)
        candidates = [
            Candidate(
                c.item_id,
                sources=[c.source],
                anchors={c.source: c.anchor_item_id} if c.anchor_item_id else {},
                source_rank=c.source_rank,
                scores={"retrieval": c.score},
            )
            for c in reply.candidates
        ]
        if source in (common.CANDIDATE_SOURCE_POPULARITY, common.CANDIDATE_SOURCE_COLD_START) and candidates:
            self.deps.popular_cache.store(state.region, [c.item_id for c in candidates])
        return candidates


class PopularCache:
    """Popular items per region from recent successful answers: what the gateway serves when retrieval is down."""

    def __init__(self, ttl_s: float = 3600, clock=time.monotonic):
        self.ttl_s, self.clock = ttl_s, clock
        self._items: dict[str, tuple[float, list[str]]] = {}

    def store(self, region: str, item_ids: list[str]) -> None:
        self._items[region] = (self.clock(), list(item_ids))

    def get(self, region: str) -> list[str]:
        for key in (region, ""):
            entry = self._items.get(key)
            if entry and self.clock() - entry[0] <= self.ttl_s:
                return entry[1]
        # Any region's list beats no answer.
        fresh = [items for at, items in self._items.values() if self.clock() - at <= self.ttl_s]
        return fresh[0] if fresh else []


class CachedPopularParams(Params):
    share: float = 0.05


class CachedPopularSource(ComponentBase):
    """The fallback: the region's cached popular items, used only when every source failed or came back empty
    because retrieval is down."""

    kind: ClassVar[str] = "source"
    Params = CachedPopularParams
    fail_open = True

    @property
    def share(self) -> float:
        return self.params.share

    async def fetch(self, state: RequestState, timeout: float) -> list[Candidate]:
        items = self.deps.popular_cache.get(state.region)
        source = common.CANDIDATE_SOURCE_FALLBACK_CACHE
        return [
            Candidate(item, sources=[source], source_rank=i, scores={"retrieval": -i}) for i, item in enumerate(items)
        ]
