from __future__ import annotations

import json

import numpy as np
import pytest

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.index import METADATA_FILE
from services.retrieval.router import merge_shard_responses
from services.retrieval.sources import (
    ColdStartSource,
    ItemToItemSource,
    PopularitySource,
    Query,
    TrendingSource,
    TwoTowerSource,
    first_allowed,
)
from services.retrieval.state import IndexHolder, IndexWatcher, open_index
from tests.support.retrieval import write_index


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return open_index(write_index(tmp_path_factory.mktemp("index")), exact_threshold=20_000, min_recall=0.8)


def query(index, k=10, history=(), anchors=(), region=None, allowed=None):
    allowed = np.ones(len(index.artifact), dtype=bool) if allowed is None else allowed
    vector = index.encoder.encode(list(history)) if history else None
    embeddings, ids = index.artifact.embeddings, index.artifact.item_ids
    return Query(
        list(history), vector, [(ids[a], embeddings[a]) for a in anchors], region, allowed, int(allowed.sum()), k
    )


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
    holder = IndexHolder()
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
    good = write_index(tmp_path, version="20260103T000000Z", seed=2)
    assert await watcher.check_once() and holder.current.artifact.path == good


async def test_availability_updates_outlive_a_swap_to_an_older_build(tmp_path):
    holder = IndexHolder()
    write_index(tmp_path, version="20260101T000000Z")
    await holder.load_latest(tmp_path)
    applied, unknown = holder.apply_availability(
        [pb.AvailabilityUpdate(item_id="I00000", stock=0), pb.AvailabilityUpdate(item_id="nope", stock=1)]
    )
    assert (applied, unknown) == (1, ["nope"])
    assert holder.current.availability.stock[0] == 0
    # The next version was written before the update (its created_at is older): the update still applies.
    newer = write_index(tmp_path, version="20260102T000000Z", seed=3)
    metadata = json.loads((newer / METADATA_FILE).read_text())
    metadata["created_at"] = "2000-01-01T00:00:00+00:00"
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
