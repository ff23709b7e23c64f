"""A real ``RecommendationServicer`` over in-memory fakes of retrieval, ranking, the session store and the event
log, for the servicer's unit tests: ``servicer()`` builds one, ``recommend()`` calls it and waits for its side
effects."""

from __future__ import annotations

import asyncio

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as ranking_pb
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2 as retrieval_pb
from services.gateway.cache import AnonymousCache
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import Dependencies
from services.gateway.components.selectors import FeedbackStats
from services.gateway.components.sources import PopularCache
from services.gateway.pipeline import PipelineMetrics
from services.gateway.policies import DEFAULT_POLICY_FILE, load_policies
from services.gateway.servicer import RecommendationServicer
from services.gateway.sessions import InMemorySessionStore, subject_key
from services.gateway.settings import GatewaySettings

ITEMS = [f"i{n}" for n in range(60)]
CATALOG = ItemCatalog(
    {item: {"title": item, "category": f"c{n % 5}", "brand": f"b{n % 7}"} for n, item in enumerate(ITEMS)}
)


class PopularRetrieval:
    """Every item, most popular first, by the request's region's sales (``regional``: an index with sales by region)
    or the shop's; counts its calls (a cache hit makes none)."""

    def __init__(self, items: list[str], regional: bool = True):
        self.items, self.calls, self.regional = items, 0, regional

    async def Retrieve(self, request, timeout=None):  # noqa: N802
        self.calls += 1
        n = len(self.items)
        columns = retrieval_pb.CandidateColumns(
            item_ids=self.items,
            scores=[1.0] * n,
            sources=[common.CANDIDATE_SOURCE_POPULARITY] * n,
            source_ranks=list(range(n)),
            anchor_item_ids=[""] * n,
        )
        region = request.context.region if self.regional else ""
        return retrieval_pb.RetrieveResponse(columns=columns, popularity_region=region)


class OrderRanking:
    async def Rank(self, request, timeout=None):  # noqa: N802
        n = len(request.candidate_item_ids)
        return ranking_pb.RankResponse(
            columns=ranking_pb.ScoreColumns(purchase_probabilities=[1 - i / n for i in range(n)])
        )


class Downstream:
    def __init__(self, items: list[str]):
        self.retrieval, self.ranking = PopularRetrieval(items), OrderRanking()


class RecordingSink:
    def __init__(self):
        self.records: list[dict] = []

    async def write(self, records):
        self.records.extend(records)


class Context:
    def time_remaining(self) -> float:
        return 5.0


class DownSessions(InMemorySessionStore):
    async def history(self, key):
        raise ConnectionError("redis down")

    async def forget(self, key):
        raise ConnectionError("redis down")


def servicer(
    items=ITEMS, sessions=None, cache_ttl_s: float = 30.0, salt: str = "aisle", **settings
) -> RecommendationServicer:
    """``settings``: gateway settings over the defaults."""
    sessions = InMemorySessionStore() if sessions is None else sessions  # an empty store is falsy
    dependencies = Dependencies(Downstream(items), sessions, FeedbackStats(), PopularCache(), RecordingSink())
    return RecommendationServicer(
        GatewaySettings(catalog_path=None, metrics_port=None, subject_key_salt=SecretStr(salt), **settings),
        load_policies(DEFAULT_POLICY_FILE, CATALOG, dependencies),
        CATALOG,
        dependencies,
        PipelineMetrics(CollectorRegistry()),
        AnonymousCache(cache_ttl_s),
    )


def home(subject: common.Subject, consent: bool = True, k: int = 5, **fields) -> pb.RecommendRequest:
    """A home-page request of the control variant in GB, with ``fields`` merged over it."""
    request = pb.RecommendRequest(
        subject=subject,
        surface=common.SURFACE_HOME,
        consent=consent,
        k=k,
        context=common.RequestContext(region="GB"),
        experiment_variant_override="control",
    )
    request.MergeFrom(pb.RecommendRequest(**fields))
    return request


def guest(session_id: str, k: int = 5) -> pb.RecommendRequest:
    return home(common.Subject(session_id=session_id), k=k)


def shopper(user_id: str = "alice@example.com", consent: bool = True, **fields) -> pb.RecommendRequest:
    return home(common.Subject(user_id=user_id), consent, **fields)


async def recommend(service: RecommendationServicer, request: pb.RecommendRequest) -> pb.RecommendResponse:
    response = await service.Recommend(request, Context())
    await asyncio.gather(*service._background)  # the exposure side effects
    return response


async def shown_too_often(service: RecommendationServicer, session_id: str, items: list[str]) -> None:
    key = subject_key(common.Subject(session_id=session_id))
    for _ in range(9):  # the home policy's cap is 8
        await service.deps.sessions.add_exposures(key, items)


def ids(response: pb.RecommendResponse) -> list[str]:
    return [item.item_id for item in response.items]
