"""The ranker's inputs, built only with the ranking service's own functions (``services.ranking.features``).

Training, offline evaluation and serving all go through :func:`encode_history` and :func:`candidate_features`
with the same :class:`ItemFeatureSnapshot` (exported as ``item_features.npz``), so the features cannot drift.
The snapshot's behavioural columns (popularity, return rate, recent sales) come from the training split only.

Recent sales (:class:`RecentSales`) are the one column that depends on *when*: serving reads them from the
snapshot, as of the day it was exported; training and offline evaluation give every example the snapshot of its
own day (``ItemFeatureSnapshot.with_trending``), built from training baskets bought before that day, so the
ranker learns what recent sales mean at the moment it is asked, not what a year-end snapshot says about March.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.ranking.features import CANDIDATE_FEATURES, ItemFeatureSnapshot, candidate_features, encode_history
from training.data.schema import ITEM, Dataset, ItemCatalog
from training.data.splits import Split, UserBaskets, purchase_baskets

HISTORY_LENGTH = 50  # the two-tower's query window
#: The sequence ranker's history window (``history_item_ids`` in its config.pbtxt): the repeat features count
#: over all of it (about ten Online Retail baskets), the ranker's attention reads the newest ``HISTORY_LENGTH``.
RANKER_HISTORY_LENGTH = 200
#: The recent-sales window (the ``log_trending`` feature, the index's ``trending`` column), in whole days.
TRENDING_DAYS = 7
DAY_S = 86_400


#: Recent sales enter the ranker as a rate, baskets holding the item per this many baskets of the window, so the
#: feature means the same whatever share of the shop's baskets the counts see (training data holds out every
#: customer's last baskets, which crowd the final weeks; serving and ``aisle refresh-features`` see them all).
RATE_BASKETS = 10_000


class RecentSales:
    """Baskets holding each item, by day: :meth:`at` counts those bought in the ``days`` whole days before a
    moment's day (never the moment's own day, so an example never sees its own basket), :meth:`rate_at` gives
    them per :data:`RATE_BASKETS` baskets of that window (the ranker's ``log_trending``), :meth:`to_date` counts every
    day before (popularity as of the moment, for the offline evaluation's popularity baseline, fills and popular
    source)."""

    def __init__(
        self,
        num_items: int,
        times: np.ndarray,
        baskets: Sequence[np.ndarray],
        days: int = TRENDING_DAYS,
        dated: bool = True,
    ):
        """``dated`` False: the times are no clock shared across users (a sequences file's positions), so every
        moment sees every basket: :meth:`at` and :meth:`to_date` count them all. As of a day, they would count
        nothing (every event of such data falls on day 0): the popularity baseline and every fill would rank the
        catalog by row, and a training example's trending feature would read 0 where serving reads the shop's sales.
        (A training example's own basket is then among the counts; the evaluation's held-out cases are not.)"""
        if days < 1:
            raise ValueError(f"the recent-sales window must be at least 1 day, got {days}")
        sizes = np.fromiter((len(b) for b in baskets), dtype=np.int64, count=len(baskets))
        basket_day = np.asarray(times, dtype=np.int64) // DAY_S
        day = np.repeat(basket_day, sizes)
        items = np.concatenate(baskets).astype(np.int64) if len(baskets) else np.zeros(0, dtype=np.int64)
        order = np.argsort(day, kind="stable")
        self.num_items, self.days, self.dated = num_items, days, dated
        self._day, self._items = day[order], items[order]
        self._basket_day = np.sort(basket_day)

    @classmethod
    def from_users(
        cls, num_items: int, users: Sequence[UserBaskets], days: int = TRENDING_DAYS, dated: bool = True
    ) -> RecentSales:
        times = np.concatenate([u.times for u in users]) if users else np.zeros(0, dtype=np.int64)
        return cls(num_items, times, [b for u in users for b in u.baskets], days, dated)

    @classmethod
    def from_split(cls, split: Split, days: int = TRENDING_DAYS) -> RecentSales:
        """From training baskets only: what training examples and the offline evaluation may see."""
        return cls.from_users(split.num_items, split.train, days, split.dated)

    def at(self, moment: int) -> np.ndarray:
        """float64 [num_items]: baskets bought on the ``days`` days before ``moment``'s day."""
        low, high = np.searchsorted(self._day, self._window(moment)) if self.dated else (0, self._items.size)
        return np.bincount(self._items[low:high], minlength=self.num_items).astype(np.float64)

    def to_date(self, moments: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Popularity as of each moment: baskets holding each item bought on any day before the moment's day (never
        that day, as :meth:`at`), as a snapshot refreshed daily would hold it. Returns (counts float64 [distinct
        days, num_items], rows int64 [len(moments)]): moment i's counts are ``counts[rows[i]]``."""
        days = np.asarray(moments, dtype=np.int64).reshape(-1) // DAY_S
        if not self.dated:
            every = np.bincount(self._items, minlength=self.num_items).astype(np.float64)[None, :]
            return every, np.zeros(days.size, dtype=np.int64)
        unique, rows = np.unique(days, return_inverse=True)
        ends = np.searchsorted(self._day, unique)  # entries of the days before each distinct day
        counts = np.zeros((len(unique), self.num_items), dtype=np.float64)
        running = np.zeros(self.num_items, dtype=np.float64)
        start = 0
        for row, end in enumerate(ends):
            running += np.bincount(self._items[start:end], minlength=self.num_items)
            counts[row] = running
            start = end
        return counts, rows.astype(np.int64)

    def rate_at(self, moment: int) -> np.ndarray:
        """float64 [num_items]: :meth:`at` per :data:`RATE_BASKETS` baskets bought in the same days (0 when none)."""
        low, high = (
            np.searchsorted(self._basket_day, self._window(moment)) if self.dated else (0, self._basket_day.size)
        )
        return self.at(moment) * (RATE_BASKETS / max(int(high - low), 1))

    def latest_moment(self) -> int:
        """The moment an export made right after this data serves: the day after its newest basket."""
        newest = int(self._day[-1]) if self._day.size else 0
        return (newest + 1) * DAY_S

    def latest(self) -> np.ndarray:
        """:meth:`at` the :meth:`latest_moment`: the ``days`` days up to the newest basket."""
        return self.at(self.latest_moment())

    def _window(self, moment: int) -> list[int]:
        day = int(moment) // DAY_S
        return [day - self.days, day]


def export_sales(dataset: Dataset, days: int = TRENDING_DAYS) -> RecentSales:
    """Every purchase basket of the data, held-out ones included: what an export serves from the next day on (the
    index's ``trending`` column, the exported snapshot's ``log_trending``). Training and the offline evaluation
    never read it; they see :meth:`RecentSales.from_split` as of each example's day."""
    return RecentSales.from_users(len(dataset.catalog), purchase_baskets(dataset), days, dataset.granularity != ITEM)


def item_snapshot(
    catalog: ItemCatalog, split: Split, trending_days: int = TRENDING_DAYS, recent: RecentSales | None = None
) -> ItemFeatureSnapshot:
    """Rows follow the vocabulary (catalog order): price and margin from the catalog, popularity and return rate
    from training data, in-stock from the catalog, and the recent-sales rate as of the day after the newest basket
    ``recent`` holds (default: the training baskets'; an export passes every basket of its data)."""
    recent = recent or RecentSales.from_split(split, trending_days)
    return ItemFeatureSnapshot.from_catalog(
        prices=catalog.prices,
        margins=catalog.margins,
        popularity=split.popularity(),
        return_rates=split.return_rates(),
        in_stock=catalog.stock,
        trending=recent.rate_at(recent.latest_moment()),
    )


def history_tokens(histories: Sequence[np.ndarray], length: int = HISTORY_LENGTH) -> np.ndarray:
    """[B, length] tokens from catalog rows (oldest first), exactly as the ranking service encodes a request."""
    if not len(histories):
        return np.zeros((0, length), dtype=np.int64)
    return np.stack([encode_history(np.asarray(h, dtype=np.int64) + 1, length) for h in histories])


def ranker_inputs(
    snapshot: ItemFeatureSnapshot,
    histories: Sequence[np.ndarray],
    candidates: np.ndarray,
    length: int = RANKER_HISTORY_LENGTH,
    recent: RecentSales | None = None,
    times: Sequence[int] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history tokens [B, L], candidate tokens [B, C], candidate features [B, C, F]) from catalog rows.

    ``candidates`` holds catalog rows, -1 for padding (token 0, which the snapshot maps to its default row). With
    ``recent`` and ``times`` (one per row), each row's features come from the snapshot of its own day
    (``snapshot.with_trending(recent.rate_at(time))``); without, every row reads ``snapshot`` as serving does.
    """
    history = history_tokens(histories, length)
    tokens = np.where(candidates >= 0, candidates + 1, 0).astype(np.int64)
    if recent is None:
        return history, tokens, candidate_features(snapshot, history, tokens)
    if times is None or len(times) != len(histories):
        raise ValueError("ranker_inputs with recent sales needs one time per history")
    days = np.asarray(times, dtype=np.int64) // DAY_S
    features = np.zeros((*tokens.shape, len(CANDIDATE_FEATURES)), dtype=np.float32)
    for day in np.unique(days):
        rows = np.flatnonzero(days == day)
        dated = snapshot.with_trending(recent.rate_at(int(day) * DAY_S))
        features[rows] = candidate_features(dated, history[rows], tokens[rows])
    return history, tokens, features
