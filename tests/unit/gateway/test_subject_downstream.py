"""The shopper's id stays in the gateway: retrieval, ranking and the index shards get the history, the context and
the consent flag, never the subject, with or without consent (neither service uses it beyond validation, which
accepts a request without one)."""

from __future__ import annotations

import asyncio

import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.gateway.sessions import subject_key
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings
from services.retrieval.servicer import SOURCE_IDS, validate_retrieve
from services.retrieval.settings import RetrievalSettings
from tests.unit.gateway.servicers import ITEMS, Context, OrderRanking, PopularRetrieval, servicer

USER = "alice@example.com"


class SpyRetrieval(PopularRetrieval):
    def __init__(self, items: list[str]):
        super().__init__(items)
        self.requests = []

    async def Retrieve(self, request, timeout=None):  # noqa: N802
        self.requests.append(request)
        return await super().Retrieve(request, timeout)


class SpyRanking(OrderRanking):
    def __init__(self):
        self.requests = []

    async def Rank(self, request, timeout=None):  # noqa: N802
        self.requests.append(request)
        return await super().Rank(request, timeout)


class UnregionalIndex:
    """What validate_retrieve reads of an index artefact: one without regional data."""

    dimension, regions = 8, []

    def region_column(self, region: str) -> None:
        return None


@pytest.mark.parametrize(
    ("subject", "consent", "surface"),
    [
        (common.Subject(user_id=USER), True, common.SURFACE_HOME),
        (common.Subject(user_id=USER), False, common.SURFACE_HOME),
        (common.Subject(session_id=USER), True, common.SURFACE_PRODUCT_PAGE),
        (common.Subject(user_id=USER), True, common.SURFACE_CART),
    ],
    ids=["user-consent", "user-no-consent", "guest-product-page", "user-cart"],
)
async def test_no_downstream_request_carries_the_subject(subject, consent, surface):
    service = servicer(cache_ttl_s=0)
    retrieval, ranking = SpyRetrieval(ITEMS), SpyRanking()
    service.deps.downstream.retrieval, service.deps.downstream.ranking = retrieval, ranking
    key = subject_key(subject)
    await service.deps.sessions.append(key, [common.Interaction(item_id="i1", event_type=common.EVENT_TYPE_VIEW)])
    request = pb.RecommendRequest(
        subject=subject,
        surface=surface,
        consent=consent,
        k=5,
        anchor_item_ids=[] if surface == common.SURFACE_HOME else ["i2"],
        context=common.RequestContext(region="GB"),
    )
    answer = await service.Recommend(request, Context())
    await asyncio.gather(*service._background)
    assert answer.items
    assert retrieval.requests and ranking.requests
    for sent in [*retrieval.requests, *ranking.requests]:
        assert not sent.HasField("subject"), sent
        assert USER.encode() not in sent.SerializeToString()
    # The shopper still shapes the answer through what is theirs to share: the consented history.
    assert all(r.consent == consent for r in retrieval.requests)
    if consent:
        assert [i.item_id for i in retrieval.requests[0].history] == ["i1"]
        assert [i.item_id for i in ranking.requests[0].history] == ["i1"]
    # And each service's own validation takes the request without a subject.
    for sent in retrieval.requests:
        validate_retrieve(sent, RetrievalSettings(), UnregionalIndex(), SOURCE_IDS)
    for sent in ranking.requests:
        ids, history = list(sent.candidate_item_ids), [i.item_id for i in sent.history]
        RankingServicer(RankingSettings(), backend=None).validate(sent, ids, history)
