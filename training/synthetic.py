"""A seeded synthetic shop with known structure, for the embedded demo and for tests.

Structure the models should find: power-law item popularity; categories with brands and price levels; customers
who prefer a few categories; shopping sessions with one intent (a category) in which they view, add to cart and
buy; complementary categories (after buying from one, the next purchase is often from its complement); and
return-prone items. Nothing is random beyond the seed: the same arguments give the same shop.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EVENT_VIEW, EVENT_ADD_TO_CART, EVENT_PURCHASE, EVENT_RETURN = "view", "add_to_cart", "purchase", "return"
REGIONS = ("GB", "DE", "FR", "NL", "ES")
_NOUNS = ("mug", "lamp", "candle", "bag", "frame", "cushion", "clock", "bowl", "vase", "notebook", "tray", "jar")
_COLOURS = ("red", "blue", "green", "white", "black", "pink", "gold", "silver", "ivory", "teal")


@dataclass(frozen=True)
class Catalog:
    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    brands: list[str]
    prices: np.ndarray  # float64, shop currency
    margins: np.ndarray  # fraction of price
    stock: np.ndarray  # units in stock
    return_rates: np.ndarray  # probability a purchase is returned
    regions: list[tuple[str, ...]]  # where each item is sold

    def __len__(self) -> int:
        return len(self.item_ids)


@dataclass(frozen=True)
class Events:
    """Events in time order. Item columns hold catalog rows."""

    user: np.ndarray  # int32 row in users
    item: np.ndarray  # int32 row in the catalog
    kind: np.ndarray  # object: view / add_to_cart / purchase / return
    timestamp: np.ndarray  # int64 seconds
    quantity: np.ndarray  # int32
    #: Shopping session per event, numbered per user from 0 (a session's purchases form one basket).
    session: np.ndarray | None = None


@dataclass(frozen=True)
class SyntheticShop:
    catalog: Catalog
    user_ids: list[str]
    user_regions: list[str]
    events: Events

    def sequences(self, kinds: tuple[str, ...] = (EVENT_VIEW, EVENT_ADD_TO_CART, EVENT_PURCHASE)) -> list[np.ndarray]:
        """Per user, catalog rows of the chosen event kinds in time order."""
        keep = np.isin(self.events.kind, kinds)
        users, items = self.events.user[keep], self.events.item[keep]
        order = np.argsort(users, kind="stable")
        users, items = users[order], items[order]
        bounds = np.searchsorted(users, np.arange(len(self.user_ids) + 1))
        return [items[bounds[u] : bounds[u + 1]] for u in range(len(self.user_ids))]


def session_baskets(events: Events) -> list[np.ndarray]:
    """The distinct items each shopping session bought (one basket per session with a purchase), in time order."""
    if events.session is None:
        raise ValueError("these events carry no sessions")
    bought = events.kind == EVENT_PURCHASE
    users, sessions, items = events.user[bought], events.session[bought], events.item[bought]
    keys = users.astype(np.int64) * (int(sessions.max(initial=0)) + 1) + sessions
    order = np.argsort(keys, kind="stable")
    keys, items = keys[order], items[order]
    bounds = np.flatnonzero(np.diff(keys)) + 1
    return [np.unique(basket) for basket in np.split(items, bounds)] if items.size else []


#: Categories of a synthetic shop by default; it needs at least one item in each.
CATEGORIES = 20


def _cumulative(weights: np.ndarray) -> np.ndarray:
    """The distribution ``Generator.choice`` searches for weights ``p``: their running sum, scaled to end at 1."""
    cdf = weights.cumsum()
    cdf /= cdf[-1]
    return cdf


def _sold_in(regions: tuple[str, ...]) -> tuple[str, ...]:
    """An item sold in every region of the shop is sold everywhere (the catalog's empty list): a region the shop
    opens later sells it too."""
    return () if len(regions) == len(REGIONS) else regions


def generate_shop(
    n_users: int = 2000,
    n_items: int = 1000,
    n_categories: int = CATEGORIES,
    sessions_per_user: float = 6.0,
    seed: int = 0,
) -> SyntheticShop:
    if n_items < n_categories or n_categories < 2:
        raise ValueError("need at least 2 categories and one item per category")
    rng = np.random.default_rng(seed)
    category_of = np.sort(rng.integers(0, n_categories, size=n_items))
    category_of[:n_categories] = np.arange(n_categories)  # every category has an item
    complement = (np.arange(n_categories) + 1 + rng.integers(0, n_categories - 1, size=n_categories)) % n_categories
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.9
    popularity = popularity[rng.permutation(n_items)]
    price_level = rng.lognormal(2.0, 0.6, size=n_categories)
    prices = np.round(price_level[category_of] * rng.lognormal(0, 0.3, size=n_items), 2)
    brands_per_category = 4
    brand_of = category_of * brands_per_category + rng.integers(0, brands_per_category, size=n_items)
    catalog = Catalog(
        item_ids=[f"SKU{i:06d}" for i in range(n_items)],
        titles=[
            f"{_COLOURS[rng.integers(len(_COLOURS))]} {_NOUNS[c % len(_NOUNS)]} {i}" for i, c in enumerate(category_of)
        ],
        categories=[f"category-{c:02d}" for c in category_of],
        brands=[f"brand-{b:03d}" for b in brand_of],
        prices=prices,
        margins=np.round(rng.uniform(0.15, 0.55, size=n_items), 3),
        stock=rng.integers(0, 200, size=n_items) * (rng.random(n_items) > 0.05),
        return_rates=np.where(rng.random(n_items) < 0.1, rng.uniform(0.2, 0.5, n_items), rng.uniform(0, 0.05, n_items)),
        regions=[_sold_in(tuple(r for r in REGIONS if rng.random() < 0.8) or ("GB",)) for _ in range(n_items)],
    )
    members = [np.flatnonzero(category_of == c) for c in range(n_categories)]
    # Each category's cumulative popularity, so a view draws its item by one binary search: the draw
    # ``Generator.choice(members, p=weights)`` makes (same uniform number, same result), without building the
    # cumulative sum of the category again for every event, which took hours at a million items.
    cumulative = [_cumulative(popularity[m] / popularity[m].sum()) for m in members]

    user_regions = [REGIONS[i] for i in rng.choice(len(REGIONS), size=n_users, p=[0.6, 0.1, 0.1, 0.1, 0.1])]
    columns: dict[str, list] = {"user": [], "item": [], "kind": [], "timestamp": [], "quantity": [], "session": []}
    start = 1_700_000_000

    session = 0

    def emit(user: int, item: int, kind: str, when: int, quantity: int = 1) -> None:
        columns["session"].append(session)
        columns["user"].append(user)
        columns["item"].append(item)
        columns["kind"].append(kind)
        columns["timestamp"].append(when)
        columns["quantity"].append(quantity)

    for user in range(n_users):
        liked = rng.choice(n_categories, size=rng.integers(1, 4), replace=False)
        when = start + int(rng.integers(0, 30 * 86400))
        intent = int(rng.choice(liked))
        for session in range(max(1, rng.poisson(sessions_per_user))):  # noqa: B007 (read by emit)
            when += int(rng.exponential(5 * 86400))
            for _ in range(int(rng.integers(2, 8))):
                item = int(members[intent][cumulative[intent].searchsorted(rng.random(), side="right")])
                emit(user, item, EVENT_VIEW, when)
                when += int(rng.integers(10, 300))
                if rng.random() < 0.35:
                    quantity = int(rng.integers(1, 4))
                    emit(user, item, EVENT_ADD_TO_CART, when, quantity)
                    when += int(rng.integers(10, 300))
                    if rng.random() < 0.7:
                        emit(user, item, EVENT_PURCHASE, when, quantity)
                        if rng.random() < catalog.return_rates[item]:
                            emit(user, item, EVENT_RETURN, when + int(rng.integers(86400, 20 * 86400)), quantity)
            # The next session follows the complement of this intent, or another liked category.
            intent = int(complement[intent]) if rng.random() < 0.4 else int(rng.choice(liked))
    order = np.lexsort((np.arange(len(columns["timestamp"])), columns["timestamp"]))
    events = Events(
        user=np.asarray(columns["user"], dtype=np.int32)[order],
        item=np.asarray(columns["item"], dtype=np.int32)[order],
        kind=np.asarray(columns["kind"], dtype=object)[order],
        timestamp=np.asarray(columns["timestamp"], dtype=np.int64)[order],
        quantity=np.asarray(columns["quantity"], dtype=np.int32)[order],
        session=np.asarray(columns["session"], dtype=np.int32)[order],
    )
    return SyntheticShop(catalog, [f"user-{u:05d}" for u in range(n_users)], user_regions, events)
