"""Hand-made pipeline inputs for gateway component tests."""

from __future__ import annotations

import contextlib
import gc
import tracemalloc
from collections.abc import Iterator
from types import SimpleNamespace

from aisle.common.v1 import common_pb2 as common
from aisle.recommendation.v1 import recommendation_service_pb2 as pb
from services.gateway.budget import RequestBudget
from services.gateway.candidates import Candidates
from services.gateway.catalog import ItemCatalog
from services.gateway.components.base import Dependencies
from services.gateway.components.selectors import FeedbackStats
from services.gateway.components.sources import PopularCache
from services.gateway.events import NullEventSink
from services.gateway.pipeline import RequestState
from services.gateway.sessions import InMemorySessionStore

CATALOG = ItemCatalog(
    {
        f"i{n}": {
            "title": f"Item {n}",
            "category": f"c{n % 3}",
            "brand": f"b{n % 2}",
            "price": 10.0 + n,
            "margin": 0.1 * (n % 5),
            "stock": 0 if n == 4 else 5,
            "new": n >= 8,
        }
        for n in range(10)
    }
)


def deps(downstream=None) -> Dependencies:
    return Dependencies(
        downstream=downstream,
        sessions=InMemorySessionStore(),
        feedback=FeedbackStats(),
        popular_cache=PopularCache(),
        events=NullEventSink(),
    )


def state(
    k: int = 5,
    history=(),
    exclusions=None,
    budget_s: float = 1.0,
    consent: bool = True,
    exposures=None,
    catalog: ItemCatalog = CATALOG,
    subject_key: str = "key",
) -> RequestState:
    request = pb.RecommendRequest(
        subject=common.Subject(user_id="u"),
        surface=common.SURFACE_HOME,
        k=k,
        consent=consent,
        context=common.RequestContext(region="GB"),
    )
    if exclusions:
        request.exclusions.CopyFrom(exclusions)
    return RequestState(
        request,
        subject_key,
        list(history),
        k,
        RequestBudget(budget_s, None, 0.001),
        catalog,
        exposures=dict(exposures or {}),
    )


def candidates(*items: str, relevance=None) -> Candidates:
    """Popular items in the given order, relevance falling with position unless given."""
    scores = relevance if relevance else [1.0 - i / 100 for i in range(len(items))]
    return Candidates.of(items, common.CANDIDATE_SOURCE_POPULARITY, scores={"relevance": scores})


@contextlib.contextmanager
def traced_growth() -> Iterator[SimpleNamespace]:
    """What the block leaves allocated, as tracemalloc traces it: ``.held`` bytes once it ends, after a collection
    (the block deletes what it made only to fill the measured structure)."""
    measured = SimpleNamespace(held=0)
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        yield measured
        gc.collect()
        measured.held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
