"""Baselines on hand-built splits."""

from __future__ import annotations

import numpy as np
import pytest

from training.data.loaders import load_sequences, synthetic_dataset
from training.data.splits import EvalCase, Split, UserBaskets, split_dataset
from training.evaluation.baselines import BuyAgain, ItemToItem, Popularity, cooccurrence, repeat_scores
from training.evaluation.offline import evaluate, protocol_cases
from training.features import RecentSales


def hand_split() -> Split:
    baskets = [
        UserBaskets(0, np.array([1, 2]), [np.array([0, 1]), np.array([0, 1, 2])]),
        UserBaskets(1, np.array([1]), [np.array([3, 4])]),
        UserBaskets(2, np.array([1]), [np.array([0])]),
    ]
    return Split(6, baskets, [], [], np.full(3, np.iinfo(np.int64).max), np.zeros((0, 3), dtype=np.int64))


def ranking(scores: np.ndarray) -> list[int]:
    return np.argsort(-scores, kind="stable").tolist()


def test_a_sequences_file_without_a_clock_ranks_by_its_training_sales_not_by_catalog_row(tmp_path):
    """Sequences time each event by its position in its line: "sales before the case's day" counted nothing, so the
    popularity baseline (and every fill, and Aisle's popular source) ranked the catalog alphabetically."""
    path = tmp_path / "sequences.txt"
    path.write_text("".join(f"u{i} {'abcde'[i % 5]} z z z z\n" for i in range(20)))
    dataset = load_sequences(path)
    split = split_dataset(dataset)
    assert not split.dated and split_dataset(synthetic_dataset(users=30, items=20, seed=1)).dated
    z = dataset.catalog.item_ids.index("z")
    cases = protocol_cases(split.test, "repeat")
    result = evaluate(Popularity(split), cases, "repeat", split.popularity(), np.zeros(len(dataset.catalog), int))
    assert result.top[0][0] == z and result.metrics["ndcg@10"] == pytest.approx(1.0)
    sales = RecentSales.from_split(split)
    assert sales.at(cases[0].time)[z] == split.popularity()[z] > 0  # the trending feature, as serving reads it
    assert sales.rate_at(cases[0].time)[z] > 0


def test_popularity_ranks_training_baskets():
    scores = Popularity(hand_split()).score([EvalCase(9, np.array([5]), np.array([1]), 3)]).scores[0]
    assert ranking(scores)[:2] == [0, 1]  # item 0 in 3 baskets, item 1 in 2


def test_cooccurrence_is_cosine_normalised():
    similarity = cooccurrence(hand_split())
    # Items 0 and 1 share 2 baskets; 0 is in 3, 1 in 2: 2 / sqrt(3 * 2).
    assert np.isclose(similarity[0, 1], 2 / np.sqrt(6))
    assert np.isclose(similarity[3, 4], 1.0) and similarity[0, 3] == 0 and similarity[0, 0] == 0


def test_item_to_item_follows_the_recent_history():
    scores = ItemToItem(hand_split()).score([EvalCase(9, np.array([0, 3]), np.array([4]), 3)]).scores[0]
    assert ranking(scores)[0] == 4  # newest item 3 co-occurs only with 4


def test_buy_again_ranks_by_frequency_then_recency_then_popularity():
    history = np.array([2, 3, 2, 5, 3])  # 2 and 3 twice (3 more recently), 5 once
    assert np.allclose(repeat_scores(history, 6)[[2, 3, 5, 0]], [2 + 3 / 5, 2 + 5 / 5, 1 + 4 / 5, 0])
    scores = BuyAgain(hand_split()).score([EvalCase(9, history, np.array([1]), 3)]).scores[0]
    assert ranking(scores)[:5] == [3, 2, 5, 0, 1]  # then popularity fills: 0 before 1


def test_an_item_the_baseline_scored_itself_ranks_above_every_filled_one_however_small_its_score():
    """The popularity fill (up to FILL_CEILING) is not added to a baseline's own items: a co-occurrence far below
    it (an item bought once with the oldest of ten history items) still ranks above the best seller."""
    # Item 9 is the best seller, never bought with anything; item 0 was bought once with item 1.
    baskets = [UserBaskets(u, np.array([1]), [np.array([9])]) for u in range(50)]
    baskets.append(UserBaskets(50, np.array([1]), [np.array([0, 1])]))
    split = Split(12, baskets, [], [], np.full(51, np.iinfo(np.int64).max), np.zeros((0, 3), dtype=np.int64))
    model = ItemToItem(split)
    model.similarity *= 1e-4  # co-occurrence scores far below the fill's ceiling, as popular items' are
    history = np.array([1, 2, 3, 4, 5, 6, 7, 8, 10, 11])  # item 1 the oldest of the ten
    scores = model.score([EvalCase(99, history, np.array([0]), 10 * 86_400)]).scores[0]
    assert ranking(scores)[:2] == [0, 9]
    # Buy-again alike: among items bought as often, the more recent first, whatever the fill says. 1,500 lines, so
    # one step of recency (1 / 1,500) is less than the fill between the best seller (9) and an unsold item (11).
    long_history = np.tile([1, 2, 3, 4, 5, 6, 7, 8, 10, 0, 9, 11], 125)
    scores = BuyAgain(split).score([EvalCase(99, long_history, np.array([0]), 10 * 86_400)]).scores[0]
    assert ranking(scores)[:2] == [11, 9]


def test_discovery_protocol_excludes_the_history_and_drops_users_without_new_items():
    cases = [
        EvalCase(0, np.array([0, 1]), np.array([0, 2]), 3),
        EvalCase(1, np.array([3]), np.array([3]), 3),  # only a repeat: left out of discovery
    ]
    discovery = protocol_cases(cases, "discovery")
    assert [c.target.tolist() for c in discovery] == [[2]]
    split = hand_split()
    result = evaluate(BuyAgain(split), discovery, "discovery", split.popularity(), np.zeros(6, dtype=np.int64))
    assert not np.isin(result.top[0][:4], [0, 1]).any()  # 4 items are left to rank; excluded ones come last
    assert result.metrics["users"] == 1


def test_the_sparse_co_visitation_table_is_the_dense_co_occurrences_top_items():
    from services.retrieval.covisitation import CoVisitationTable
    from training.data.loaders import synthetic_dataset
    from training.data.splits import split_dataset

    for split in (hand_split(), split_dataset(synthetic_dataset(300, 80, 2))):
        baskets = [basket for user in split.train for basket in user.baskets]
        for neighbours in (1, 3, 100):
            dense = CoVisitationTable.from_similarity(cooccurrence(split), neighbours)
            sparse = CoVisitationTable.from_baskets(baskets, split.popularity(), neighbours, chunk_pairs=7)
            assert sparse.indptr.tolist() == dense.indptr.tolist()
            assert sparse.rows.tolist() == dense.rows.tolist()
            assert sparse.scores.tolist() == dense.scores.tolist()
    # The hand-made shop: item 0 is bought with 1 twice and with 2 once (baskets holding 0: 3, 1: 2, 2: 1).
    table = CoVisitationTable.from_baskets(
        [b for u in hand_split().train for b in u.baskets], hand_split().popularity(), 5
    )
    rows, scores = table.rows[table.indptr[0] : table.indptr[1]], table.scores[table.indptr[0] : table.indptr[1]]
    assert rows.tolist() == [1, 2] and scores.tolist() == pytest.approx([2 / np.sqrt(3 * 2), 1 / np.sqrt(3 * 1)])
