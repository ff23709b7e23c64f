"""RankingService: validates a request, scores it with the backend (ids in, probabilities out), answers in order."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from aisle.common.v1 import common_pb2
from aisle.ranking.v1 import ranking_service_pb2 as pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from services.core.errors import InvalidArgument, NotFound
from services.core.validation import (
    EVENT_TYPES,
    MAX_ID_LENGTH,
    MAX_TIMESTAMP_NANOS,
    MAX_TIMESTAMP_SECONDS,
    MIN_TIMESTAMP_SECONDS,
    SURFACES,
    Violations,
    id_problem,
)
from services.ranking.backends.base import ModelNotReady, NonFiniteScores, Ranking, RankingBackend
from services.ranking.settings import RankingSettings
from services.ranking.wire import encode_scored_items

#: Past this share of candidates the model does not know, the answer says so (DEGRADATION_REASON_UNKNOWN_CANDIDATES).
UNKNOWN_SHARE_DEGRADED = 0.5


class RankingServicer(pb_grpc.RankingServiceServicer):
    def __init__(
        self,
        settings: RankingSettings,
        backend: RankingBackend,
        scored: Callable[[int, int], None] | None = None,
    ):
        self.settings = settings
        self.backend = backend
        #: Told (known, unknown) candidates per answer: the metrics.
        self.scored = scored

    async def Rank(self, request: pb.RankRequest, context) -> pb.RankResponse:  # noqa: N802
        # One conversion of each repeated field: each pass over it would build every Python string again.
        candidate_ids = list(request.candidate_item_ids)
        history_ids = [interaction.item_id for interaction in request.history]
        self.validate(request, candidate_ids, history_ids)
        if not self.backend.model_version:
            raise ModelNotReady("ranking model not loaded yet")
        self.check_model(request)
        remaining = context.time_remaining() if context is not None else None
        ranking = await self.backend.rank(history_ids, candidate_ids, remaining, request.model_version)
        check_finite(ranking)
        response = pb.RankResponse(
            model_version=common_pb2.ArtifactVersion(
                kind="model", name=ranking.model_name, version=ranking.model_version
            )
        )
        if ranking.fallback:
            response.degradations.add(
                reason=common_pb2.DEGRADATION_REASON_RANKING_FALLBACK_BACKEND,
                stage="ranking",
                detail=f"scored by the {ranking.backend} backend; the configured one failed: {ranking.fallback_reason}",
            )
        unknown = int(np.count_nonzero(ranking.unknown))
        known = len(candidate_ids) - unknown
        if self.scored is not None:
            self.scored(known, unknown)
        if unknown > UNKNOWN_SHARE_DEGRADED * len(candidate_ids):
            response.degradations.add(
                reason=common_pb2.DEGRADATION_REASON_UNKNOWN_CANDIDATES,
                stage="ranking",
                detail=f"model {ranking.model_name} version {ranking.model_version} knows {known} of "
                f"{len(candidate_ids)} candidates (the others score 0): index and ranker from one training?",
            )
        if request.columnar:
            add_score_columns(response, ranking)
        else:
            add_scored_items(response, candidate_ids, ranking)
        return response

    def validate(self, request: pb.RankRequest, candidate_ids: list[str], history_ids: list[str]) -> None:
        # The per-entry checks name the bad entry; most requests pass the one-pass tests here and skip them.
        check = Violations()
        check.subject("subject", request.subject, required=False)
        check.defined("surface", request.surface, common_pb2.Surface, SURFACES)
        check.context("context", request.context)
        limit = self.settings.max_history
        if len(history_ids) > limit or not _plainly_valid(history_ids) or not _plain_interactions(request.history):
            check.history("history", request.history, limit=limit)
        if not candidate_ids:
            check.add("candidate_item_ids", "must list at least one item")
        elif len(candidate_ids) > self.settings.max_candidates or not _plainly_valid(candidate_ids):
            check.ids("candidate_item_ids", candidate_ids, limit=self.settings.max_candidates)
        check.raise_if_any()

    def check_model(self, request: pb.RankRequest) -> None:
        """The model asked for is this service's. (A pinned version is the backend's to check: with several Triton
        servers, some may serve it while others do not, and a call goes to one that does.)"""
        backend = self.backend
        if request.model_name and request.model_name != backend.model_name:
            if problem := id_problem(request.model_name):
                raise InvalidArgument({"model_name": problem})
            raise NotFound(f"model {request.model_name!r} is not served here (serving {backend.model_name!r})")


def check_finite(ranking: Ranking) -> None:
    """Raises :class:`NonFiniteScores` unless every P(purchase), and P(return) of every known candidate, is finite."""
    bad = ~np.isfinite(ranking.purchase)
    if ranking.returns is not None:
        bad |= ~np.isfinite(ranking.returns) & ~ranking.unknown
    if bad.any():
        raise NonFiniteScores(
            f"model {ranking.model_name!r} version {ranking.model_version} gave scores that are not finite for "
            f"{int(bad.sum())} of {len(bad)} candidates"
        )


def add_scored_items(response: pb.RankResponse, candidate_ids: list[str], ranking: Ranking) -> None:
    """One ``ScoredItem`` per candidate, in request order: P(return) only for known candidates of a model with
    that head. Written as wire bytes in a few array operations (:mod:`services.ranking.wire`) and merged in C;
    field by field only when an id is too long for that."""
    has_return = ~ranking.unknown if ranking.returns is not None else None
    encoded = encode_scored_items(candidate_ids, ranking.purchase, ranking.returns, has_return)
    if encoded is not None:
        response.MergeFromString(encoded)
        return
    purchase = ranking.purchase.tolist()
    returns = ranking.returns.tolist() if ranking.returns is not None else None
    unknown = ranking.unknown.tolist()
    add = response.scored_items.add
    for i, item_id in enumerate(candidate_ids):
        scored = add(item_id=item_id, purchase_probability=purchase[i])
        if returns is not None and not unknown[i]:
            scored.return_probability = returns[i]


def add_score_columns(response: pb.RankResponse, ranking: Ranking) -> None:
    """The probabilities as ``response.columns`` (NaN as the return probability of an unknown candidate)."""
    response.columns.purchase_probabilities.extend(ranking.purchase.tolist())
    if ranking.returns is not None:
        response.columns.return_probabilities.extend(np.where(ranking.unknown, np.nan, ranking.returns).tolist())


def _plain_interactions(history) -> bool:
    """True when no interaction has a negative quantity, an event type the contract does not define or an event time
    out of Timestamp's range (what ``Violations.history`` checks besides the ids), in one pass."""
    for interaction in history:
        time = interaction.event_time
        seconds, nanos = time.seconds, time.nanos
        if (
            interaction.quantity < 0
            or interaction.event_type not in EVENT_TYPES
            or seconds < MIN_TIMESTAMP_SECONDS
            or seconds > MAX_TIMESTAMP_SECONDS
            or nanos < 0
            or nanos > MAX_TIMESTAMP_NANOS
        ):
            return False
    return True


def _plainly_valid(ids) -> bool:
    """True when every id is non-empty, short enough and printable (what ``Violations.ids`` checks), tested in a
    few C-level passes: hundreds of candidates per request make the per-id Python loop a visible cost.
    An empty list is plainly valid."""
    if not ids:
        return True
    lengths = list(map(len, ids))
    return min(lengths) > 0 and max(lengths) <= MAX_ID_LENGTH and "".join(ids).isprintable()
