from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.core.metrics import ArtifactMetrics
from services.retrieval import state
from services.retrieval.index import METADATA_FILE, save_index
from services.retrieval.router import merge_shard_responses
from services.retrieval.sources import (
    BuyAgainSource,
    ColdStartSource,
    CoVisitationSource,
    ItemToItemSource,
    PopularitySource,
    Query,
    TrendingSource,
    TwoTowerSource,
    first_allowed,
)
from services.retrieval.state import IndexHolder, IndexWatcher, open_index
from tests.support.retrieval import covisitation_table, write_index

CO_VISITATION, BUY_AGAIN = common.CANDIDATE_SOURCE_CO_VISITATION, common.CANDIDATE_SOURCE_BUY_AGAIN


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    path = write_index(tmp_path_factory.mktemp("index"), covisitation=True)
    return open_index(path, exact_threshold=20_000, min_recall=0.8)


def query(index, k=10, history=(), anchors=(), region=None, allowed=None, history_items=()):
    allowed = np.ones(len(index.artifact), dtype=bool) if allowed is None else allowed
    vector = index.encoder.encode(list(history)) if history else None
    embeddings, ids = index.artifact.embeddings, index.artifact.item_ids
    return Query(
        list(history),
        vector,
        [(ids[a], embeddings[a]) for a in anchors],
        region,
        allowed,
        int(allowed.sum()),
        k,
        list(history_items),
    )


def items(index, found) -> list[str]:
    return [index.artifact.item_ids[row] for row in found.rows.tolist()]


def test_first_allowed_scans_a_precomputed_order():
    order, values = np.array([4, 2, 0, 1, 3]), np.array([1.0, 2.0, 4.0, 0.5, 9.0])
    rows, scores = first_allowed(order, values, np.array([True, False, False, True, True]), 2)
    assert rows.tolist() == [4, 0] and scores.tolist() == [9.0, 1.0]


def test_popularity_is_regional(index):
    de = PopularitySource().retrieve(index, query(index, region=1))
    expected = np.argsort(-index.artifact.region_popularity[1], kind="stable")[:10]
    assert de.rows.tolist() == expected.tolist()
    overall = PopularitySource().retrieve(index, query(index))
    assert overall.rows.tolist() == list(range(10))  # popularity decreases with row
    assert de.source == common.CANDIDATE_SOURCE_POPULARITY


def test_trending_and_cold_start(index):
    trending = TrendingSource().retrieve(index, query(index, k=3))
    assert trending.rows.tolist() == [2999, 2998, 2997]
    cold = ColdStartSource(trending_weight=0.0).retrieve(index, query(index, k=5, region=0))
    expected = np.argsort(-np.log1p(index.artifact.region_popularity[0]), kind="stable")[:5]
    assert cold.rows.tolist() == expected.tolist()
    assert cold.source == common.CANDIDATE_SOURCE_COLD_START


def test_items_without_recent_sales_are_never_trending(index):
    allowed = np.zeros(len(index.artifact), dtype=bool)
    allowed[[0, 1, 2]] = True  # the three least trending items
    saved = index.artifact.trending[[0, 1]].copy()
    index.artifact.trending[[0, 1]] = 0.0  # no recent sales
    index.orders.pop("trending", None)
    try:
        found = TrendingSource().retrieve(index, query(index, k=3, allowed=allowed))
    finally:
        index.artifact.trending[[0, 1]] = saved
        index.orders.pop("trending", None)
    assert found.rows.tolist() == [2] and found.scores.tolist() == [index.artifact.trending[2]]


def test_sources_respect_the_allowed_mask(index):
    allowed = np.zeros(len(index.artifact), dtype=bool)
    allowed[1000:1100] = True
    for source in (PopularitySource(), TrendingSource(), ColdStartSource(), TwoTowerSource(), ItemToItemSource()):
        found = source.retrieve(index, query(index, k=20, history=[5, 6], anchors=[7], allowed=allowed))
        assert len(found) and allowed[found.rows].all(), source.name


def test_two_tower_needs_history_and_names_an_anchor(index):
    assert len(TwoTowerSource().retrieve(index, query(index))) == 0
    found = TwoTowerSource().retrieve(index, query(index, history=[10, 20, 30]))
    assert len(found) == 10 and set(found.anchors) <= {"I00010", "I00020", "I00030"}
    assert (np.diff(found.scores) <= 0).all()


