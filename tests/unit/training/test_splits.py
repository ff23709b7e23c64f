"""Time-aware hold-out: last basket -> test, the one before -> validation, and nothing held out leaks into
training statistics."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support.tiny_training import plain_catalog
from training.data.loaders import load_sequences, synthetic_dataset
from training.data.schema import KIND_CODES, PURCHASE, RETURN, Dataset, LoadReport, build_event_log
from training.data.splits import EvalCase, purchase_baskets, split_dataset
from training.evaluation.baselines import BuyAgain, ItemToItem, Popularity, cooccurrence
from training.evaluation.metrics import novelty
from training.evaluation.offline import evaluate
from training.features import DAY_S, RecentSales, item_snapshot


def shop(rows: list[tuple[str, str, str, int, str]], items: int = 6) -> Dataset:
    """rows: (user, item row as text, kind, time, basket)."""
    catalog = plain_catalog(items)
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
    # Popularity counts training baskets only: u1's o3/o4 are held out, u2's baskets are training, p2 included
    # although it was bought (500) after u1's test basket (400): the hold-out is per customer, not by date. So
    # this whole-window count is never what a test case's popularity baseline or fill sees (see below).
    assert split.popularity().tolist() == [1, 1, 1, 0, 1, 1]
    assert split.basket_count() == 4  # o1, o2, p1, p2
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


def test_a_guests_baskets_are_training_data_however_many():
    """A session (or an Online Retail guest's invoice) is not a customer whose next basket is known: with three
    baskets it still contributes them all to training, as a customer with three baskets does not."""
    rows = [
        (key, str(b), PURCHASE, 4000 * b, f"{key}-{b}")
        for key in ("session:s9", "guest:536366", "c1")
        for b in range(3)
    ]
    split = split_dataset(shop(rows))
    users = shop(rows).events.users
    assert [users[case.user] for case in split.test] == ["c1"]
    assert {users[u.user]: len(u.baskets) for u in split.train} == {"session:s9": 3, "guest:536366": 3, "c1": 1}


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


def day(n: int, hour: int = 12) -> int:
    return n * DAY_S + hour * 3600


#: u1 buys 0 (day 1), 1 (day 2, validation) and 3 (day 10, test). Before day 10 item 5 was the best seller; item 3
#: sells only from day 20 on, to customers with one basket each, whose baskets the split keeps for training.
LATER = [
    ("u1", "0", PURCHASE, day(1), "a1"),
    ("u1", "1", PURCHASE, day(2), "a2"),
    ("u1", "3", PURCHASE, day(10, 18), "a3"),
    ("u2", "3", PURCHASE, day(20), "b1"),
    ("u3", "3", PURCHASE, day(30), "c1"),
    ("u4", "3", PURCHASE, day(40), "d1"),
    ("u5", "5", PURCHASE, day(0), "e1"),
    ("u6", "5", PURCHASE, day(5), "f1"),
    ("u7", "4", PURCHASE, day(10, 8), "g1"),  # the test basket's own day, earlier that day
]


def test_the_popularity_a_test_case_sees_excludes_its_day_and_later():
    split = split_dataset(shop(LATER))
    case = split.test[0]
    assert case.target.tolist() == [3] and case.time == day(10, 18)
    # The training part holds baskets bought after the test basket (u2-u4's item 3): the protocol's leak.
    assert split.popularity()[3] == 3
    # As of the test case (the days before its day): item 5 twice, item 0 once (u1's training basket), nothing
    # else; not item 3 (later) nor item 4 (bought on the case's own day).
    counts, rows = RecentSales.from_split(split).to_date([case.time])
    assert counts[rows[0]].tolist() == [1, 0, 0, 0, 0, 2]
    categories = np.zeros(split.num_items, dtype=np.int64)
    result = evaluate(Popularity(split), split.test, "repeat", split.popularity(), categories)
    assert result.top[0][:6].tolist() == [5, 0, 1, 2, 3, 4]  # items 1-4 have not sold yet: they follow by row
    assert result.metrics["ndcg@10"] == pytest.approx(1 / np.log2(6))  # item 3 at rank 5, not 1
    # Every baseline's fill reads the same counts: after buy-again's own items (1, newest, then 0), 5 comes first.
    buy_again = BuyAgain(split).score(split.test).scores[0]
    assert np.argsort(-buy_again, kind="stable")[:6].tolist() == [1, 0, 5, 2, 3, 4]
    item_to_item = ItemToItem(split).score(split.test).scores[0]
    assert np.argsort(-item_to_item, kind="stable")[0] == 5  # nothing co-occurs with 0 or 1: the fill alone


def test_novelty_counts_training_baskets_not_basket_lines():
    rows = [("u1", "0", PURCHASE, 100, "a"), ("u1", "1", PURCHASE, 100, "a"), ("u1", "2", PURCHASE, 100, "a")]
    rows += [("u2", "0", PURCHASE, 200, "b"), ("u2", "3", PURCHASE, 200, "b")]
    split = split_dataset(shop(rows, items=4))
    # Two training baskets holding five items: p(0) = (2 + 1) / (2 + 4), self-information 1 bit.
    assert split.basket_count() == 2 and split.popularity().sum() == 5
    assert novelty(np.array([[0]]), split.popularity(), split.basket_count()) == pytest.approx(1.0)
    # evaluate() reports it from the same counts when given the number of training baskets, and leaves it out
    # rather than guess when it is not.
    case = EvalCase(0, np.array([1]), np.array([2]), 300)
    categories = np.zeros(4, dtype=np.int64)
    given = evaluate(Popularity(split), [case], "repeat", split.popularity(), categories, baskets=2)
    assert given.top[0][0] == 0 and given.metrics["novelty"] == pytest.approx(
        np.mean(-np.log2((split.popularity()[given.top[0]] + 1) / (2 + 4)))
    )
    assert "novelty" not in evaluate(Popularity(split), [case], "repeat", split.popularity(), categories).metrics
