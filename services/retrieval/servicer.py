"""RetrievalService: validates a request, builds the filter mask, runs the requested sources."""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from contextlib import nullcontext
from dataclasses import replace

import numpy as np
from opentelemetry import trace

from aisle.common.v1 import common_pb2
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.errors import NotReady
from services.core.telemetry import ActiveSpan
from services.core.validation import SURFACES, Violations
from services.retrieval.answer import add_candidates, add_columns
from services.retrieval.index import IndexArtifact
from services.retrieval.regions import UnlistedRegions
from services.retrieval.settings import RetrievalSettings
from services.retrieval.sources import Query, Source, default_sources
from services.retrieval.state import UNLISTED_REGION, IndexHolder, ServingIndex

log = logging.getLogger(__name__)

SOURCE_NAMES = {value: name for name, value in common_pb2.CandidateSource.items()}
#: What a request that names no source gets: personal sources with history, context-only ones without.
PERSONAL_DEFAULT = (common_pb2.CANDIDATE_SOURCE_TWO_TOWER, common_pb2.CANDIDATE_SOURCE_POPULARITY)
ANONYMOUS_DEFAULT = (common_pb2.CANDIDATE_SOURCE_COLD_START,)
#: The sources a retrieval replica with the default sources serves (what a shard router accepts).
SOURCE_IDS = tuple(source.source for source in default_sources())
MAX_AVAILABILITY_UPDATES = 10_000


def validate_retrieve(
    request: pb.RetrieveRequest, settings: RetrievalSettings, artifact: IndexArtifact, sources: Collection[int]
) -> int | None:
    """Raises InvalidArgument naming each bad field; returns the request region's column in ``artifact``'s
    availability: its column, ``UNLISTED_REGION`` for a region the index does not list (sold there: the items sold
    everywhere), or None for any region (no region asked, or an index without regional data). The index server
    and the shard router both call it, before any work, so both answer alike."""
    check = Violations()
    check.subject("subject", request.subject, required=False)
    check.defined("surface", request.surface, common_pb2.Surface, SURFACES)
    check.context("context", request.context)
    check.history("history", request.history, limit=settings.max_history)
    check.ids("anchor_item_ids", request.anchor_item_ids, limit=settings.max_anchors)
    for i, source in enumerate(request.sources):
        check.enum(f"sources[{i}]", source, list(sources), SOURCE_NAMES)
    check.count("source_limits", request.source_limits, limit=len(SOURCE_NAMES))
    limited_before: set[int] = set()
    for i, limit in enumerate(request.source_limits[: len(SOURCE_NAMES)]):
        if limit.source not in request.sources:
            check.add(f"source_limits[{i}].source", "must also be listed in sources")
        elif limit.source in limited_before:
            check.add(f"source_limits[{i}].source", "has a count already: give each source one")
        limited_before.add(limit.source)
        if limit.k < 1 or limit.k > settings.max_k:
            check.add(f"source_limits[{i}].k", f"must be between 1 and {settings.max_k}, got {limit.k}")
    limited = {limit.source for limit in request.source_limits}
    k_needed = not request.sources or any(source not in limited for source in request.sources)
    if (k_needed and request.k < 1) or request.k < 0 or request.k > settings.max_k:
        check.add("k", f"must be between 1 and {settings.max_k}, got {request.k}")
    check.exclusions("exclusions", request.exclusions, limit=settings.max_exclusions)
    if request.history_query_vector:  # optional: a router's encoded history
        _check_vector(check, "history_query_vector", request.history_query_vector, artifact.dimension)
    check.count("anchor_vectors", request.anchor_vectors, limit=settings.max_anchors)
    for i, anchor in enumerate(request.anchor_vectors[: settings.max_anchors]):
        _check_vector(check, f"anchor_vectors[{i}].vector", anchor.vector, artifact.dimension)
    check.raise_if_any()
    region = request.context.region
    if not region or not artifact.regions:  # an index built without regional data serves every region alike
        return None
    column = artifact.region_column(region)
    return UNLISTED_REGION if column is None else column