def test_item_to_item_takes_the_best_anchor_for_each_item(index):
    found = ItemToItemSource().retrieve(index, query(index, k=15, anchors=[1, 2]))
    embeddings = index.artifact.embeddings
    assert len(found) == 15
    for i, row in enumerate(found.rows.tolist()):
        best = max((1, 2), key=lambda a: float(embeddings[row] @ embeddings[a]))
        assert found.anchor(i) == index.artifact.item_ids[best]


def test_availability_updates_change_the_base_mask(index):
    availability = index.availability
    mask, count = availability.base_mask(None, False)
    row = int(np.flatnonzero(mask)[0])
    availability.apply(row, 0, None)
    after, after_count = availability.base_mask(None, False)
    assert not after[row] and after_count == count - 1
    availability.apply(row, 5, [2])
    assert availability.base_mask(2, False)[0][row] and not availability.base_mask(0, False)[0][row]
    assert availability.base_mask(0, True)[0][row] is np.False_


async def test_a_corrupt_version_is_refused_and_the_old_one_keeps_serving(tmp_path):
    registry = CollectorRegistry()
    holder = IndexHolder(metrics=ArtifactMetrics(registry, "retrieval"))
    first = write_index(tmp_path, version="20260101T000000Z")
    await holder.load_latest(tmp_path)
    bad = write_index(tmp_path, version="20260102T000000Z", seed=1)
    metadata = json.loads((bad / METADATA_FILE).read_text())
    metadata["checksums"]["item_ids.txt"] = "0" * 64
    (bad / METADATA_FILE).write_text(json.dumps(metadata))
    watcher = IndexWatcher(holder, tmp_path, interval_s=0)
    assert not await watcher.check_once()
    assert holder.current.artifact.path == first and bad in holder.refused
    assert not await watcher.check_once()  # a refused version is not retried
    # What the alert on refused artefacts and the fleet's versions read: one refusal, the old version served.
    labels = {"service": "retrieval", "kind": "index"}
    assert registry.get_sample_value("aisle_artifact_refused_total", labels) == 1
    assert registry.get_sample_value("aisle_artifact_serving", {**labels, "version": "20260101T000000Z"}) == 1
    good = write_index(tmp_path, version="20260103T000000Z", seed=2)
    assert await watcher.check_once() and holder.current.artifact.path == good
    assert registry.get_sample_value("aisle_artifact_serving", {**labels, "version": "20260103T000000Z"}) == 1
    assert registry.get_sample_value("aisle_artifact_serving", {**labels, "version": "20260101T000000Z"}) is None


async def test_a_good_version_published_with_a_bad_one_after_it_serves_as_a_restarted_replica_would(tmp_path):
    # Both published between two polls: the running replica refused the newest and stayed on the first for good,
    # while a restarted one served the second.
    holder = IndexHolder()
    write_index(tmp_path, version="20260101T000000Z")
    await holder.load_latest(tmp_path)
    good = write_index(tmp_path, version="20260102T000000Z", seed=1)
    bad = write_index(tmp_path, version="20260103T000000Z", seed=2)
    metadata = json.loads((bad / METADATA_FILE).read_text())
    metadata["checksums"]["item_ids.txt"] = "0" * 64
    (bad / METADATA_FILE).write_text(json.dumps(metadata))
    watcher = IndexWatcher(holder, tmp_path, interval_s=0)
    assert await watcher.check_once() and holder.current.artifact.path == good and bad in holder.refused
    assert not await watcher.check_once()  # nothing newer that passes: no work at every poll
    restarted = IndexHolder()
    await restarted.load_latest(tmp_path)
    assert restarted.current.artifact.path == good


