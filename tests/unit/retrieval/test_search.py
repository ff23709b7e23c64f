from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from services.retrieval.build import ScannConfig, build_scann, searcher_for, spot_check_recall
from services.retrieval.index import load_index
from services.retrieval.search import ExactSearcher, FilteredSearch
from tests.support.retrieval import clustered_embeddings, write_index


@pytest.fixture(scope="module")
def scann_index(tmp_path_factory):
    return load_index(write_index(tmp_path_factory.mktemp("scann"), count=30_000, scann=True))


def recall(found: np.ndarray, expected: np.ndarray) -> float:
    return len(set(found.tolist()) & set(expected.tolist())) / max(1, len(expected))


def test_scann_recall_against_exact_on_a_seeded_set(scann_index):
    searcher, exact = searcher_for(scann_index), ExactSearcher(scann_index.embeddings)
    queries = clustered_embeddings(50, seed=9)
    recalls = [recall(searcher.search(q, 100)[0], exact.search(q, 100)[0]) for q in queries]
    assert np.mean(recalls) >= 0.9, np.mean(recalls)
    assert spot_check_recall(searcher, scann_index.embeddings) >= 0.9


@pytest.mark.parametrize("fraction", [0.5, 0.1, 0.01])
def test_filtered_search_keeps_k_and_recall_when_filters_are_tight(scann_index, fraction):
    rng = np.random.default_rng(1)
    exact = ExactSearcher(scann_index.embeddings)
    # exact_threshold 0 forces the over-fetch path even at 1% (300 allowed items).
    search = FilteredSearch(searcher_for(scann_index), exact, exact_threshold=0)
    allowed = rng.random(len(scann_index)) < fraction
    recalls = []
    for query in clustered_embeddings(20, seed=3):
        rows, scores = search.search(query, 100, allowed)
        assert len(rows) == 100 and allowed[rows].all()
        assert (np.diff(scores) <= 1e-5).all()
        recalls.append(recall(rows, exact.search_rows(query, np.flatnonzero(allowed), 100)[0]))
    assert np.mean(recalls) >= 0.85


def test_small_allowed_sets_are_searched_exactly(scann_index):
    exact = ExactSearcher(scann_index.embeddings)
    search = FilteredSearch(searcher_for(scann_index), exact, exact_threshold=1000)
    allowed = np.zeros(len(scann_index), dtype=bool)
    allowed[::100] = True  # 300 items
    query = clustered_embeddings(1, seed=4)[0]
    rows, _ = search.search(query, 50, allowed)
    assert rows.tolist() == exact.search_rows(query, np.flatnonzero(allowed), 50)[0].tolist()


def test_fewer_allowed_than_k_returns_all_of_them():
    embeddings = clustered_embeddings(500)
    exact = ExactSearcher(embeddings)
    allowed = np.zeros(500, dtype=bool)
    allowed[[3, 30, 300]] = True
    rows, _ = FilteredSearch(exact, exact).search(embeddings[0], 10, allowed)
    assert sorted(rows.tolist()) == [3, 30, 300]
    assert FilteredSearch(exact, exact).search(embeddings[0], 10, np.zeros(500, dtype=bool))[0].size == 0


def test_for_items_scales_leaves_with_the_catalog(tmp_path):
    small, large = ScannConfig.for_items(10_000), ScannConfig.for_items(1_000_000)
    assert small.num_leaves < large.num_leaves == 2000
    assert large.leaves_to_search == 200
    params = build_scann(clustered_embeddings(3000), tmp_path, ScannConfig.for_items(3000))
    assert params["ann"] == "scann" and (tmp_path / "scann_assets.pbtxt").is_file()


class _Recording:
    """A searcher that records how many rows each search asked for."""

    def __init__(self, inner):
        self.inner, self.asked = inner, []

    def search(self, query, k, **options):
        self.asked.append(k)
        return self.inner.search(query, k)


def test_a_few_filtered_rows_cost_as_many_more_rows_not_a_proportional_over_fetch(scann_index):
    exact = ExactSearcher(scann_index.embeddings)
    recording = _Recording(searcher_for(scann_index))
    search = FilteredSearch(recording, exact, exact_threshold=0)
    query = clustered_embeddings(1, seed=5)[0]
    allowed = np.ones(len(scann_index), dtype=bool)
    best = exact.search(query, 100)[0]
    allowed[best[:7]] = False  # the history and the cart: a few rows, here among the nearest
    rows, _ = search.search(query, 100, allowed)
    assert recording.asked == [107]  # k + the 7 rows filtered out, not twice k
    assert len(rows) == 100 and allowed[rows].all()
    assert recall(rows, exact.search_rows(query, np.flatnonzero(allowed), 100)[0]) >= 0.9
    recording.asked.clear()
    half = np.random.default_rng(2).random(len(scann_index)) < 0.5
    search.search(query, 100, half)
    # Many filtered out: k / allowed share x over-fetch, as before.
    assert recording.asked[0] == int(100 * len(half) / np.count_nonzero(half) * search.overfetch)


def test_an_answer_is_never_short_of_k_when_the_leaves_searched_hold_fewer_points(scann_index):
    """An index tuned to a recall target on a clustered catalog may search a leaf or two: ScaNN then answers at
    most their points. Unfiltered (every item allowed: the common case) the answer was returned short as it was."""
    searcher = searcher_for(scann_index)
    searcher.params = replace(searcher.params, leaves_to_search=1)
    query = clustered_embeddings(1, seed=6)[0]
    assert len(searcher.search(query, 2000)[0]) < 2000  # the tree's own answer is short
    search = FilteredSearch(searcher, ExactSearcher(scann_index.embeddings), exact_threshold=0)
    everything = np.ones(len(scann_index), dtype=bool)
    for allowed in (None, everything):
        rows, scores = search.search(query, 2000, allowed)
        assert len(rows) == len(set(rows.tolist())) == 2000 and (np.diff(scores) <= 1e-5).all()
    one_out = everything.copy()
    one_out[rows[0]] = False
    rows, _ = search.search(query, 2000, one_out)
    assert len(rows) == 2000 and one_out[rows].all()
