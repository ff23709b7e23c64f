"""A per-segment cache of answers that nothing about the subject shapes: same surface, region, device, anchors,
variant and k get the same answer for ``ttl_s``. Cleared when a model or index version changes.

:meth:`AnonymousCache.segment` says whether the request's kind may share answers (no consent, or a guest); the
servicer also keeps out, reading and writing, every request with history or exposure counts, which shape the
answer (the exposure cap, exploration): one shopper's answer must not be served to another."""

from __future__ import annotations

import time

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb


class AnonymousCache:
    def __init__(self, ttl_s: float, max_entries: int = 10_000, clock=time.monotonic):
        self.ttl_s, self.max_entries, self.clock = ttl_s, max_entries, clock
        self._entries: dict[tuple, tuple[float, pb.RecommendResponse]] = {}
        self._versions: tuple | None = None

    def segment(self, request: pb.RecommendRequest, variant: str, k: int) -> tuple | None:
        anonymous = not request.consent or request.subject.WhichOneof("id") == "session_id"
        if self.ttl_s <= 0 or not anonymous or request.exclusions.ByteSize():
            return None
        context = request.context
        return (request.surface, context.region, context.device, tuple(request.anchor_item_ids), variant, k)

    def get(self, segment: tuple) -> pb.RecommendResponse | None:
        entry = self._entries.get(segment)
        if entry is None or self.clock() - entry[0] > self.ttl_s:
            return None
        return entry[1]

    def put(self, segment: tuple, response: pb.RecommendResponse) -> None:
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[segment] = (self.clock(), response)

    def observe_versions(self, versions: list[common.ArtifactVersion]) -> None:
        """Any answer that shows other model/index versions than the cached ones empties the cache."""
        current = tuple(sorted((v.kind, v.name, v.version) for v in versions))
        if self._versions is not None and current != self._versions and current:
            self._entries.clear()
        if current:
            self._versions = current

    def __len__(self) -> int:
        return len(self._entries)