async def test_a_version_seen_half_copied_is_tried_again_once_the_copy_completes(tmp_path, monkeypatch):
    holder = IndexHolder()
    write_index(tmp_path, count=300, version="20260101T000000Z")
    await holder.load_latest(tmp_path)
    copied = write_index(tmp_path, count=300, version="20260102T000000Z", seed=1)
    (copied / "item_table.npz").rename(tmp_path / "in-flight.npz")  # metadata there, a data file not yet
    opened = []
    real_open = state.open_index
    monkeypatch.setattr(state, "open_index", lambda path, *a: opened.append(path.name) or real_open(path, *a))
    watcher = IndexWatcher(holder, tmp_path, interval_s=0)
    assert not await watcher.check_once() and copied in holder.refused
    assert "missing item_table.npz" in holder.refused.reason(copied)
    assert not await watcher.check_once()  # unchanged: not loaded again
    assert opened == ["20260102T000000Z"]
    (tmp_path / "in-flight.npz").rename(copied / "item_table.npz")  # the copy completes
    assert await watcher.check_once() and holder.current.artifact.path == copied
    assert opened == ["20260102T000000Z"] * 2


async def test_availability_updates_outlive_a_swap_to_an_older_build(tmp_path):
    holder = IndexHolder()
    write_index(tmp_path, version="20260101T000000Z")
    await holder.load_latest(tmp_path)
    applied, unknown = holder.apply_availability(
        [pb.AvailabilityUpdate(item_id="I00000", stock=0), pb.AvailabilityUpdate(item_id="nope", stock=1)]
    )
    assert (applied, unknown) == (1, ["nope"])
    assert holder.current.availability.stock[0] == 0
    # The next version's stock data was exported before the update (its data_as_of is older): the update still
    # applies.
    newer = write_index(tmp_path, version="20260102T000000Z", seed=3)
    metadata = json.loads((newer / METADATA_FILE).read_text())
    metadata["data_as_of"] = "2000-01-01T00:00:00+00:00"
    (newer / METADATA_FILE).write_text(json.dumps(metadata))
    assert await holder.swap(newer)
    assert holder.current.availability.stock[0] == 0
    # A version built after the update carries the inventory's data itself: the update is dropped.
    assert await holder.swap(write_index(tmp_path, version="20260103T000000Z", seed=4))
    assert holder.current.availability.stock[0] == holder.current.artifact.stock[0]


def test_router_merge_is_top_k_per_source_across_shards():
    def response(version, *candidates):
        return pb.RetrieveResponse(
            candidates=[pb.Candidate(item_id=i, score=s, source=src) for i, s, src in candidates],
            index_version=common.ArtifactVersion(version=version),
        )

    two, pop = common.CANDIDATE_SOURCE_TWO_TOWER, common.CANDIDATE_SOURCE_POPULARITY
    merged = merge_shard_responses(
        [
            response("a", ("x", 0.9, two), ("y", 0.5, two), ("p", 10, pop)),
            response("b", ("z", 0.7, two), ("q", 20, pop)),
        ],
        k=2,
    )
    assert [(c.item_id, c.source_rank) for c in merged.candidates if c.source == two] == [("x", 0), ("z", 1)]
    assert [c.item_id for c in merged.candidates if c.source == pop] == ["q", "p"]
    assert merged.index_version.version == "a+b"
    limited = merge_shard_responses(
        [response("a", ("x", 0.9, two), ("p", 10, pop)), response("b", ("q", 20, pop))], 2, {pop: 1}
    )
    assert [c.item_id for c in limited.candidates] == ["x", "q"]


# The support index's table: item i is co-bought with i+1..i+5 scored 1.0, 0.8, 0.6, 0.4, 0.2. With history
# I00010 then I00012 (newest), weights 1 (I00012) and 0.8 (I00010):
#   I00013: 1.0 + 0.48, I00014: 0.8 + 0.32, I00011: 0.8, I00015: 0.6 + 0.16, I00012: 0.64, I00016: 0.4, I00017: 0.2.
CO_VISITED = [
    ("I00013", 1.48, "I00012"),
    ("I00014", 1.12, "I00012"),
    ("I00011", 0.8, "I00010"),
    ("I00015", 0.76, "I00012"),
    ("I00012", 0.64, "I00010"),
    ("I00016", 0.4, "I00012"),
    ("I00017", 0.2, "I00012"),
]


def co_visited_triples(index, found) -> list[tuple[str, float, str]]:
    return [
        (item, round(score, 5), found.anchor(i))
        for i, (item, score) in enumerate(zip(items(index, found), found.scores.tolist(), strict=True))
    ]


