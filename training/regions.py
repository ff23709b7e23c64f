"""What a training run writes of regions into the retrieval index: the regions the shop's data names, where each
item is sold, and each region's own popular items.

- **Regions**: every region of the events (a purchase's, a view's) and of the catalog's sold-in lists, sorted.
  A region no build has seen is still served (the items sold everywhere, the shop's popular list: see
  ``services.retrieval.regions``).
- **Sold in**: the catalog's lists; an empty list is "sold everywhere", a region new since the index included.
- **Popular per region**: the training baskets' lines (each item counted once per basket, as the shop's
  popularity counts them) of the customers whose purchases were mostly made in the region (their training
  events'). A region with at least ``MIN_OWN_LINES`` such lines from at least ``MIN_OWN_CUSTOMERS`` customers is
  **ranked by its own sales** (the only regions an answer calls "Popular in <region>"): its row mixes its own
  shares with the shop's, weight ``lines / (lines + PRIOR_LINES)`` on its own, on the shop's scale (the shop's
  row's total), so that the cold-start source's blend with trending keeps its balance. Any other region's row is
  the shop's: a handful of customers' purchases are neither a region's taste nor theirs to show to everyone else
  there.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.schema import KIND_CODES, PURCHASE, Dataset
from training.data.splits import Split

#: Training basket lines a region needs before its popular list is its own.
MIN_OWN_LINES = 500
#: Customers whose lines those must be: fewer, and the list would show a few people's purchases.
MIN_OWN_CUSTOMERS = 20
#: How many basket lines' worth of the shop's shares a region's own shares are mixed with.
PRIOR_LINES = 500.0


@dataclass(frozen=True)
class RegionalData:
    regions: list[str]
    sold_in: np.ndarray  # bool [items, regions]
    sold_everywhere: np.ndarray  # bool [items]
    region_popularity: np.ndarray  # float64 [regions, items]
    #: The regions whose popular list is ranked by their own sales (MIN_OWN_LINES from MIN_OWN_CUSTOMERS).
    popularity_regions: list[str]
    #: Training basket lines and customers per region (what the thresholds are compared with), for the record.
    lines: dict[str, int]
    customers: dict[str, int]

    def index_args(self) -> dict:
        """The keywords of ``services.retrieval.index.save_index`` that carry it."""
        return {
            "regions": self.regions,
            "sold_in": self.sold_in,
            "sold_everywhere": self.sold_everywhere,
            "region_popularity": self.region_popularity,
            "popularity_regions": self.popularity_regions,
        }

    def summary(self) -> dict:
        return {
            "regions": len(self.regions),
            "ranked_by_own_sales": self.popularity_regions,
            "sold_everywhere": int(self.sold_everywhere.sum()),
            "training_lines": self.lines,
            "training_customers": self.customers,
        }


def user_regions(dataset: Dataset, cutoff: np.ndarray | None = None) -> np.ndarray:
    """Each user's region code (into ``dataset.events.regions``): the one most of their purchases name, else the
    one most of their events name; -1 when none names one. Ties go to the lower code. With ``cutoff`` (per user,
    as :attr:`Split.cutoff`), only the events before it count: a held-out basket does not place its customer."""
    events = dataset.events
    users, regions = len(events.users), len(events.regions)
    result = np.full(users, -1, dtype=np.int64)
    if not regions or not users:
        return result
    known = events.region >= 0
    if cutoff is not None:
        known &= events.timestamp < cutoff[events.user]
    for rows in (known, known & (events.kind == KIND_CODES[PURCHASE])):  # purchases last: they win
        # (user, region) pairs counted sparsely: a shop of millions of users and dozens of regions stays small.
        pairs, counts = np.unique(
            events.user[rows].astype(np.int64) * regions + events.region[rows], return_counts=True
        )
        pair_users, pair_regions = pairs // regions, pairs % regions
        # Per user, the pair with the most events (the lowest region on a tie): sorted by user, count down, region.
        order = np.lexsort((pair_regions, -counts, pair_users))
        first = order[np.r_[True, pair_users[order][1:] != pair_users[order][:-1]]] if order.size else order
        result[pair_users[first]] = pair_regions[first]
    return result


def regional_data(dataset: Dataset, split: Split) -> RegionalData:
    """The index's regional data from the shop's events and catalog, counted over the training part of ``split``
    only (no held-out basket)."""
    catalog = dataset.catalog
    regions = sorted(set(dataset.events.regions) | {r for item in catalog.regions for r in item})
    column = {region: j for j, region in enumerate(regions)}
    count = len(catalog)
    sold_everywhere = np.array([not item for item in catalog.regions], dtype=bool)
    sold_in = np.zeros((count, len(regions)), dtype=bool)
    sold_in[sold_everywhere] = True
    for row, item in enumerate(catalog.regions):
        sold_in[row, [column[r] for r in item]] = True
    # Each user's region, as a column of this data (the events' codes are their own list's).
    codes = user_regions(dataset, split.cutoff)
    event_columns = np.array([column[r] for r in dataset.events.regions] + [-1], dtype=np.int64)
    user_column = event_columns[codes]  # -1 stays -1 (the appended entry)
    counts = np.zeros((len(regions), count), dtype=np.float64)
    customers = np.zeros(len(regions), dtype=np.int64)
    for user in split.train:
        region = user_column[user.user]
        if region >= 0 and user.baskets:
            np.add.at(counts[region], user.flat(), 1.0)
            customers[region] += 1
    shop = split.popularity()
    total = shop.sum()
    shares = shop / total if total > 0 else np.zeros(count)
    lines = {region: int(counts[j].sum()) for j, region in enumerate(regions)}
    own = [
        j
        for j, region in enumerate(regions)
        if lines[region] >= MIN_OWN_LINES and customers[j] >= MIN_OWN_CUSTOMERS and total > 0
    ]
    region_popularity = np.tile(shop, (len(regions), 1))
    for j in own:
        weight = lines[regions[j]] / (lines[regions[j]] + PRIOR_LINES)
        region_popularity[j] = total * (weight * counts[j] / lines[regions[j]] + (1.0 - weight) * shares)
    return RegionalData(
        regions=regions,
        sold_in=sold_in,
        sold_everywhere=sold_everywhere,
        region_popularity=region_popularity,
        popularity_regions=[regions[j] for j in own],
        lines=lines,
        customers={region: int(customers[j]) for j, region in enumerate(regions)},
    )
