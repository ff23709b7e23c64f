"""A per-segment cache of answers that nothing about the subject shapes: same surface, region, device, anchors,
variant and k get the same answer for ``ttl_s``. Cleared when a model or index version changes.

:meth:`AnonymousCache.segment` says whether the request's kind may share answers (no consent, or a guest); the
servicer also keeps out, reading and writing, every request with history or exposure counts, which shape the
answer (the exposure cap, exploration): one shopper's answer must not be served to another.

Callers choose how large an entry is (k up to 200, up to 50 anchors of 256 characters in the key), so the cache is
bounded by bytes as well as entries. Answers are kept serialized: the bytes counted are the bytes held (a parsed
message takes several times its serialized size)."""

from __future__ import annotations

import sys
import time
from collections import OrderedDict

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb

#: What one entry costs beside its answer and its key: the two dict slots, the entry tuple, its time and size.
ENTRY_OVERHEAD_BYTES = 256


def footprint(value: object) -> int:
    """Bytes a segment key holds: its tuples and strings (the anchors) with their object headers."""
    if isinstance(value, tuple):
        return sys.getsizeof(value) + sum(footprint(part) for part in value)
    return sys.getsizeof(value)


class AnonymousCache:
    def __init__(
        self,
        ttl_s: float,
        max_entries: int = 5_000,
        max_bytes: int = 32 * 1024 * 1024,
        clock=time.monotonic,
    ):
        self.ttl_s, self.max_entries, self.max_bytes, self.clock = ttl_s, max_entries, max_bytes, clock
        #: segment -> (stored at, serialized answer, bytes counted), least recently used first.
        self._entries: OrderedDict[tuple, tuple[float, bytes, int]] = OrderedDict()
        #: The same segments, least recently stored first: expired ones are at the front (one ttl for all).
        self._stored: OrderedDict[tuple, None] = OrderedDict()
        self._bytes = 0
        #: experiment variant -> kind ("model", "index") -> the (name, version)s its latest answers named
        self._versions: dict[str, dict[str, tuple[tuple[str, str], ...]]] = {}

    def segment(self, request: pb.RecommendRequest, variant: str, k: int) -> tuple | None:
        anonymous = not request.consent or request.subject.WhichOneof("id") == "session_id"
        if self.ttl_s <= 0 or not anonymous or request.exclusions.ByteSize():
            return None
        context = request.context
        return (request.surface, context.region, context.device, tuple(request.anchor_item_ids), variant, k)

    def get(self, segment: tuple) -> pb.RecommendResponse | None:
        entry = self._entries.get(segment)
        if entry is None:
            return None
        if self._expired(entry):
            self._drop(segment)
            return None
        self._entries.move_to_end(segment)
        return pb.RecommendResponse.FromString(entry[1])

    def put(self, segment: tuple, response: pb.RecommendResponse) -> None:
        if segment in self._entries:
            self._drop(segment)
        blob = response.SerializeToString()
        size = sys.getsizeof(blob) + footprint(segment) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        while self._stored and self._expired(self._entries[next(iter(self._stored))]):
            self._drop(next(iter(self._stored)))
        while self._entries and (len(self._entries) >= self.max_entries or self._bytes + size > self.max_bytes):
            self._drop(next(iter(self._entries)))
        self._entries[segment] = (self.clock(), blob, size)
        self._stored[segment] = None
        self._bytes += size

    def observe_versions(self, versions: list[common.ArtifactVersion], variant: str = "") -> None:
        """An answer that shows another model or index version than the last answers of its experiment variant
        empties the cache. Per variant: in a model A/B test each variant's answers name its own model, which is no
        change. Per kind: a degraded answer names only the parts that answered (no model when ranking was late, no
        index when the fallback answered), which says nothing about the others."""
        named: dict[str, list[tuple[str, str]]] = {}
        for version in versions:
            named.setdefault(version.kind, []).append((version.name, version.version))
        current = {kind: tuple(sorted(entries)) for kind, entries in named.items()}
        seen = self._versions.setdefault(variant, {})
        if any(kind in seen and seen[kind] != entries for kind, entries in current.items()):
            self.clear()
        seen.update(current)

    def clear(self) -> None:
        self._entries.clear()
        self._stored.clear()
        self._bytes = 0

    @property
    def bytes(self) -> int:
        """Bytes the entries hold, as counted against ``max_bytes``."""
        return self._bytes

    def _expired(self, entry: tuple[float, bytes, int]) -> bool:
        return self.clock() - entry[0] > self.ttl_s

    def _drop(self, segment: tuple) -> None:
        self._bytes -= self._entries.pop(segment)[2]
        del self._stored[segment]

    def __len__(self) -> int:
        return len(self._entries)