def test_co_visitation_scores_the_newest_distinct_history_items(index):
    source = CoVisitationSource()
    found = source.retrieve(index, query(index, k=20, history_items=["I00010", "I00012"]))
    assert found.source == CO_VISITATION
    assert co_visited_triples(index, found) == CO_VISITED
    # Repeats count once, at their newest position; items the table does not know take no anchor slot.
    noisy = ["I00012", "I00010", "ghost", "I00012", "nope"]
    assert co_visited_triples(index, source.retrieve(index, query(index, k=20, history_items=noisy))) == CO_VISITED
    # The other order: I00010 is the newest.
    swapped = source.retrieve(index, query(index, k=3, history_items=["I00012", "I00010"]))
    assert co_visited_triples(index, swapped) == [
        ("I00013", 1.4, "I00012"),
        ("I00014", 1.04, "I00012"),
        ("I00011", 1.0, "I00010"),
    ]


def test_co_visitation_honours_the_allowed_mask(index):
    allowed = np.ones(len(index.artifact), dtype=bool)
    allowed[[13, 11]] = False  # excluded, or out of stock
    found = CoVisitationSource().retrieve(index, query(index, k=4, history_items=["I00010", "I00012"], allowed=allowed))
    assert co_visited_triples(index, found) == [CO_VISITED[1], CO_VISITED[3], CO_VISITED[4], CO_VISITED[5]]


