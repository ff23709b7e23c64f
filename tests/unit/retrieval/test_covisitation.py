from __future__ import annotations

import numpy as np
import pytest

from services.retrieval.covisitation import DECAY, MAX_ANCHORS, CoVisitationTable, co_visited


def table(*neighbours: list[tuple[int, float]]) -> CoVisitationTable:
    """A table from each anchor's (row, score) list, in the order given."""
    indptr = np.cumsum([0] + [len(n) for n in neighbours]).astype(np.int64)
    rows = np.array([row for n in neighbours for row, _ in n], dtype=np.int64)
    scores = np.array([score for n in neighbours for _, score in n], dtype=np.float32)
    return CoVisitationTable(indptr, rows, scores)


def neighbours_of(covisitation: CoVisitationTable, anchor: int) -> list[tuple[int, float]]:
    start, end = covisitation.indptr[anchor], covisitation.indptr[anchor + 1]
    return list(zip(covisitation.rows[start:end].tolist(), covisitation.scores[start:end].tolist(), strict=True))


#: 4 anchors over 6 rows; scores are powers of two, so decayed sums are exact.
HAND_MADE = table(
    [(2, 0.5), (3, 0.25)],
    [(3, 1.0), (4, 0.5), (2, 0.25)],
    [],
    [(0, 2.0)],
)


def test_from_similarity_keeps_the_strongest_positive_entries_best_first():
    similarity = np.array(
        [
            [0.0, 0.2, 0.9, 0.0, 0.5],
            [0.2, 0.0, 0.0, 0.0, 0.0],
            [0.9, 0.0, 0.0, 0.3, -0.1],
            [0.0, 0.0, 0.3, 0.0, 0.3],
            [0.5, 0.0, -0.1, 0.3, 0.0],
        ],
        dtype=np.float32,
    )
    two = CoVisitationTable.from_similarity(similarity, 2)
    assert two.anchors == 5 and two.indptr.tolist() == [0, 2, 3, 5, 7, 9]
    assert neighbours_of(two, 0) == [(2, pytest.approx(0.9)), (4, pytest.approx(0.5))]
    assert neighbours_of(two, 1) == [(0, pytest.approx(0.2))]  # zeros are no neighbours
    assert neighbours_of(two, 2) == [(0, pytest.approx(0.9)), (3, pytest.approx(0.3))]  # nor negatives
    assert [row for row, _ in neighbours_of(two, 3)] == [2, 4]  # a tie goes to the lower row
    assert [row for row, _ in neighbours_of(two, 4)] == [0, 3]
    assert two.rows.dtype == np.int64 and two.scores.dtype == np.float32
    every = CoVisitationTable.from_similarity(similarity, 10)
    assert [row for row, _ in neighbours_of(every, 0)] == [2, 4, 1]
    assert [row for row, _ in neighbours_of(every, 2)] == [0, 3]
    assert [row for row, _ in neighbours_of(every, 4)] == [0, 3]
    none = CoVisitationTable.from_similarity(similarity, 0)
    assert none.anchors == 5 and none.indptr.tolist() == [0] * 6 and none.rows.size == 0


def test_from_similarity_never_makes_an_item_its_own_neighbour():
    similarity = np.array([[1.0, 0.4, 0.3], [0.2, 1.0, 0.6], [0.5, 0.7, 1.0]], dtype=np.float32)
    one = CoVisitationTable.from_similarity(similarity, 1)
    assert [neighbours_of(one, a)[0][0] for a in range(3)] == [1, 2, 1]
    every = CoVisitationTable.from_similarity(similarity, 5)
    assert [[row for row, _ in neighbours_of(every, a)] for a in range(3)] == [[1, 2], [2, 0], [1, 0]]


def test_from_similarity_breaks_ties_at_the_cut_by_row():
    similarity = np.zeros((8, 8), dtype=np.float32)
    similarity[0, 1:] = 0.5
    kept = CoVisitationTable.from_similarity(similarity, 5)
    assert [row for row, _ in neighbours_of(kept, 0)] == [1, 2, 3, 4, 5]


