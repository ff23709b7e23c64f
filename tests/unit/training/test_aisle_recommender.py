"""The evaluated pipeline's candidate set, part by part, as the retrieval service forms it: in the discovery
protocol every source picks its k among the items the customer has not bought (retrieval's allowed mask), so no
source brings more candidates than serving would."""

from __future__ import annotations

import numpy as np

from training.data.splits import EvalCase
from training.evaluation.aisle import AisleRecommender
from training.features import DAY_S, RecentSales

ITEMS = 10


def recommender(popular: int = 3, trending: int = 2) -> AisleRecommender:
    vectors = np.eye(ITEMS, dtype=np.float32)

    def query(history: np.ndarray) -> np.ndarray:
        return np.tile(vectors[9], (len(history), 1))  # retrieval's top item is always item 9

    # Recent sales (days 0-1): item 0 three times, item 1 twice, items 6 and 7 once each.
    baskets = [np.array([0, 1, 6]), np.array([0, 1]), np.array([0, 7])]
    sales = RecentSales(ITEMS, np.array([0, DAY_S, DAY_S]), baskets, days=14)
    popularity = np.arange(ITEMS, 0, -1).astype(np.float64)  # item 0 most popular, then 1, 2, ...
    return AisleRecommender(
        query, vectors, None, None, popularity, retrieve=1, popular=popular, recent=sales, trending=trending
    )


def test_each_source_takes_its_k_among_the_allowed_items():
    model = recommender()
    allowed = np.ones(ITEMS, dtype=bool)
    allowed[[0, 1]] = False  # the customer bought items 0 and 1
    assert model.popular_items().tolist() == [0, 1, 2]
    assert model.popular_items(allowed).tolist() == [2, 3, 4]
    sales = model.recent.at(2 * DAY_S)
    assert model.trending_items(sales).tolist() == [0, 1]
    assert model.trending_items(sales, allowed).tolist() == [6, 7]
    allowed[7] = False
    assert model.trending_items(sales, allowed).tolist() == [6]  # unsold items are never trending


def test_discovery_candidates_are_what_serving_would_retrieve():
    model = recommender(trending=0)
    model.recent = None  # undated: the popular source reads the static counts, as serving reads its index
    # Item 8 is neither popular nor trending: excluding it must not let another popular item in.
    case = EvalCase(user=0, history=np.array([0, 1, 0, 8]), target=np.array([5]), time=2 * DAY_S)
    discovery = model.candidates([case], exclude_history=True)[0]
    assert sorted(discovery[discovery >= 0].tolist()) == [2, 3, 4, 9]  # popular 3, two-tower 1
    repeat = model.candidates([case], exclude_history=False)[0]
    assert sorted(repeat[repeat >= 0].tolist()) == [0, 1, 2, 8, 9]  # popular 0-2, bought 0, 1, 8


def test_dated_cases_see_popularity_as_of_their_own_day():
    model = recommender()
    # Sold before day 2: item 0 three times, 1 twice, 6 and 7 once (the static counts would say 0, 1, 2).
    case = EvalCase(user=0, history=np.array([0, 1, 0, 8]), target=np.array([5]), time=2 * DAY_S)
    discovery = model.candidates([case], exclude_history=True)[0]
    assert sorted(discovery[discovery >= 0].tolist()) == [2, 6, 7, 9]  # popular 6, 7, 2; trending 6, 7
    repeat = model.candidates([case], exclude_history=False)[0]
    assert sorted(repeat[repeat >= 0].tolist()) == [0, 1, 6, 8, 9]  # popular 0, 1, 6; trending 0, 1
    # On day 0 nothing has sold yet: the popular source and the fill follow the rows, whatever sells later.
    first = EvalCase(user=0, history=np.array([8]), target=np.array([5]), time=DAY_S - 1)
    early = model.candidates([first], exclude_history=True)[0]
    assert sorted(early[early >= 0].tolist()) == [0, 1, 2, 9]
    fill = model.popularity_fill([first, case])
    assert np.argsort(-fill[0], kind="stable").tolist() == list(range(ITEMS))
    assert np.argsort(-fill[1], kind="stable")[:4].tolist() == [0, 1, 6, 7]


def test_close_probabilities_keep_their_order_in_the_full_ranking(monkeypatch):
    # Candidates are scored above the popularity fill by adding a constant; at 1.0 + p, float32 merged
    # probabilities closer than 1.2e-7 into ties (ordered by catalog row, not by the ranker).
    model = recommender(trending=0)
    model.recent = None
    case = EvalCase(user=0, history=np.array([8]), target=np.array([5]), time=2 * DAY_S)
    candidates = model.candidates([case], exclude_history=False)[0]
    slots = np.flatnonzero(candidates >= 0)
    # The higher rows get the higher probabilities, 2e-8 apart: ties would put the lower rows first.
    order = np.argsort(candidates[slots])
    purchase = np.zeros((1, len(candidates)), dtype=np.float32)
    purchase[0, slots[order]] = np.float32(0.01) + np.arange(len(slots), dtype=np.float32) * np.float32(2e-8)
    monkeypatch.setattr("training.evaluation.aisle.ranker_inputs", lambda *args: (None, None, None))
    model.rank_fn = lambda history, tokens, features: (purchase, None)
    scores = model.score([case]).scores[0]
    ranked = np.argsort(-scores, kind="stable")[: len(slots)]
    assert ranked.tolist() == sorted(candidates[slots].tolist(), reverse=True)
    assert scores[ranked[-1]] > np.sort(np.delete(scores, candidates[slots]))[-1]  # above every filled item
