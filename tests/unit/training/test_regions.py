"""The regional data a training run writes into the index: regions, where items are sold, popular per region."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.tiny_training import plain_catalog
from training.data.schema import KIND_CODES, PURCHASE, VIEW, Dataset, LoadReport, build_event_log
from training.data.splits import split_dataset
from training.regions import PRIOR_LINES, regional_data, user_regions


def shop(rows, sold_in=None, items: int = 5) -> Dataset:
    """rows: (user, item row, kind, time, basket, region)."""
    catalog = plain_catalog(items, sold_in)
    events = build_event_log(
        [r[0] for r in rows],
        np.array([r[1] for r in rows], dtype=np.int32),
        np.array([KIND_CODES[r[2]] for r in rows], dtype=np.int8),
        np.array([r[3] for r in rows], dtype=np.int64),
        regions=[r[5] for r in rows],
        baskets=[r[4] for r in rows],
    )
    return Dataset("hand", catalog, events, LoadReport("hand"))


def baskets(user, region, items_per_basket, start=0):
    """One purchase basket per entry of ``items_per_basket``, an hour apart."""
    return [
        (user, item, PURCHASE, start + 3600 * b, f"{user}-{b}", region)
        for b, items in enumerate(items_per_basket)
        for item in items
    ]


def test_each_user_belongs_to_the_region_most_of_their_purchases_name():
    rows = [
        *baskets("a", "DE", [[0], [1], [2]]),
        ("a", 3, VIEW, 10, None, "FR"),  # views do not outvote purchases
        ("a", 3, VIEW, 11, None, "FR"),
        ("a", 3, VIEW, 12, None, "FR"),
        *baskets("b", "FR", [[0]]),
        ("b", 1, PURCHASE, 20_000, "b-x", "GB"),  # a tie (one purchase each): the lower region code
        ("c", 4, VIEW, 5, None, "GB"),  # no purchase: the region its events name
        ("d", 4, VIEW, 5, None, None),  # no region at all
    ]
    dataset = shop(rows)
    names = dataset.events.regions
    got = {dataset.events.users[u]: names[r] if r >= 0 else None for u, r in enumerate(user_regions(dataset))}
    assert got == {"a": "DE", "b": min(["FR", "GB"], key=names.index), "c": "GB", "d": None}


def test_a_held_out_basket_does_not_place_its_customer():
    # Two training baskets in FR, then validation and test baskets bought from DE (three lines).
    dataset = shop(baskets("u", "FR", [[0], [1]]) + baskets("u", "DE", [[2, 3], [4]], start=10 * 3600))
    split = split_dataset(dataset)
    region = dataset.events.regions[user_regions(dataset, split.cutoff)[0]]
    assert region == "FR" and dataset.events.regions[user_regions(dataset)[0]] == "DE"


def test_regions_sold_in_lists_and_popularity_per_region_count_training_baskets_only(monkeypatch):
    monkeypatch.setattr("training.regions.MIN_OWN_LINES", 3)
    monkeypatch.setattr("training.regions.MIN_OWN_CUSTOMERS", 2)
    # DE's customer buys item 2 in training, then item 4 in the held-out validation and test baskets; FR's two
    # customers buy item 1 (and 3); GB only sells (a catalog region without sales).
    rows = [
        *baskets("de", "DE", [[2], [2, 0], [4], [4]]),
        *baskets("fr1", "FR", [[1]]),
        *baskets("fr2", "FR", [[1, 3]]),
    ]
    dataset = shop(rows, sold_in=[(), ("DE",), ("DE", "GB"), (), ("FR",)])
    split = split_dataset(dataset)
    data = regional_data(dataset, split)
    assert data.regions == ["DE", "FR", "GB"]
    assert data.sold_everywhere.tolist() == [True, False, False, True, False]
    assert data.sold_in.tolist() == [
        [True, True, True],
        [True, False, False],
        [True, False, True],
        [True, True, True],
        [False, True, False],
    ]
    assert data.lines == {"DE": 3, "FR": 3, "GB": 0} and data.customers == {"DE": 1, "FR": 2, "GB": 0}
    # FR has lines from enough customers: ranked by its own sales. DE's lines are one customer's, GB has none:
    # their rows are the shop's, exactly.
    assert data.popularity_regions == ["FR"]
    shop_row = split.popularity()
    de, fr, gb = data.region_popularity
    assert de.tolist() == gb.tolist() == shop_row.tolist()
    weight = 3 / (3 + PRIOR_LINES)
    own = np.array([0, 2, 0, 1, 0]) / 3
    assert fr == pytest.approx(shop_row.sum() * (weight * own + (1 - weight) * shop_row / shop_row.sum()))
    assert fr.sum() == pytest.approx(shop_row.sum())  # the shop's scale: the cold-start blend keeps its balance
    assert data.index_args()["popularity_regions"] == ["FR"]


def test_a_small_regions_list_is_the_shops_and_a_large_ones_its_own(monkeypatch):
    """A region's few purchases do not reorder its list (nor show a few customers' purchases to the region);
    a region with plenty leads with what it bought."""
    monkeypatch.setattr("training.regions.MIN_OWN_LINES", 20)
    monkeypatch.setattr("training.regions.MIN_OWN_CUSTOMERS", 20)
    monkeypatch.setattr("training.regions.PRIOR_LINES", 5.0)
    # The shop (GB): 30 customers buy item 0, 20 item 1. LT: one customer bought item 4 twice (two lines, and
    # with the thresholds above 20 lines would still be one customer's). DE: 25 customers bought item 3.
    rows = []
    for i in range(50):
        rows += baskets(f"gb{i}", "GB", [[0] if i < 30 else [1]])
    rows += baskets("lt", "LT", [[4], [4]])
    for i in range(25):
        rows += baskets(f"de{i}", "DE", [[3]])
    dataset = shop(rows)
    data = regional_data(dataset, split := split_dataset(dataset))
    assert data.popularity_regions == ["DE", "GB"]
    lt = data.region_popularity[data.regions.index("LT")]
    assert lt.tolist() == split.popularity().tolist() and int(np.argmax(lt)) == 0
    assert int(np.argmax(data.region_popularity[data.regions.index("DE")])) == 3


def test_a_shop_without_regions_writes_none():
    dataset = shop([*baskets("u", None, [[0], [1]])])
    data = regional_data(dataset, split_dataset(dataset))
    assert data.regions == [] and data.sold_in.shape == (5, 0) and data.popularity_regions == []
    assert data.sold_everywhere.all() and data.region_popularity.shape == (0, 5)