def _check_vector(check: Violations, field: str, vector: Sequence[float], dimension: int) -> None:
    """A precomputed vector (a router's) holds ``dimension`` finite values."""
    if len(vector) != dimension:
        check.add(field, f"must have {dimension} values, got {len(vector)}")
    elif not np.isfinite(vector).all():
        check.add(field, "must hold finite numbers")


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    def __init__(
        self,
        settings: RetrievalSettings,
        holder: IndexHolder,
        sources: Sequence[Source] | None = None,
        unlisted_regions: UnlistedRegions | None = None,
    ):
        self.settings = settings
        self.holder = holder
        self.unlisted_regions = unlisted_regions or UnlistedRegions()
        self.sources = {s.source: s for s in (sources if sources is not None else default_sources())}
        # Got after the tracer provider is set, not at import (the API's proxy costs a context manager per span).
        self._tracer = trace.get_tracer(__name__)

    def _serving(self) -> ServingIndex:
        index = self.holder.current
        if index is None:
            raise NotReady("no index loaded yet")
        return index

    async def Retrieve(self, request: pb.RetrieveRequest, context) -> pb.RetrieveResponse:  # noqa: N802
        index = self._serving()  # one version for the whole request, even if a swap happens meanwhile
        region_column = validate_retrieve(request, self.settings, index.artifact, self.sources)
        artifact = index.artifact
        if region_column == UNLISTED_REGION:
            self.unlisted_regions.saw(request.context.region, artifact.version)
        # The popularity sources rank by the region's row when it has one, else by the shop's sales.
        popularity_column = None if region_column == UNLISTED_REGION else region_column
        rows = index.rows
        history = [i for i in request.history if i.item_id in rows] if request.consent else []
        history_rows = [rows[i.item_id] for i in history]
        anchor_rows = [rows[item] for item in request.anchor_item_ids if item in rows]
        allowed, allowed_count = self.allowed_mask(request, index, region_column, history, anchor_rows)
        history_vector = self.history_vector(request, index, history_rows)
        query = Query(
            history_rows,
            history_vector,
            self.anchors(request, index),
            popularity_column,
            allowed,
            allowed_count,
            request.k,
            self.kept_history(request),
        )
        wanted = list(request.sources) or list(PERSONAL_DEFAULT if history_vector is not None else ANONYMOUS_DEFAULT)
        response = pb.RetrieveResponse(
            index_version=common_pb2.ArtifactVersion(kind="index", name="items", version=artifact.version),
            popularity_region=request.context.region
            if popularity_column is not None and request.context.region in artifact.popularity_regions
            else "",
        )
        span = trace.get_current_span()
        span.set_attribute("aisle.index_version", artifact.version)
        span.set_attribute("aisle.allowed_items", allowed_count)
        limits = {limit.source: limit.k for limit in request.source_limits}
        for source_id in dict.fromkeys(wanted):
            source = self.sources[source_id]
            k = limits.get(source_id, request.k)
            with ActiveSpan(self._tracer.start_span(source.name)) if self.settings.trace_sources else nullcontext():
                found = source.retrieve(index, query if k == query.k else replace(query, k=k))
            span.set_attribute(f"aisle.candidates.{source.name}", len(found))
            items = index.item_id_array[found.rows].tolist()
            (add_columns if request.columnar else add_candidates)(
                response, source_id, items, found.scores.tolist(), found.anchors
            )
        return response

    @staticmethod
    def kept_history(request: pb.RetrieveRequest) -> list[str]:
        """Consented history item ids, oldest first, without the items the subject returned (never bought again,
        never the reason for a co-visited item)."""
        if not request.consent:
            return []
        returned = {i.item_id for i in request.history if i.event_type == common_pb2.EVENT_TYPE_RETURN}
        return [i.item_id for i in request.history if i.item_id not in returned]

    @staticmethod
    def history_vector(request: pb.RetrieveRequest, index: ServingIndex, history_rows: list[int]):
        """The query for the personal sources: a router's precomputed vector, else the encoded history."""
        if not request.consent:
            return None
        if request.history_query_vector:
            return np.asarray(request.history_query_vector, dtype=np.float32)
        return index.encoder.encode(history_rows) if history_rows else None

    @staticmethod
    def anchors(request: pb.RetrieveRequest, index: ServingIndex) -> list[tuple[str, np.ndarray]]:
        """(id, vector) per anchor: a router's vectors, else this index's vectors of the anchors it holds."""
        if request.anchor_vectors:
            return [(a.item_id, np.asarray(a.vector, dtype=np.float32)) for a in request.anchor_vectors]
        rows, embeddings = index.rows, index.artifact.embeddings
        return [(item, embeddings[rows[item]]) for item in request.anchor_item_ids if item in rows]

    async def UpdateAvailability(  # noqa: N802
        self, request: pb.UpdateAvailabilityRequest, context
    ) -> pb.UpdateAvailabilityResponse:
        index = self._serving()
        check = Violations()
        check.count("updates", request.updates, limit=MAX_AVAILABILITY_UPDATES)
        for i, update in enumerate(request.updates[:MAX_AVAILABILITY_UPDATES]):
            check.id(f"updates[{i}].item_id", update.item_id)
            if update.sold_in_regions and not update.set_regions:
                check.add(f"updates[{i}].set_regions", "must be true when sold_in_regions is given")
            for j, region in enumerate(update.sold_in_regions):
                if region not in index.artifact.regions:
                    check.add(f"updates[{i}].sold_in_regions[{j}]", f"unknown region {region[:32]!r}")
        check.raise_if_any()
        applied, unknown = self.holder.apply_availability(request.updates)
        return pb.UpdateAvailabilityResponse(applied_count=applied, unknown_item_ids=unknown)

    @staticmethod
    def allowed_mask(
        request: pb.RetrieveRequest,
        index: ServingIndex,
        region_column: int | None,
        history: list,
        anchor_rows: list[int],
    ) -> tuple[np.ndarray, int]:
        """Items that pass the business filters, and how many. Shares the cached base mask when it can."""
        base, count = index.availability.base_mask(region_column, request.include_out_of_stock)
        rows = index.rows
        excluded = [rows[item] for item in request.exclusions.item_ids if item in rows]
        # The product on the page and the cart's items are never their own recommendation, nor is an item the
        # subject returned, from any source.
        excluded += anchor_rows
        excluded += [rows[i.item_id] for i in history if i.event_type == common_pb2.EVENT_TYPE_RETURN]
        if request.exclude_history:
            excluded += [rows[i.item_id] for i in history]
        elif request.exclude_purchased:
            excluded += [rows[i.item_id] for i in history if i.event_type == common_pb2.EVENT_TYPE_PURCHASE]
        brands = [index.brand_vocabulary[b] for b in request.exclusions.brands if b in index.brand_vocabulary]
        categories = [
            index.category_vocabulary[c] for c in request.exclusions.categories if c in index.category_vocabulary
        ]
        if not excluded and not brands and not categories:
            return base, count
        allowed = base.copy()
        if excluded:
            dropped = np.unique(np.asarray(excluded, dtype=np.int64))
            count -= int(np.count_nonzero(base[dropped]))  # a handful of rows: no pass over the whole mask
            allowed[dropped] = False
        if brands or categories:
            if brands:
                allowed &= ~np.isin(index.brand_codes, brands)
            if categories:
                allowed &= ~np.isin(index.category_codes, categories)
            count = int(np.count_nonzero(allowed))  # a tenth of the time of allowed.sum() on a boolean mask
        return allowed, count