def test_co_visitation_reads_the_newest_ten_anchors(index):
    history = [f"I{100 * n:05d}" for n in range(1, 13)]  # I00100 .. I01200, no shared neighbours
    found = CoVisitationSource().retrieve(index, query(index, k=100, history_items=history))
    assert len(found) == 50
    assert set(found.anchors) == set(history[2:])
    assert {row // 100 for row in found.rows.tolist()} == set(range(3, 13))
    assert items(index, found)[:2] == ["I01201", "I01101"]  # 1.0, then 0.8 (I01202 ties with it: higher row)


def test_co_visitation_reads_the_request_anchors_before_the_history(index):
    source = CoVisitationSource()
    # The page's product (I00012) is the newest anchor, then the history (I00012 again, then I00010).
    found = source.retrieve(index, query(index, k=20, anchors=[12], history_items=["I00010", "I00012"]))
    assert co_visited_triples(index, found) == CO_VISITED
    found = source.retrieve(index, query(index, k=20, anchors=[12], history_items=["I00012", "I00010"]))
    assert co_visited_triples(index, found) == CO_VISITED
    # Cart items: the last one is the newest. Without history, the anchors alone.
    found = source.retrieve(index, query(index, k=3, anchors=[12, 10]))
    assert co_visited_triples(index, found) == [
        ("I00013", 1.4, "I00012"),
        ("I00014", 1.04, "I00012"),
        ("I00011", 1.0, "I00010"),
    ]


def test_co_visitation_needs_a_table_and_a_known_item(index):
    source = CoVisitationSource()
    assert len(source.retrieve(index, query(index, history=[10, 12]))) == 0  # history_rows alone: nothing
    without = dataclasses.replace(index, artifact=dataclasses.replace(index.artifact, covisitation=None))
    assert len(source.retrieve(without, query(index, anchors=[12], history_items=["I00010"]))) == 0
    assert len(source.retrieve(index, query(index, history_items=["ghost"]))) == 0


def test_buy_again_orders_by_count_then_recency(index):
    history = ["I00005", "I00007", "I00005", "I00009", "I00007", "I00003"]
    found = BuyAgainSource().retrieve(index, query(index, k=10, history_items=history))
    assert found.source == BUY_AGAIN and found.anchors is None
    # count + newest position / length: I00007 2 + 5/6, I00005 2 + 3/6, I00003 1 + 6/6, I00009 1 + 4/6.
    assert items(index, found) == ["I00007", "I00005", "I00003", "I00009"]
    assert found.scores.tolist() == pytest.approx([2 + 5 / 6, 2.5, 2.0, 1 + 4 / 6])
    capped = BuyAgainSource().retrieve(index, query(index, k=2, history_items=history))
    assert items(index, capped) == ["I00007", "I00005"]


def test_buy_again_leaves_out_unknown_and_disallowed_items(index):
    allowed = np.ones(len(index.artifact), dtype=bool)
    allowed[7] = False
    history = ["I00005", "I00007", "ghost", "ghost", "ghost", "I00007", "I00003"]
    found = BuyAgainSource().retrieve(index, query(index, k=10, history_items=history, allowed=allowed))
    assert items(index, found) == ["I00003", "I00005"]
    assert found.scores.tolist() == pytest.approx([1 + 7 / 7, 1 + 1 / 7])
    assert len(BuyAgainSource().retrieve(index, query(index, history=[5, 7]))) == 0


def test_covisitation_positions_follow_the_anchor_ids(index, tmp_path):
    assert index.covisitation_positions == index.rows  # without an anchors file, anchor i is row i
    artifact = index.artifact
    anchors = [f"A{n}" for n in range(5)] + ["I00002"]
    path = save_index(
        tmp_path,
        item_ids=artifact.item_ids[:50],
        embeddings=artifact.embeddings[:50],
        popularity=artifact.popularity[:50],
        categories=artifact.categories[:50],
        brands=artifact.brands[:50],
        model_name="test",
        model_version="1",
        covisitation=covisitation_table(6),
        covisitation_anchors=anchors,
    )
    keyed = open_index(path, exact_threshold=20_000, min_recall=0.8)
    assert keyed.covisitation_positions == {item: i for i, item in enumerate(anchors)}
    # I00002 is anchor 5 here, whose neighbours are rows 0..4 (I00000..I00004).
    found = CoVisitationSource().retrieve(keyed, query(keyed, k=10, history_items=["I00002", "I00001"]))
    assert items(keyed, found) == ["I00000", "I00001", "I00002", "I00003", "I00004"]
    assert set(found.anchors) == {"I00002"}


def test_the_kept_history_leaves_out_returned_items_and_needs_consent():
    from services.retrieval.servicer import RetrievalServicer

    purchase, returned = common.EVENT_TYPE_PURCHASE, common.EVENT_TYPE_RETURN
    history = [
        common.Interaction(item_id=item, event_type=event)
        for item, event in (("a", purchase), ("b", purchase), ("a", returned), ("c", common.EVENT_TYPE_VIEW))
    ]
    assert RetrievalServicer.kept_history(pb.RetrieveRequest(history=history, consent=True)) == ["b", "c"]
    assert RetrievalServicer.kept_history(pb.RetrieveRequest(history=history, consent=False)) == []


def _best_over_anchors(answers: list[tuple[str, list[int], list[float]]], k: int):
    """The item-to-item merge by definition: each row's best score over the anchors (the first anchor on a
    tie), best first, ties by row."""
    best: dict[int, tuple[float, str]] = {}
    for anchor, rows, scores in answers:
        for row, score in zip(rows, scores, strict=True):
            if row not in best or score > best[row][0]:
                best[row] = (score, anchor)
    ordered = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
    return [row for row, _ in ordered], [score for _, (score, _) in ordered], [anchor for _, (_, anchor) in ordered]


class _Canned:
    """A search that answers each anchor's vector with canned rows and scores (ties and overlaps on purpose)."""

    def __init__(self, answers: dict[float, tuple[np.ndarray, np.ndarray]]):
        self.answers = answers

    def search(self, vector, k, allowed=None, allowed_count=None):
        rows, scores = self.answers[float(vector[0])]
        return rows[:k], scores[:k]


def test_item_to_item_merges_anchors_as_the_definition_does_ties_included():
    rng = np.random.default_rng(4)
    for _ in range(300):
        count, k = int(rng.integers(1, 5)), int(rng.integers(1, 12))
        answers, canned = [], {}
        for a in range(count):
            rows = rng.choice(30, size=int(rng.integers(0, 12)), replace=False)
            scores = np.round(rng.random(rows.size), 1).astype(np.float32)  # coarse: many equal scores
            order = np.lexsort((rows, -scores))
            rows, scores = rows[order].astype(np.int64), scores[order]
            canned[float(a)] = (rows, scores)
            answers.append((f"A{a}", rows.tolist(), scores.tolist()))
        index = dataclasses.make_dataclass("Index", ["search"])(_Canned(canned))
        anchors = [(f"A{a}", np.full(4, a, dtype=np.float32)) for a in range(count)]
        found = ItemToItemSource().retrieve(index, Query([], None, anchors, None, np.ones(30, dtype=bool), 30, k))
        rows, scores, named = _best_over_anchors(answers, k)
        assert found.rows.tolist() == rows
        assert found.scores.tolist() == scores
        assert (found.anchors or []) == named
