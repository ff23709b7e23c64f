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
from training.data.schema import ItemCatalog
from training.data.splits import Split

HISTORY_LENGTH = 50  # the two-tower's query window
#: The sequence ranker's history window (``history_item_ids`` in its config.pbtxt): the repeat features count
#: over all of it (about ten Online Retail baskets), the ranker's attention reads the newest ``HISTORY_LENGTH``.
RANKER_HISTORY_LENGTH = 200
#: The recent-sales window (the ``log_trending`` feature, the index's ``trending`` column), in whole days.
TRENDING_DAYS = 14
DAY_S = 86_400


class RecentSales:
    """Training baskets holding each item, by day: :meth:`at` counts those bought in the ``days`` whole days
    before a moment's day (never the moment's own day, so an example never sees its own basket)."""

    def __init__(self, num_items: int, times: np.ndarray, baskets: Sequence[np.ndarray], days: int = TRENDING_DAYS):
        if days < 1:
            raise ValueError(f"the recent-sales window must be at least 1 day, got {days}")
        sizes = np.fromiter((len(b) for b in baskets), dtype=np.int64, count=len(baskets))
        day = np.repeat(np.asarray(times, dtype=np.int64) // DAY_S, sizes)
        items = np.concatenate(baskets).astype(np.int64) if len(baskets) else np.zeros(0, dtype=np.int64)
        order = np.argsort(day, kind="stable")
        self.num_items, self.days = num_items, days
        self._day, self._items = day[order], items[order]

    @classmethod
    def from_split(cls, split: Split, days: int = TRENDING_DAYS) -> RecentSales:
        times = np.concatenate([u.times for u in split.train]) if split.train else np.zeros(0, dtype=np.int64)
        return cls(split.num_items, times, [b for u in split.train for b in u.baskets], days)

    def at(self, moment: int) -> np.ndarray:
        """float64 [num_items]: baskets bought on the ``days`` days before ``moment``'s day."""
        day = int(moment) // DAY_S
        low, high = np.searchsorted(self._day, [day - self.days, day])
        return np.bincount(self._items[low:high], minlength=self.num_items).astype(np.float64)

    def latest(self) -> np.ndarray:
        """What an export made right after the training data serves: the ``days`` days up to its newest basket."""
        newest = int(self._day[-1]) if self._day.size else 0
        return self.at((newest + 1) * DAY_S)


def item_snapshot(catalog: ItemCatalog, split: Split, trending_days: int = TRENDING_DAYS) -> ItemFeatureSnapshot:
    """Rows follow the vocabulary (catalog order): price and margin from the catalog, popularity, return rate and
    the latest recent sales from training data, in-stock from the catalog: the snapshot an export serves."""
    return ItemFeatureSnapshot.from_catalog(
        prices=catalog.prices,
        margins=catalog.margins,
        popularity=split.popularity(),
        return_rates=split.return_rates(),
        in_stock=catalog.stock,
        trending=RecentSales.from_split(split, trending_days).latest(),
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
    (``snapshot.with_trending(recent.at(time))``); without, every row reads ``snapshot`` as serving does.
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
        dated = snapshot.with_trending(recent.at(int(day) * DAY_S))
        features[rows] = candidate_features(dated, history[rows], tokens[rows])
    return history, tokens, features
