"""What a training run writes of regions into the retrieval index: the regions the shop's data names, where each
item is sold, and each region's own popular items.

- **Regions**: every region of the events (a purchase's, a view's) and of the catalog's sold-in lists, sorted.
  A region no build has seen is still served (the items sold everywhere, the shop's popular list: see
  ``services.retrieval.regions``).
- **Sold in**: the catalog's lists; an empty list is "sold everywhere", a region new since the index included.
- **Popular per region**: the training baskets' lines (each item counted once per basket, as the shop's
  popularity counts them) of the customers whose purchases were mostly made in the region, smoothed towards the
  shop's shares by ``PRIOR_LINES``: a region with few sales of its own is ranked mostly by the shop's, and an item
  it bought breaks the shop's order.
- **Ranked by their own sales**: the regions with at least ``MIN_OWN_LINES`` such lines (the only ones an answer
  calls "Popular in <region>").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.data.schema import KIND_CODES, PURCHASE, Dataset
from training.data.splits import Split

#: Training basket lines a region needs before its popular list is called its own.
MIN_OWN_LINES = 500
#: How many basket lines' worth of the shop's shares each region's counts are smoothed towards.
PRIOR_LINES = 100.0


@dataclass(frozen=True)
class RegionalData:
    regions: list[str]
    sold_in: np.ndarray  # bool [items, regions]
    sold_everywhere: np.ndarray  # bool [items]
    region_popularity: np.ndarray  # float64 [regions, items]
    #: The regions whose popular list is ranked by their own sales (at least MIN_OWN_LINES of them).
    popularity_regions: list[str]
    #: Training basket lines per region (what MIN_OWN_LINES is compared with), for the run's record.
    lines: dict[str, int]

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
        }


def user_regions(dataset: Dataset) -> np.ndarray:
    """Each user's region code (into ``dataset.events.regions``): the one most of their purchases name, else the
    one most of their events name; -1 when none names one. Ties go to the lower code."""
    events = dataset.events
    users, regions = len(events.users), len(events.regions)
    result = np.full(users, -1, dtype=np.int64)
    if not regions or not users:
        return result
    known = events.region >= 0
    for rows in (known, known & (events.kind == KIND_CODES[PURCHASE])):  # purchases last: they win
        counts = np.zeros((users, regions), dtype=np.int64)
        np.add.at(counts, (events.user[rows], events.region[rows]), 1)
        seen = counts.any(axis=1)
        result[seen] = counts[seen].argmax(axis=1)
    return result


def regional_data(dataset: Dataset, split: Split) -> RegionalData:
    """The index's regional data from the shop's events and catalog, counted over the training part of ``split``
    only (no held-out basket)."""
    catalog = dataset.catalog
    regions = sorted(set(dataset.events.regions) | {r for item in catalog.regions for r in item})
    column = {region: j for j, region in enumerate(regions)}
    count = len(catalog)
    sold_everywhere = np.array([not item for item in catalog.regions], dtype=bool).reshape(count)
    sold_in = np.zeros((count, len(regions)), dtype=bool)
    sold_in[sold_everywhere] = True
    for row, item in enumerate(catalog.regions):
        sold_in[row, [column[r] for r in item]] = True
    # Each user's region, as a column of this data (the events' codes are their own list's).
    codes = user_regions(dataset)
    event_columns = np.array([column[r] for r in dataset.events.regions] + [-1], dtype=np.int64)
    user_column = event_columns[codes]  # -1 stays -1 (the appended entry)
    counts = np.zeros((len(regions), count), dtype=np.float64)
    for user in split.train:
        region = user_column[user.user]
        if region >= 0 and user.baskets:
            np.add.at(counts[region], user.flat(), 1.0)
    shop = split.popularity()
    shares = shop / shop.sum() if shop.sum() > 0 else np.zeros(count)
    lines = {region: int(counts[j].sum()) for j, region in enumerate(regions)}
    return RegionalData(
        regions=regions,
        sold_in=sold_in,
        sold_everywhere=sold_everywhere,
        region_popularity=counts + PRIOR_LINES * shares,
        popularity_regions=[region for region in regions if lines[region] >= MIN_OWN_LINES],
        lines=lines,
    )
