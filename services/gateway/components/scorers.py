"""Scorers add scores to candidates in input order; they never drop or reorder."""

from __future__ import annotations

from typing import ClassVar

import grpc

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from services.core.errors import BudgetExhausted
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import Candidate, RequestState


class RankingParams(Params):
    share: float = 0.45
    #: When ranking is down: weight of popularity (source rank) against retrieval order in the fallback score.
    popularity_blend: float = 0.3


class RankingScorer(ComponentBase):
    """P(purchase) (and P(return)) from the ranking service as ``relevance``. When ranking is slow or down,
    relevance is the retrieval order blended with popularity, and the answer is flagged."""

    kind: ClassVar[str] = "scorer"
    Params = RankingParams

    async def score(self, state: RequestState, candidates: list[Candidate]) -> None:
        if not candidates:
            return
        request = state.request
        try:
            timeout = state.budget.stage_timeout(self.name, self.params.share)
            reply = await self.deps.downstream.ranking.Rank(
                ranking_pb.RankRequest(
                    subject=request.subject,
                    surface=request.surface,
                    context=request.context,
                    history=state.history,
                    candidate_item_ids=[c.item_id for c in candidates],
                    model_name=state.model[0],
                    model_version=state.model[1],
                ),
                timeout=timeout,
            )
        except (grpc.aio.AioRpcError, BudgetExhausted) as error:
            late = isinstance(error, BudgetExhausted) or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = (
                common.DEGRADATION_REASON_RANKING_TIMEOUT if late else common.DEGRADATION_REASON_RANKING_UNAVAILABLE
            )
            state.degrade(reason, "ranking", str(error) if isinstance(error, BudgetExhausted) else error.code().name)
            self._fallback(candidates)
            return
        if reply.model_version.version:
            state.versions.append(reply.model_version)
        state.degradations.extend(reply.degradations)
        for candidate, scored in zip(candidates, reply.scored_items, strict=True):
            scores = candidate.scores
            scores["purchase"] = scores["relevance"] = scored.purchase_probability
            if scored.HasField("return_probability"):  # set per item: unknown items may have none
                scores["return"] = scored.return_probability

    def _fallback(self, candidates: list[Candidate]) -> None:
        count = len(candidates)
        blend = self.params.popularity_blend
        for position, candidate in enumerate(candidates):
            order = 1.0 - position / count  # retrieval order (merge interleaves sources by rank)
            popular = 1.0 if common.CANDIDATE_SOURCE_POPULARITY in candidate.sources else 0.0
            agreement = min(len(candidate.sources), 3) / 3
            candidate.scores["relevance"] = (1 - blend) * (0.5 * order + 0.5 * agreement) + blend * popular


class ExpectedProfitParams(Params):
    #: 0 ranks by relevance only, 1 by expected contribution only.
    weight: float = 0.3
    #: Cost of a return as a share of the price, where the catalog has no return_cost.
    return_cost_share: float = 0.15
    shipping_subsidy: float = 0.0


class ExpectedProfitScorer(ComponentBase):
    """Expected contribution = P(purchase) x price x margin - P(return) x return cost - shipping subsidy,
    blended with relevance: final = (1 - w) x relevance' + w x contribution' (both scaled to [0, 1] over the
    candidates)."""

    kind: ClassVar[str] = "scorer"
    requires: ClassVar[frozenset[str]] = frozenset({"price", "margin"})
    Params = ExpectedProfitParams

    async def score(self, state: RequestState, candidates: list[Candidate]) -> None:
        p, catalog = self.params, state.catalog
        for candidate in candidates:
            price = float(catalog.get(candidate.item_id, "price", 0.0))
            margin = float(catalog.get(candidate.item_id, "margin", 0.0))
            return_cost = float(catalog.get(candidate.item_id, "return_cost", price * p.return_cost_share))
            purchase = candidate.scores.get("purchase", candidate.scores.get("relevance", 0.0))
            returned = candidate.scores.get("return", 0.0)
            candidate.scores["profit"] = (
                purchase * price * margin - purchase * returned * return_cost - p.shipping_subsidy
            )
        relevance = _scaled([c.scores.get("relevance", 0.0) for c in candidates])
        profit = _scaled([c.scores["profit"] for c in candidates])
        for candidate, r, g in zip(candidates, relevance, profit, strict=True):
            candidate.scores["final"] = (1 - p.weight) * r + p.weight * g


def _scaled(values: list[float]) -> list[float]:
    if not values:
        return []
    low, high = min(values), max(values)
    return [0.0 if high == low else (v - low) / (high - low) for v in values]
