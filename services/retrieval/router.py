"""A thin retrieval front for a sharded catalog: fans each request out to every shard and merges top-k.

Each shard is an ordinary retrieval service serving a slice of the catalog (``aisle index build --shards N``
writes ``shard-<i>/`` folders and a ``router/`` folder with every item's vector and the query tower, which the
router memory-maps to encode queries; its ``index_path`` points there, and it swaps in newer versions published
there as index servers do). The router validates a request with the index server's own rules before any work.
Scores within one source are comparable across shards (same query vector, same popularity counts), so the merge
is a top-k by score per source. A shard that fails or runs late is dropped and the answer flagged; only when no
shard answers does the call fail. During a rollout (shards and router on different versions) the answer is flagged
too, and a candidate the router's query data does not hold keeps what its shard said about it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path

import grpc
import numpy as np

from aisle.common.v1 import common_pb2
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.channels import RenewingChannel, create_renewing_channel
from services.core.errors import DependencyUnavailable, NotReady, Relayed, refused_only
from services.core.health import wait_until_serving
from services.core.logs import Throttled
from services.core.metrics import ArtifactMetrics
from services.retrieval.answer import move_to_columns
from services.retrieval.index import InvalidIndex, load_index
from services.retrieval.query_encoder import MeanEmbeddingEncoder, OnnxQueryTower
from services.retrieval.regions import UnlistedRegions
from services.retrieval.servicer import SOURCE_IDS, validate_retrieve
from services.retrieval.settings import RetrievalSettings
from services.retrieval.state import UNLISTED_REGION, IndexWatcher, VersionHolder

log = logging.getLogger(__name__)

#: What the router adds to a Retrieve request before it fans out; every other field is the caller's, as it came.
ROUTER_FIELDS = ("history_query_vector", "anchor_vectors")
CALLERS_FIELDS = tuple(f.name for f in pb.RetrieveRequest.DESCRIPTOR.fields if f.name not in ROUTER_FIELDS)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RetrievalService"].full_name


def merge_shard_responses(
    responses: list[pb.RetrieveResponse], k: int, limits: Mapping[int, int] | None = None
) -> pb.RetrieveResponse:
    """Top-k per source by score (ties by item id) over every shard's candidates; ``limits`` holds the request's
    per-source counts where they differ from ``k``."""
    limits = limits or {}
    by_source: dict[int, list[pb.Candidate]] = defaultdict(list)
    order: list[int] = []
    for response in responses:
        for candidate in response.candidates:
            if candidate.source not in by_source:
                order.append(candidate.source)
            by_source[candidate.source].append(candidate)
    merged = pb.RetrieveResponse()
    for source in order:
        best = sorted(by_source[source], key=lambda c: (-c.score, c.item_id))[: limits.get(source, k)]
        for rank, candidate in enumerate(best):
            copy = merged.candidates.add()
            copy.CopyFrom(candidate)
            copy.source_rank = rank
    versions = sorted({r.index_version.version for r in responses})
    merged.index_version.CopyFrom(common_pb2.ArtifactVersion(kind="index", name="items", version="+".join(versions)))
    for response in responses:
        merged.degradations.extend(response.degradations)
    # Each shard ranked its own items by one region's sales or by the shop's: the region only when all of them did.
    ranked_by = {response.popularity_region for response in responses}
    merged.popularity_region = ranked_by.pop() if len(ranked_by) == 1 else ""
    return merged


class QueryResolver:
    """The router's global view for encoding: every item's vector (memory-mapped) and the query tower.

    Shards hold only their slice, so the router encodes the whole history once and sends the vectors down;
    it also names, for each two-tower candidate, the history item it is closest to.
    """

    def __init__(self, path: Path, threads: int = 1):
        self.artifact = load_index(path, mmap=True)
        self.rows = {item: row for row, item in enumerate(self.artifact.item_ids)}
        if self.artifact.query_tower is not None:
            self.encoder = OnnxQueryTower(
                self.artifact.query_tower, self.artifact.dimension, len(self.artifact), threads
            )
        else:
            self.encoder = MeanEmbeddingEncoder(self.artifact.embeddings)

    def resolve(self, request: pb.RetrieveRequest) -> pb.RetrieveRequest:
        """The request with ``history_query_vector`` and ``anchor_vectors`` filled in."""
        resolved = pb.RetrieveRequest()
        resolved.CopyFrom(request)
        resolved.columnar = False  # the merge reads messages; the router writes columns itself when asked
        history_rows = [self.rows[i.item_id] for i in request.history if i.item_id in self.rows]
        if request.consent and history_rows:
            resolved.history_query_vector[:] = self.encoder.encode(history_rows).tolist()
        for item in request.anchor_item_ids:
            if item in self.rows:
                resolved.anchor_vectors.add(item_id=item, vector=self.artifact.embeddings[self.rows[item]].tolist())
        return resolved

    def name_history_anchors(self, request: pb.RetrieveRequest, response: pb.RetrieveResponse) -> int:
        """Names the history item closest to each two-tower candidate; returns how many candidates this data does
        not hold (a shard on a newer version than the router's): those keep the anchor their shard named."""
        two_tower = [c for c in response.candidates if c.source == common_pb2.CANDIDATE_SOURCE_TWO_TOWER]
        known = [c for c in two_tower if c.item_id in self.rows]
        unknown = len(two_tower) - len(known)
        history = list(dict.fromkeys(self.rows[i.item_id] for i in request.history if i.item_id in self.rows))
        if not history or not known or not request.consent:
            return unknown
        embeddings = self.artifact.embeddings
        vectors = np.stack([embeddings[self.rows[c.item_id]] for c in known])
        best = (vectors @ np.asarray(embeddings[history]).T).argmax(axis=1)
        for candidate, choice in zip(known, best, strict=True):
            candidate.anchor_item_id = self.artifact.item_ids[history[int(choice)]]
        return unknown


class QueryDataHolder(VersionHolder[QueryResolver]):
    """The router's query data being served: a new version under the router root is swapped in as the index
    servers swap theirs, and one that fails to load, or was built for another shard count, is refused."""

    what = "router query data"

    def __init__(self, shards: int, threads: int = 1, metrics: ArtifactMetrics | None = None):
        super().__init__(metrics)
        self.shards, self.threads = shards, threads

    def open(self, path: Path) -> QueryResolver:
        resolver = QueryResolver(path, self.threads)
        built_for = resolver.artifact.build.get("shards")
        if built_for is not None and built_for != self.shards:
            raise InvalidIndex(
                f"{path} was built for {built_for} shards but {self.shards} shard targets are set: a shard's slice "
                f"of the catalog would be missing or served twice; set shard_targets to the {built_for} shards, "
                f"or rebuild with `aisle index build --shards {self.shards}`"
            )
        return resolver


class ShardRouter(pb_grpc.RetrievalServiceServicer):
    def __init__(
        self,
        settings: RetrievalSettings,
        queries: QueryDataHolder | None = None,
        metrics: ArtifactMetrics | None = None,
        unlisted_regions: UnlistedRegions | None = None,
    ):
        self.settings, self.targets = settings, settings.shards
        self.unlisted_regions = unlisted_regions or UnlistedRegions()
        self.timeout_s = settings.shard_timeout_ms / 1000
        self.update_timeout_s = settings.shard_update_timeout_ms / 1000
        self._outages = Throttled(log)  # a shard down would otherwise be a warning per request
        if queries is None:
            queries = QueryDataHolder(len(self.targets), settings.query_threads, metrics)
        self.queries = queries
        self.watcher = IndexWatcher(self.queries, settings.index_path, settings.index_poll_s)
        self.stubs: list[pb_grpc.RetrievalServiceStub] = []
        self._channels: list[RenewingChannel] = []

    async def connect(self, log_every_s: float = 5.0) -> None:
        """Loads the global query data, opens a channel per shard and waits until every shard is SERVING; then
        watches the router root for newer query data."""
        await self.queries.load_latest(self.settings.index_path)
        for target in self.targets:
            channel = create_renewing_channel(target, [SERVICE_NAME], max_message_bytes=self.settings.max_message_bytes)
            self._channels.append(channel)
            self.stubs.append(pb_grpc.RetrievalServiceStub(channel))
        for target, channel in zip(self.targets, self._channels, strict=True):
            await wait_until_serving(channel, SERVICE_NAME, log_every_s, what=f"index shard {target}")
        self.watcher.start()

    async def close(self) -> None:
        await self.watcher.stop()
        for channel in self._channels:
            await channel.close()

    async def _fan_out(self, method: str, request, context, timeout_s: float):
        remaining = context.time_remaining()
        timeout = timeout_s if remaining is None else min(timeout_s, remaining)
        calls = [getattr(stub, method)(request, timeout=timeout) for stub in self.stubs]
        return await asyncio.gather(*calls, return_exceptions=True)

    async def Retrieve(self, request: pb.RetrieveRequest, context) -> pb.RetrieveResponse:  # noqa: N802
        resolver = self.queries.current  # one version of the query data for the whole request
        if resolver is None or not self.stubs:
            raise NotReady("router not connected to its shards yet")
        # The shards' own rules, before any work: resolving adds a vector per anchor and encodes the history.
        if validate_retrieve(request, self.settings, resolver.artifact, SOURCE_IDS) == UNLISTED_REGION:
            self.unlisted_regions.saw(request.context.region, resolver.artifact.version)
        results = await self._fan_out("Retrieve", resolver.resolve(request), context, self.timeout_s)
        answered, dropped, refusals = [], [], []
        for target, result in zip(self.targets, results, strict=True):
            if isinstance(result, grpc.aio.AioRpcError):
                # The caller's request passed the same checks above: a shard that refuses it disagrees with the
                # router (another index version mid-rollout, other limits, the router's own vectors), which is a
                # dropped shard, not the caller's error, as long as another shard answered.
                if refused_only(result, CALLERS_FIELDS):
                    refusals.append(result)
                elif result.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self._outages.warning(
                        f"{target} refused", "shard %s refused the router's query data: %s", target, result.details()
                    )
                dropped.append((target, result.code().name))
            elif isinstance(result, BaseException):
                raise result
            else:
                answered.append(result)
        if not answered and refusals:
            raise Relayed(refusals[0])  # no shard took the caller's fields: its error, with the fields named
        if not answered:
            raise DependencyUnavailable(
                f"no index shard answered: {', '.join(f'{t} {c}' for t, c in dropped)}",
                reason="SHARDS_UNAVAILABLE",
                retryable=False,  # every router replica asks the same shards
            )
        limits = {limit.source: limit.k for limit in request.source_limits}
        merged = merge_shard_responses(answered, request.k, limits)
        unknown = resolver.name_history_anchors(request, merged)
        for target, code in dropped:
            self._outages.warning(target, "shard %s dropped: %s", target, code)
            merged.degradations.add(
                reason=common_pb2.DEGRADATION_REASON_SOURCE_DROPPED, stage=f"shard {target}", detail=code
            )
        versions = sorted({response.index_version.version for response in answered})
        if len(versions) > 1:  # one build gives every shard one version name: this is a rollout in between
            merged.degradations.add(
                reason=common_pb2.DEGRADATION_REASON_MIXED_INDEX_VERSIONS,
                stage="retrieval router",
                detail="shards answered from index versions " + ", ".join(versions),
            )
        ours = resolver.artifact.version
        if unknown or ours not in versions:  # the router's query data and the shards' index are rolled apart
            detail = f"router query data is version {ours}, shards answered from " + ", ".join(versions)
            if unknown:
                detail += f"; {unknown} two-tower candidates unknown to the router keep their shard's anchor"
            merged.degradations.add(
                reason=common_pb2.DEGRADATION_REASON_MIXED_INDEX_VERSIONS, stage="retrieval router", detail=detail
            )
        if request.columnar:
            move_to_columns(merged)
        return merged

    async def UpdateAvailability(  # noqa: N802
        self, request: pb.UpdateAvailabilityRequest, context
    ) -> pb.UpdateAvailabilityResponse:
        if not self.stubs:  # the server listens before it connects: "0 applied", OK, would lose the updates
            raise NotReady("router not connected to its shards yet")
        results = await self._fan_out("UpdateAvailability", request, context, self.update_timeout_s)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:
            error = failed[0]
            if isinstance(error, grpc.aio.AioRpcError) and error.code() == grpc.StatusCode.INVALID_ARGUMENT:
                raise Relayed(error)  # the caller's fields, as the shard named them
            raise error  # a shard's failure: its code and Aisle reason reach the caller, its message (hosts) not
        unknown = set.intersection(*(set(r.unknown_item_ids) for r in results)) if results else set()
        return pb.UpdateAvailabilityResponse(
            applied_count=sum(r.applied_count for r in results),
            unknown_item_ids=[u.item_id for u in request.updates if u.item_id in unknown],
        )
