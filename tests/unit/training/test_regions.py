"""The regional data a training run writes into the index: regions, where items are sold, popular per region."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.schema import KIND_CODES, PURCHASE, VIEW, Dataset, ItemCatalog, LoadReport, build_event_log
from training.data.splits import split_dataset
from training.regions import PRIOR_LINES, regional_data, user_regions


def shop(rows, sold_in=None, items: int = 5) -> Dataset:
    """rows: (user, item row, kind, time, basket, region)."""
    catalog = ItemCatalog(
        item_ids=[f"i{n}" for n in range(items)],
        titles=[f"item {n}" for n in range(items)],
        categories=["c"] * items,
        brands=["b"] * items,
        prices=np.ones(items),
        margins=np.full(items, 0.3),
        stock=np.ones(items, dtype=np.int64),
        regions=sold_in or [()] * items,
    )
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
        ("c", 4, VIEW, 5, None, "GB"),  # no purchase: the region its events name
        ("d", 4, VIEW, 5, None, None),  # no region at all
    ]
    dataset = shop(rows)
    names = dataset.events.regions
    got = {dataset.events.users[u]: names[r] if r >= 0 else None for u, r in enumerate(user_regions(dataset))}
    assert got == {"a": "DE", "b": "FR", "c": "GB", "d": None}


def test_regions_sold_in_lists_and_popularity_per_region_count_training_baskets_only(monkeypatch):
    monkeypatch.setattr("training.regions.MIN_OWN_LINES", 3)
    # DE's customer buys item 2 in training, then item 4 in the held-out validation and test baskets; FR's buys
    # item 1 twice (two customers); GB only sells (a catalog region without sales).
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
    assert data.lines == {"DE": 3, "FR": 3, "GB": 0}
    # Regions with enough lines of their own are the ones called so; GB's list is the shop's.
    assert data.popularity_regions == ["DE", "FR"]
    shop_shares = split.popularity() / split.popularity().sum()
    de, fr, gb = data.region_popularity
    assert de[4] == pytest.approx(PRIOR_LINES * shop_shares[4]) == 0  # held out: never counted
    assert de[2] == pytest.approx(2 + PRIOR_LINES * shop_shares[2])
    assert np.argmax(fr) == 1 and fr[1] == pytest.approx(2 + PRIOR_LINES * shop_shares[1])
    assert gb == pytest.approx(PRIOR_LINES * shop_shares)
    assert data.index_args()["popularity_regions"] == ["DE", "FR"]


def test_a_shop_without_regions_writes_none():
    dataset = shop([*baskets("u", None, [[0], [1]])])
    data = regional_data(dataset, split_dataset(dataset))
    assert data.regions == [] and data.sold_in.shape == (5, 0) and data.popularity_regions == []
    assert data.sold_everywhere.all() and data.region_popularity.shape == (0, 5)