def test_co_visited_sums_decayed_contributions_and_names_the_strongest_anchor():
    # Anchor 0 is the newest (weight 1), anchor 1 the next (weight 0.5):
    # row 2: 0.5 + 0.25 * 0.5 = 0.625 (mostly anchor 0); row 3: 0.25 + 1.0 * 0.5 = 0.75 (mostly anchor 1);
    # row 4: 0.5 * 0.5 = 0.25 (anchor 1 only).
    rows, scores, anchors = co_visited(HAND_MADE, [0, 1], 10, decay=0.5)
    assert rows.tolist() == [3, 2, 4]
    assert scores.tolist() == [0.75, 0.625, 0.25]
    assert anchors.tolist() == [1, 0, 1]
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and anchors.dtype == np.int64
    # The other way round: anchor 1 is the newest.
    rows, scores, anchors = co_visited(HAND_MADE, [1, 0], 10, decay=0.5)
    assert rows.tolist() == [3, 2, 4] and scores.tolist() == [1.125, 0.5, 0.5] and anchors.tolist() == [0, 0, 0]


def test_co_visited_uses_the_default_decay():
    rows, scores, _ = co_visited(HAND_MADE, [0, 1], 10)
    assert rows.tolist() == [3, 2, 4]
    assert scores.tolist() == pytest.approx([0.25 + DECAY, 0.5 + 0.25 * DECAY, 0.5 * DECAY])


def test_co_visited_respects_allowed_and_caps_at_k():
    allowed = np.ones(6, dtype=bool)
    allowed[3] = False
    rows, scores, anchors = co_visited(HAND_MADE, [0, 1], 10, allowed, decay=0.5)
    assert rows.tolist() == [2, 4] and scores.tolist() == [0.625, 0.25] and anchors.tolist() == [0, 1]
    rows, scores, anchors = co_visited(HAND_MADE, [0, 1], 2, decay=0.5)
    assert rows.tolist() == [3, 2] and scores.tolist() == [0.75, 0.625] and anchors.tolist() == [1, 0]
    nothing = co_visited(HAND_MADE, [0, 1], 10, np.zeros(6, dtype=bool))
    assert [part.size for part in nothing] == [0, 0, 0]


def test_co_visited_names_the_position_in_the_anchor_list_not_the_table():
    # Anchor 2 has no neighbours but still takes the newest slot: anchor 3's contribution is decayed once.
    rows, scores, anchors = co_visited(HAND_MADE, [2, 3], 10, decay=0.5)
    assert rows.tolist() == [0] and scores.tolist() == [1.0] and anchors.tolist() == [1]


def test_co_visited_breaks_ties_by_row_and_gives_a_tied_contribution_to_the_newer_anchor():
    tied = table([(5, 0.5), (1, 0.5), (3, 0.5)], [(3, 0.5)])
    rows, scores, _ = co_visited(tied, [0], 10)
    assert rows.tolist() == [1, 3, 5] and scores.tolist() == [0.5, 0.5, 0.5]
    rows, _, anchors = co_visited(tied, [0, 1], 10, decay=1.0)
    assert rows.tolist() == [3, 1, 5] and anchors.tolist() == [0, 0, 0]


def test_co_visited_orders_by_the_scores_it_returns():
    # 0.8 (float32) from the newest anchor and 1.0 * 0.8 from the next differ in float64 but are one float32
    # score: the tie goes to the lower row, as a shard router's merge (by returned score) orders them too.
    rows, scores, anchors = co_visited(table([(5, 0.8)], [(1, 1.0)]), [0, 1], 10, decay=0.8)
    assert scores.tolist() == [np.float32(0.8)] * 2
    assert rows.tolist() == [1, 5] and anchors.tolist() == [1, 0]


