"""Scorers add score columns to the candidates in input order; they never drop or reorder."""

from __future__ import annotations

from typing import ClassVar

import grpc
import numpy as np
from pydantic import Field

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from services.core.errors import BudgetExhausted, describe
from services.gateway.candidates import Candidates, min_max_scaled
from services.gateway.components.base import ComponentBase, Params
from services.gateway.pipeline import RequestState


class RankingParams(Params):
    share: float = Field(0.45, gt=0, le=1)
    #: When ranking is down: weight of popularity (source rank) against retrieval order in the fallback score.
    popularity_blend: float = Field(0.3, ge=0, le=1)


class RankingScorer(ComponentBase):
    """P(purchase) (and P(return)) from the ranking service as ``relevance``. When ranking is slow or down,
    relevance is the retrieval order blended with popularity, and the answer is flagged."""

    kind: ClassVar[str] = "scorer"
    Params = RankingParams

    async def score(self, state: RequestState, candidates: Candidates) -> None:
        if not len(candidates):
            return
        request = state.request
        try:
            timeout = state.budget.stage_timeout(self.name, self.params.share)
            reply = await self.deps.downstream.ranking.Rank(
                ranking_pb.RankRequest(  # no subject: what ranking needs of the shopper is the history
                    surface=request.surface,
                    context=request.context,
                    history=state.history,
                    candidate_item_ids=candidates.ids(),
                    model_name=state.model[0],
                    model_version=state.model[1],
                    columnar=self.deps.columnar,
                ),
                timeout=timeout,
            )
        except (grpc.aio.AioRpcError, BudgetExhausted) as error:
            late = isinstance(error, BudgetExhausted) or error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            reason = (
                common.DEGRADATION_REASON_RANKING_TIMEOUT if late else common.DEGRADATION_REASON_RANKING_UNAVAILABLE
            )
            state.degrade(reason, "ranking", str(error) if isinstance(error, BudgetExhausted) else describe(error))
            self._fallback(candidates)
            return
        purchase, returns = _probabilities(reply)
        if len(purchase) != len(candidates) or (returns is not None and len(returns) != len(candidates)):
            # A broken answer is no answer: better the flagged fallback order than misaligned scores.
            detail = f"ranking scored {len(purchase)} of {len(candidates)} candidates"
            state.degrade(common.DEGRADATION_REASON_RANKING_UNAVAILABLE, "ranking", detail)
            self._fallback(candidates)
            return
        if reply.model_version.version:
            state.versions.append(reply.model_version)
        state.degradations.extend(reply.degradations)
        candidates.scores["purchase"], candidates.scores["relevance"] = purchase, purchase.copy()
        if returns is not None and not np.isnan(returns).all():
            candidates.scores["return"] = returns

    def _fallback(self, candidates: Candidates) -> None:
        count = len(candidates)
        blend = self.params.popularity_blend
        order = 1.0 - np.arange(count) / count  # retrieval order (merge interleaves sources by rank)
        popular = candidates.has_source(common.CANDIDATE_SOURCE_POPULARITY).astype(np.float64)
        agreement = np.minimum(candidates.source_counts(), 3) / 3
        candidates.scores["relevance"] = (1 - blend) * (0.5 * order + 0.5 * agreement) + blend * popular


def _probabilities(reply: ranking_pb.RankResponse) -> tuple[np.ndarray, np.ndarray | None]:
    """(P(purchase), P(return) or None) per candidate; NaN where the model gave no P(return). Reads the columns,
    or the messages of a ranking server that predates ``columnar``."""
    if reply.scored_items:
        scored = np.array(
            [
                (s.purchase_probability, s.return_probability if s.HasField("return_probability") else np.nan)
                for s in reply.scored_items
            ],
            dtype=np.float64,
        )
        return scored[:, 0], scored[:, 1]
    columns = reply.columns
    purchase = np.array(list(columns.purchase_probabilities), dtype=np.float64)
    returns = np.array(list(columns.return_probabilities), dtype=np.float64) if columns.return_probabilities else None
    return purchase, returns


class ExpectedProfitParams(Params):
    #: 0 ranks by relevance only, 1 by expected contribution only.
    weight: float = Field(0.3, ge=0, le=1)
    #: Cost of a return as a share of the price, where the catalog has no return_cost.
    return_cost_share: float = Field(0.15, ge=0)
    shipping_subsidy: float = 0.0


class ExpectedProfitScorer(ComponentBase):
    """Expected contribution = P(purchase) x price x margin - P(return) x return cost - shipping subsidy,
    blended with relevance: final = (1 - w) x relevance' + w x contribution' (both scaled to [0, 1] over the
    candidates)."""

    kind: ClassVar[str] = "scorer"
    requires: ClassVar[frozenset[str]] = frozenset({"price", "margin"})
    Params = ExpectedProfitParams

    async def score(self, state: RequestState, candidates: Candidates) -> None:
        if not len(candidates):
            return
        p, catalog = self.params, state.catalog
        ids = candidates.ids()
        price = np.array([float(catalog.get(item, "price", 0.0)) for item in ids])
        margin = np.array([float(catalog.get(item, "margin", 0.0)) for item in ids])
        default_cost = price * p.return_cost_share
        return_cost = np.array(
            [
                float(catalog.get(item, "return_cost", cost))
                for item, cost in zip(ids, default_cost.tolist(), strict=True)
            ]
        )
        purchase = candidates.score("purchase") if "purchase" in candidates.scores else candidates.score("relevance")
        returned = candidates.score("return", 0.0)
        profit = purchase * price * margin - purchase * returned * return_cost - p.shipping_subsidy
        profit = np.nan_to_num(profit, nan=0.0)  # a catalog NaN costs its own item, not the whole ranking
        candidates.scores["profit"] = profit
        relevance = min_max_scaled(candidates.score("relevance"))
        candidates.scores["final"] = (1 - p.weight) * relevance + p.weight * min_max_scaled(profit)
