"""RetrievalService: validates a request, builds the filter mask, runs the requested sources."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from opentelemetry import trace

from aisle.common.v1 import common_pb2
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.errors import NotReady
from services.core.validation import Violations
from services.retrieval.index import ExactIndex, IndexArtifact, latest_version, load_index
from services.retrieval.settings import RetrievalSettings
from services.retrieval.sources import (
    HistoryEmbeddingSource,
    ItemToItemSource,
    PopularitySource,
    Query,
    Source,
)

log = logging.getLogger(__name__)
tracer = trace.get_tracer(__name__)

SOURCE_NAMES = {value: name for name, value in common_pb2.CandidateSource.items()}


class IndexHolder:
    """The index version being served. Swapping is one reference assignment, so readers never see half of one."""

    def __init__(self) -> None:
        self.artifact: IndexArtifact | None = None
        self.search: ExactIndex | None = None
        self.rows: dict[str, int] = {}

    def serve(self, artifact: IndexArtifact) -> None:
        rows = {item: row for row, item in enumerate(artifact.item_ids)}
        self.artifact, self.search, self.rows = artifact, ExactIndex(artifact.embeddings), rows

    async def load_latest(self, root: Path) -> None:
        path = latest_version(root)
        artifact = await asyncio.to_thread(load_index, path)
        self.serve(artifact)
        log.info(
            "serving index %s (%d items x %d dims) from %s", artifact.version, len(artifact), artifact.dimension, path
        )


class RetrievalServicer(pb_grpc.RetrievalServiceServicer):
    def __init__(self, settings: RetrievalSettings, holder: IndexHolder, sources: Sequence[Source] | None = None):
        self.settings = settings
        self.holder = holder
        self.sources = {s.source: s for s in (sources or default_sources())}

    async def Retrieve(self, request: pb.RetrieveRequest, context) -> pb.RetrieveResponse:  # noqa: N802
        self.validate(request)
        artifact, search = self.holder.artifact, self.holder.search
        if artifact is None or search is None:
            raise NotReady("no index loaded yet")
        rows = self.holder.rows
        personalised = request.consent
        history_rows = [rows[i.item_id] for i in request.history if i.item_id in rows] if personalised else []
        anchor_rows = [rows[item] for item in request.anchor_item_ids if item in rows]
        allowed = self.allowed_mask(request, artifact, rows, history_rows, anchor_rows)
        query = Query(history_rows, anchor_rows, allowed, request.k or self.settings.default_k)
        wanted = list(request.sources) or list(self.sources)
        response = pb.RetrieveResponse(
            index_version=common_pb2.ArtifactVersion(kind="index", name="items", version=artifact.version)
        )
        for source_id in dict.fromkeys(wanted):
            source = self.sources[source_id]
            with tracer.start_as_current_span(source.name) as span:
                found = source.retrieve(artifact, search, query)
                span.set_attribute("aisle.candidates", len(found))
            for rank, candidate in enumerate(found):
                response.candidates.append(
                    pb.Candidate(
                        item_id=artifact.item_ids[candidate.row],
                        score=candidate.score,
                        source=candidate.source,
                        source_rank=rank,
                        anchor_item_id=artifact.item_ids[candidate.anchor_row]
                        if candidate.anchor_row is not None
                        else "",
                    )
                )
        return response

    def validate(self, request: pb.RetrieveRequest) -> None:
        settings = self.settings
        check = Violations()
        check.subject("subject", request.subject, required=False)
        check.region("context.region", request.context.region)
        check.history("history", request.history, limit=settings.max_history)
        check.ids("anchor_item_ids", request.anchor_item_ids, limit=settings.max_anchors)
        check.k("k", request.k, limit=settings.max_k)
        for i, source in enumerate(request.sources):
            check.enum(f"sources[{i}]", source, list(self.sources), SOURCE_NAMES)
        exclusions = request.exclusions
        total = len(exclusions.item_ids) + len(exclusions.brands) + len(exclusions.categories)
        if total > settings.max_exclusions:
            check.add("exclusions", f"must have at most {settings.max_exclusions} entries in all, got {total}")
        else:
            check.ids("exclusions.item_ids", exclusions.item_ids, limit=settings.max_exclusions)
        check.raise_if_any()

    @staticmethod
    def allowed_mask(
        request: pb.RetrieveRequest,
        artifact: IndexArtifact,
        rows: dict[str, int],
        history_rows: list[int],
        anchor_rows: list[int],
    ) -> np.ndarray:
        allowed = np.ones(len(artifact), dtype=bool)
        excluded = [rows[item] for item in request.exclusions.item_ids if item in rows]
        # The product on the page and the cart's items are never their own recommendation.
        excluded += anchor_rows
        if request.exclude_history:
            excluded += history_rows
        allowed[excluded] = False
        if request.exclusions.brands:
            banned = set(request.exclusions.brands)
            allowed &= np.fromiter((b not in banned for b in artifact.brands), dtype=bool, count=len(artifact))
        if request.exclusions.categories:
            banned = set(request.exclusions.categories)
            allowed &= np.fromiter((c not in banned for c in artifact.categories), dtype=bool, count=len(artifact))
        return allowed


def default_sources() -> list[Source]:
    return [HistoryEmbeddingSource(), ItemToItemSource(), PopularitySource()]
