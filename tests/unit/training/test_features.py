"""Recent sales as of a moment (the ranker's ``log_trending`` feature and the trending candidates): counted from
training baskets of the days before, never the moment's own day, and given to each training example as the
snapshot of its own day would have served it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.ranking.features import (
    STATIC_FEATURES,
    TRENDING_COLUMN,
    ItemFeatureSnapshot,
    candidate_features,
)
from training.features import DAY_S, RATE_BASKETS, RecentSales, history_tokens, ranker_inputs
from training.models.sequence_ranker import SequenceRanker

# Baskets (day, items): item 0 sells early, item 2 late, item 1 throughout.
BASKETS = [(0, [0, 1]), (1, [0]), (3, [1]), (9, [2, 1]), (10, [2]), (10, [2, 0])]


def recent(days: int = 3) -> RecentSales:
    times = np.array([d * DAY_S + 3600 for d, _ in BASKETS])
    return RecentSales(4, times, [np.array(items) for _, items in BASKETS], days)


def test_recent_sales_count_the_days_before_the_moment_never_its_own_day():
    sales = recent(days=3)
    # Day 4 (any time of it): days 1, 2, 3 count -> item 0 once, item 1 once.
    assert sales.at(4 * DAY_S + 50_000).tolist() == [1, 1, 0, 0]
    # Day 10: days 7, 8, 9 -> the basket of day 9 only; day 10's own baskets are not yet "recent".
    assert sales.at(10 * DAY_S).tolist() == [0, 1, 1, 0]
    # Before any data, and long after it: nothing.
    assert sales.at(0).sum() == 0 and sales.at(40 * DAY_S).sum() == 0
    # What an export right after the data serves: days 8, 9, 10.
    assert sales.latest().tolist() == [1, 1, 3, 0]
    assert sales.latest_moment() == 11 * DAY_S


def test_recent_sales_rates_do_not_depend_on_how_many_baskets_are_seen():
    sales = recent(days=3)
    # Days 8-10 hold 3 baskets: item 2 is in all of them, items 0 and 1 in one each.
    assert np.allclose(sales.rate_at(11 * DAY_S), np.array([1, 1, 3, 0]) * RATE_BASKETS / 3)
    assert sales.rate_at(40 * DAY_S).sum() == 0  # an empty window: no sales, no division by zero
    # The same shop seen twice over (every basket doubled): counts double, rates stay.
    doubled = RecentSales(
        4,
        np.array([d * DAY_S for d, _ in BASKETS * 2]),
        [np.array(items) for _, items in BASKETS * 2],
        days=3,
    )
    assert np.allclose(doubled.latest(), 2 * sales.latest())
    assert np.allclose(doubled.rate_at(11 * DAY_S), sales.rate_at(11 * DAY_S))


def test_sales_to_date_count_every_day_before_the_moment_never_its_own_day():
    sales = recent(days=3)  # the window does not matter: every earlier day counts
    moments = [10 * DAY_S + 50_000, 4 * DAY_S, 0, 10 * DAY_S, 40 * DAY_S]
    counts, rows = sales.to_date(moments)
    assert len(counts) == 4  # one row per distinct day
    assert [counts[r].tolist() for r in rows] == [
        [2, 3, 1, 0],  # days 0-9; day 10's own baskets are not counted
        [2, 2, 0, 0],  # days 0-3
        [0, 0, 0, 0],  # nothing before the first day
        [2, 3, 1, 0],
        [3, 3, 3, 0],  # long after the data: every basket
    ]
    empty, rows = sales.to_date([])
    assert empty.shape == (0, 4) and rows.shape == (0,)


def test_a_recent_window_shorter_than_a_day_is_refused():
    with pytest.raises(ValueError, match="at least 1 day"):
        recent(days=0)


def snapshot(items: int = 4) -> ItemFeatureSnapshot:
    return ItemFeatureSnapshot.from_catalog(
        prices=np.arange(1.0, items + 1),
        margins=np.full(items, 0.3),
        popularity=np.arange(items) * 10,
        return_rates=np.zeros(items),
        in_stock=np.ones(items),
        trending=np.array([5, 0, 0, 1]),
    )


def test_with_trending_replaces_only_the_recent_sales_column():
    base = snapshot()
    dated = base.with_trending(np.array([0, 2, 7, 0]))
    assert np.allclose(dated.values[1:, TRENDING_COLUMN], np.log1p([0, 2, 7, 0]))
    others = [c for c in range(len(STATIC_FEATURES)) if c != TRENDING_COLUMN]
    assert np.array_equal(dated.values[:, others], base.values[:, others])
    assert dated.values[0, TRENDING_COLUMN] == base.values[0, TRENDING_COLUMN] == 0.0  # unknown items: none
    assert np.allclose(base.values[1:, TRENDING_COLUMN], np.log1p([5, 0, 0, 1]))  # the original is untouched
    with pytest.raises(ValueError, match="one count per item"):
        base.with_trending(np.zeros(3))


def test_each_example_reads_the_snapshot_of_its_own_day():
    sales, base = recent(days=3), snapshot()
    histories = [np.array([0, 1]), np.array([1]), np.array([2])]
    times = [4 * DAY_S, 10 * DAY_S + 7, 4 * DAY_S + 99]
    candidates = np.array([[0, 1, 2, -1], [2, 1, 0, 3], [1, 2, -1, -1]])
    _, tokens, features = ranker_inputs(base, histories, candidates, 6, sales, times)
    history = history_tokens(histories, 6)
    for row, when in enumerate(times):
        dated = base.with_trending(sales.rate_at(when))
        want = candidate_features(dated, history[row : row + 1], tokens[row : row + 1])[0]
        assert np.array_equal(features[row], want)
    # Day 10 sees item 2 in the one basket of days 7-9; day 4 does not.
    assert features[1, 0, TRENDING_COLUMN] == pytest.approx(np.log1p(RATE_BASKETS))
    assert features[0, 2, TRENDING_COLUMN] == 0.0
    # Without recent sales every row reads the snapshot as serving does.
    _, _, served = ranker_inputs(base, histories, candidates, 6)
    assert np.array_equal(served, candidate_features(base, history, tokens))
    with pytest.raises(ValueError, match="one time per history"):
        ranker_inputs(base, histories, candidates, 6, sales, times[:2])


def test_a_feature_that_never_varied_in_training_cannot_move_the_scores():
    torch.manual_seed(0)
    mean, std = np.zeros(3), np.array([1.0, 0.0, 2.0])  # feature 1 was constant in training
    model = SequenceRanker(10, num_features=3, dim=8, history_length=4, layers=1, feature_mean=mean, feature_std=std)
    model.eval()
    history = torch.tensor([[0, 1, 2, 3]])
    candidates = torch.tensor([[4, 5]])
    features = torch.zeros(1, 2, 3)
    moved = features.clone()
    moved[..., 1] = 8.0  # serving sends a value training never saw
    with torch.no_grad():
        assert torch.equal(model(history, candidates, features)[0], model(history, candidates, moved)[0])
        moved[..., 0] = 8.0  # a feature that did vary still counts
        assert not torch.equal(model(history, candidates, features)[0], model(history, candidates, moved)[0])
