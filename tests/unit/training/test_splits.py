"""Time-aware hold-out: last basket -> test, the one before -> validation, and nothing held out leaks into
training statistics."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.loaders import load_sequences, synthetic_dataset
from training.data.schema import KIND_CODES, PURCHASE, RETURN, Dataset, ItemCatalog, LoadReport, build_event_log
from training.data.splits import purchase_baskets, split_dataset
from training.evaluation.baselines import cooccurrence
from training.features import item_snapshot


def shop(rows: list[tuple[str, str, str, int, str]], items: int = 6) -> Dataset:
    """rows: (user, item row as text, kind, time, basket)."""
    catalog = ItemCatalog(
        item_ids=[f"i{n}" for n in range(items)],
        titles=[f"item {n}" for n in range(items)],
        categories=["c"] * items,
        brands=["b"] * items,
        prices=np.ones(items),
        margins=np.full(items, 0.3),
        stock=np.ones(items, dtype=np.int64),
        regions=[()] * items,
    )
    events = build_event_log(
        [r[0] for r in rows],
        np.array([int(r[1]) for r in rows], dtype=np.int32),
        np.array([KIND_CODES[r[2]] for r in rows], dtype=np.int8),
        np.array([r[3] for r in rows], dtype=np.int64),
        baskets=[r[4] for r in rows],
    )
    return Dataset("hand", catalog, events, LoadReport("hand"))


ROWS = [
    # u1: four baskets (o1..o4), a repeat of item 0, and a return before and one after the cutoff.
    ("u1", "0", PURCHASE, 100, "o1"),
    ("u1", "1", PURCHASE, 100, "o1"),
    ("u1", "1", PURCHASE, 100, "o1"),  # duplicate line in one basket counts once
    ("u1", "2", PURCHASE, 200, "o2"),
    ("u1", "1", RETURN, 250, "r1"),
    ("u1", "0", PURCHASE, 300, "o3"),
    ("u1", "3", PURCHASE, 300, "o3"),
    ("u1", "4", PURCHASE, 400, "o4"),
    ("u1", "0", PURCHASE, 400, "o4"),
    ("u1", "3", RETURN, 450, "r2"),
    # u2: two baskets only: training data, never held out.
    ("u2", "5", PURCHASE, 150, "p1"),
    ("u2", "4", PURCHASE, 500, "p2"),
]


def test_last_basket_is_test_and_the_one_before_validation():
    split = split_dataset(shop(ROWS))
    assert len(split.test) == len(split.validation) == 1
    test, validation = split.test[0], split.validation[0]
    assert test.target.tolist() == [4, 0] and test.time == 400
    assert test.history.tolist() == [0, 1, 2, 0, 3]  # every basket before the target, in time order
    assert validation.target.tolist() == [0, 3] and validation.history.tolist() == [0, 1, 2]
    assert [b.tolist() for b in split.train[0].baskets] == [[0, 1], [2]]
    assert [b.tolist() for b in split.train[1].baskets] == [[5], [4]]  # u2 contributes to training only


def test_nothing_held_out_reaches_training_statistics():
    dataset = shop(ROWS)
    split = split_dataset(dataset)
    # Popularity counts training baskets only: u1's o3/o4 are held out, u2's baskets are training.
    assert split.popularity().tolist() == [1, 1, 1, 0, 1, 1]
    # The return at 250 is before u1's cutoff (300) and counts; the one at 450 is after it and does not.
    assert split.train_returns[:, 1].tolist() == [1]
    assert split.cutoff[dataset.events.users.index("u1")] == 300
    for user in split.train:
        assert (user.times < split.cutoff[user.user]).all()
    # Co-occurrence sees 0 and 1 together (training basket o1) but never 0 and 3 (held-out basket o3).
    similarity = cooccurrence(split)
    assert similarity[0, 1] > 0 and similarity[0, 3] == 0
    snapshot = item_snapshot(dataset.catalog, split)
    assert snapshot.values[1 + 3, 2] == pytest.approx(0.0)  # log popularity of item 3: unseen in training


def test_baskets_without_ids_are_split_by_time_gaps():
    rows = [("u", "0", PURCHASE, 0, None), ("u", "1", PURCHASE, 60, None), ("u", "2", PURCHASE, 10_000, None)]
    baskets = purchase_baskets(shop(rows))
    assert [b.tolist() for b in baskets[0].baskets] == [[0, 1], [2]]


def test_sequences_hold_out_the_last_item(tmp_path):
    path = tmp_path / "seq.txt"
    path.write_text("u1 a b c d\nu2 a b\n", encoding="utf-8")
    split = split_dataset(load_sequences(path))
    rows = {"a": 0, "b": 1, "c": 2, "d": 3}
    assert [c.target.tolist() for c in split.test] == [[rows["d"]]]
    assert [c.target.tolist() for c in split.validation] == [[rows["c"]]]
    assert split.test[0].history.tolist() == [0, 1, 2]


def test_synthetic_split_is_leakage_free():
    dataset = synthetic_dataset(users=80, items=60, seed=2)
    split = split_dataset(dataset)
    assert split.test and len(split.test) == len(split.validation)
    held_out = {(c.user, c.time) for c in split.test} | {(c.user, c.time) for c in split.validation}
    for user in split.train:
        assert not any((user.user, int(t)) in held_out for t in user.times)
        assert (user.times < split.cutoff[user.user]).all()
    for case in split.test:
        validation = next(v for v in split.validation if v.user == case.user)
        assert validation.time < case.time