def test_co_visited_reads_at_most_max_anchors():
    count = MAX_ANCHORS + 2
    own = table(*[[(a, 1.0)] for a in range(count)])  # anchor a's only neighbour is row a
    rows, scores, anchors = co_visited(own, list(range(count)), 100, decay=0.5)
    assert rows.tolist() == list(range(MAX_ANCHORS))
    assert scores.tolist() == [0.5**i for i in range(MAX_ANCHORS)]
    assert anchors.tolist() == list(range(MAX_ANCHORS))


@pytest.mark.parametrize(("anchors", "k"), [([], 5), ([0, 1], 0), ([0, 1], -1), ([2], 5)])
def test_co_visited_without_anchors_neighbours_or_k_is_empty(anchors, k):
    rows, scores, which = co_visited(HAND_MADE, anchors, k)
    assert (rows.size, scores.size, which.size) == (0, 0, 0)
    assert rows.dtype == np.int64 and scores.dtype == np.float32 and which.dtype == np.int64


def test_restricted_keeps_every_anchor_and_only_the_kept_rows_renumbered():
    shard = HAND_MADE.restricted(np.array([2, 4, 5]), 6)
    assert shard.anchors == HAND_MADE.anchors == 4
    assert shard.indptr.tolist() == [0, 1, 3, 3, 3]
    assert neighbours_of(shard, 0) == [(0, 0.5)]
    assert neighbours_of(shard, 1) == [(1, 0.5), (0, 0.25)]  # the order (best first) is kept
    assert neighbours_of(shard, 3) == []
    empty = HAND_MADE.restricted(np.array([1], dtype=np.int64), 6)
    assert empty.anchors == 4 and empty.rows.size == 0 and empty.indptr.tolist() == [0] * 5


def test_shards_of_a_table_answer_like_the_whole_table_on_their_own_rows():
    rng = np.random.default_rng(0)
    similarity = rng.random((60, 60)).astype(np.float32) * (rng.random((60, 60)) < 0.3)
    np.fill_diagonal(similarity, 0)
    whole = CoVisitationTable.from_similarity(similarity, 8)
    anchors = [7, 3, 41, 3, 59]
    for kept in (np.arange(0, 60, 2), np.arange(1, 60, 2)):
        mask = np.zeros(60, dtype=bool)
        mask[kept] = True
        want = co_visited(whole, anchors, 60, mask)
        got = co_visited(whole.restricted(kept, 60), anchors, 60)
        assert want[0].size > 0
        assert kept[got[0]].tolist() == want[0].tolist()
        assert got[1].tolist() == want[1].tolist() and got[2].tolist() == want[2].tolist()


@pytest.mark.parametrize(
    ("indptr", "rows", "scores", "message"),
    [
        ([1, 2], [0, 1], [0.5, 0.5], "starting at 0"),
        ([], [], [], "starting at 0"),
        ([[0, 1]], [0], [0.5], "starting at 0"),
        ([0, 2, 1, 2], [0, 1], [0.5, 0.5], "non-decreasing"),
        ([0, 1], [0, 1], [0.5, 0.5], "end at the number of entries"),
        ([0, 3], [0, 1], [0.5, 0.5], "end at the number of entries"),
        ([0, 2], [0, 1], [0.5], "same length"),
        ([0, 2], [0, 1], [0.5, np.nan], "finite and positive"),
        ([0, 2], [0, 1], [0.5, np.inf], "finite and positive"),
        ([0, 2], [0, 1], [0.5, -0.1], "finite and positive"),
        ([0, 2], [0, 1], [0.5, 0.0], "finite and positive"),
    ],
)
def test_invalid_tables_are_refused(indptr, rows, scores, message):
    with pytest.raises(ValueError, match=message):
        CoVisitationTable(
            np.array(indptr, dtype=np.int64), np.array(rows, dtype=np.int64), np.array(scores, dtype=np.float32)
        )
