"""RankingService: validates a request, turns ids into tokens, scores with the backend, answers in order."""

from __future__ import annotations

import numpy as np

from aisle.common.v1 import common_pb2
from aisle.ranking.v1 import ranking_service_pb2 as pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from services.core.errors import NotFound, NotReady
from services.core.validation import Violations
from services.ranking.backends.base import RankingBackend
from services.ranking.features import PADDING_TOKEN, encode_history
from services.ranking.settings import RankingSettings


class RankingServicer(pb_grpc.RankingServiceServicer):
    def __init__(self, settings: RankingSettings, backend: RankingBackend):
        self.settings = settings
        self.backend = backend

    async def Rank(self, request: pb.RankRequest, context) -> pb.RankResponse:  # noqa: N802
        self.validate(request)
        backend = self.backend
        if not backend.model_version:
            raise NotReady("ranking model not loaded yet")
        self.check_model(request)
        history_ids = [i.item_id for i in request.history]
        history = encode_history(backend.tokens(history_ids), backend.history_length)[None, :]
        candidate_ids = list(request.candidate_item_ids)
        candidates = backend.tokens(candidate_ids)
        scores = await backend.score(history, candidates[None, :])
        unknown = candidates == PADDING_TOKEN
        purchase = np.where(unknown, 0.0, scores.purchase[0])
        response = pb.RankResponse(
            model_version=common_pb2.ArtifactVersion(
                kind="model", name=backend.model_name, version=backend.model_version
            )
        )
        returns = scores.returns[0] if scores.returns is not None else None
        for i, item_id in enumerate(candidate_ids):
            scored = response.scored_items.add(item_id=item_id, purchase_probability=float(purchase[i]))
            if returns is not None and not unknown[i]:
                scored.return_probability = float(returns[i])
        return response

    def validate(self, request: pb.RankRequest) -> None:
        check = Violations()
        check.subject("subject", request.subject, required=False)
        check.history("history", request.history, limit=self.settings.max_history)
        if not request.candidate_item_ids:
            check.add("candidate_item_ids", "must list at least one item")
        check.ids("candidate_item_ids", request.candidate_item_ids, limit=self.settings.max_candidates)
        check.raise_if_any()

    def check_model(self, request: pb.RankRequest) -> None:
        backend = self.backend
        if request.model_name and request.model_name != backend.model_name:
            raise NotFound(f"model {request.model_name!r} is not served here (serving {backend.model_name!r})")
        if request.model_version and request.model_version != backend.model_version:
            raise NotFound(
                f"version {request.model_version} of {backend.model_name!r} is not served "
                f"(serving {backend.model_version})"
            )
