"""RankingServicer without a server: what it answers for the scores a backend gives."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as pb
from services.core.errors import MAX_MESSAGE_BYTES, InvalidArgument, NotFound, status_for
from services.ranking.backends.base import NonFiniteScores, Ranking
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

NAN = float("nan")


class GivenScores:
    """A backend that answers every request with the given P(purchase) and P(return) (None: no return head)."""

    kind = "onnxruntime"
    model_name = "ranker"
    model_version = "3"

    def __init__(self, purchase: list[float], returns: list[float] | None = None, unknown: list[bool] | None = None):
        self.purchase, self.returns = purchase, returns
        self.unknown = unknown or [False] * len(purchase)

    async def rank(self, history_ids, candidate_ids, timeout, version=""):
        returns = np.array(self.returns, np.float32) if self.returns is not None else None
        purchase, unknown = np.array(self.purchase, np.float32), np.array(self.unknown, bool)
        return Ranking("ranker", "3", purchase, returns, unknown, self.kind)


async def rank(backend: GivenScores, columnar: bool = False) -> pb.RankResponse:
    request = pb.RankRequest(candidate_item_ids=["a", "b", "c"], columnar=columnar)
    return await RankingServicer(RankingSettings(), backend).Rank(request, None)


@pytest.mark.parametrize(
    ("purchase", "returns", "bad"),
    [
        ([0.1, NAN, 0.3], None, 1),
        ([0.1, float("inf"), NAN], None, 2),
        ([0.1, 0.2, 0.3], [0.0, NAN, 0.1], 1),
    ],
)
@pytest.mark.parametrize("columnar", [False, True])
async def test_scores_that_are_not_finite_are_an_error_not_an_answer(purchase, returns, bad, columnar):
    # NaN scores would order the gateway's answer arbitrarily, unflagged; an error makes it rank by its fallback
    # order and say that ranking failed.
    with pytest.raises(NonFiniteScores, match=f"for {bad} of 3 candidates") as failed:
        await rank(GivenScores(purchase, returns), columnar)
    status = status_for(failed.value)
    assert status.code == grpc.StatusCode.INTERNAL and ("grpc-retry-pushback-ms", "-1") in status.trailing_metadata


async def test_a_return_probability_the_model_has_none_for_is_not_checked():
    # An unknown candidate's P(return) is meaningless and never sent (NaN in the columns): not the model's fault.
    answer = await rank(GivenScores([0.1, 0.0, 0.3], [0.2, NAN, 0.1], unknown=[False, True, False]))
    assert [s.HasField("return_probability") for s in answer.scored_items] == [True, False, True]
    assert [s.purchase_probability for s in answer.scored_items] == pytest.approx([0.1, 0.0, 0.3])


@pytest.mark.parametrize(("unknown", "flagged"), [([False, True, False], False), ([True, True, False], True)])
async def test_an_answer_where_the_model_knows_few_candidates_says_so_and_is_counted(unknown, flagged):
    """An index and a ranker from different trainings: every candidate unknown, every score 0, an answer in
    retrieval's order that nothing flagged. Past half unknown the answer is degraded; every call is counted."""
    counted = []
    servicer = RankingServicer(
        RankingSettings(), GivenScores([0.1, 0.0, 0.3], unknown=unknown), lambda *c: counted.append(c)
    )
    answer = await servicer.Rank(pb.RankRequest(candidate_item_ids=["a", "b", "c"]), None)
    reasons = [d.reason for d in answer.degradations]
    assert reasons == ([common.DEGRADATION_REASON_UNKNOWN_CANDIDATES] if flagged else [])
    if flagged:
        assert "ranker version 3 knows 1 of 3 candidates" in answer.degradations[0].detail
    assert counted == [(3 - sum(unknown), sum(unknown))]


async def test_a_model_name_no_model_could_have_is_refused_by_field_not_quoted_in_a_not_found():
    """Quoted whole in NOT_FOUND's message (twice in the answer's metadata), a 20,000-character name made the
    answer's metadata too large: the caller got RESOURCE_EXHAUSTED naming nothing."""
    servicer = RankingServicer(RankingSettings(), GivenScores([0.1, 0.2, 0.3]))
    request = pb.RankRequest(candidate_item_ids=["a", "b", "c"], model_name="m" * 20_000)
    with pytest.raises(InvalidArgument) as refused:
        await servicer.Rank(request, None)
    status = status_for(refused.value)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT and "model_name" in status.details
    assert sum(len(value) for _, value in status.trailing_metadata) < 4096
    request.model_name = "other"
    with pytest.raises(NotFound, match="'other' is not served here"):
        await servicer.Rank(request, None)


@pytest.mark.parametrize("text", ["x" * 20_000, "\U0001f600" * 5_000])
def test_an_error_message_is_sent_at_most_max_message_bytes_long(text):
    status = status_for(NotFound(text))
    assert len(status.details.encode()) <= MAX_MESSAGE_BYTES and status.details.endswith("…")
    assert sum(len(value) for _, value in status.trailing_metadata) < 4096
