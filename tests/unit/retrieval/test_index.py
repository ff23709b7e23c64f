from __future__ import annotations

import json

import numpy as np
import pytest

from services.retrieval.index import (
    EMBEDDINGS_FILE,
    METADATA_FILE,
    InvalidIndex,
    latest_version,
    load_index,
    save_index,
)
from services.retrieval.search import ExactSearcher, top_k


def write(root, count=20, dim=4, version=None, seed=0):
    rng = np.random.default_rng(seed)
    return save_index(
        root,
        item_ids=[f"i{n}" for n in range(count)],
        embeddings=rng.normal(size=(count, dim)),
        popularity=rng.random(count),
        categories=["c"] * count,
        brands=["b"] * count,
        model_name="ranker",
        model_version="1",
        version=version,
    )


def test_round_trip(tmp_path):
    path = write(tmp_path, version="v1")
    loaded = load_index(path)
    assert loaded.version == "v1" and len(loaded) == 20 and loaded.dimension == 4
    assert loaded.item_ids[3] == "i3" and loaded.model_version == "1"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_latest_version_picks_the_newest_complete_folder(tmp_path):
    write(tmp_path, version="20260101T000000Z")
    write(tmp_path, version="20260201T000000Z")
    (tmp_path / "20260301T000000Z").mkdir()  # incomplete: no metadata
    assert latest_version(tmp_path).name == "20260201T000000Z"
    assert latest_version(tmp_path / "20260101T000000Z").name == "20260101T000000Z"


def test_versions_are_immutable(tmp_path):
    write(tmp_path, version="v1")
    with pytest.raises(FileExistsError):
        write(tmp_path, version="v1")


def test_a_corrupt_file_is_refused_by_checksum(tmp_path):
    path = write(tmp_path)
    data = bytearray((path / EMBEDDINGS_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / EMBEDDINGS_FILE).write_bytes(bytes(data))
    with pytest.raises(InvalidIndex, match="checksum mismatch for item_embeddings.npy"):
        load_index(path)


def test_metadata_that_disagrees_with_the_data_is_refused(tmp_path):
    path = write(tmp_path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["dimension"] = 8
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(InvalidIndex, match="shapes disagree"):
        load_index(path)


def test_missing_root_says_how_to_make_one(tmp_path):
    with pytest.raises(InvalidIndex, match="aisle train"):
        latest_version(tmp_path / "nope")


def test_bad_inputs_are_refused_before_writing(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        save_index(
            tmp_path,
            item_ids=["a", "a"],
            embeddings=np.zeros((2, 2)),
            popularity=np.zeros(2),
            categories=["c", "c"],
            brands=["b", "b"],
            model_name="m",
            model_version="1",
        )
    with pytest.raises(ValueError, match="NaN"):
        save_index(
            tmp_path,
            item_ids=["a", "b"],
            embeddings=np.full((2, 2), np.nan),
            popularity=np.zeros(2),
            categories=["c", "c"],
            brands=["b", "b"],
            model_name="m",
            model_version="1",
        )
    assert not list(tmp_path.iterdir())


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(1)
    embeddings = rng.normal(size=(500, 8)).astype(np.float32)
    query = rng.normal(size=8).astype(np.float32)
    rows, scores = ExactSearcher(embeddings).search(query, 10)
    expected = np.argsort(-(embeddings @ query))[:10]
    assert rows.tolist() == expected.tolist()
    assert np.allclose(scores, (embeddings @ query)[expected])


def test_top_k_respects_the_allowed_mask_and_small_sets():
    scores = np.array([5.0, 4.0, 3.0, 2.0, 1.0])
    allowed = np.array([False, True, False, True, False])
    rows, values = top_k(scores, 3, allowed)
    assert rows.tolist() == [1, 3] and values.tolist() == [4.0, 2.0]
    assert top_k(scores, 0)[0].size == 0


def test_top_k_breaks_ties_by_row():
    rows, _ = top_k(np.array([1.0, 2.0, 2.0, 2.0]), 2)
    assert rows.tolist() == [1, 2]


def test_regional_data_and_scann_survive_the_atomic_rename(tmp_path):
    from tests.support.retrieval import REGIONS, write_index

    path = write_index(tmp_path, count=2000, scann=True, version="v2")
    loaded = load_index(path)
    assert loaded.regions == REGIONS and loaded.sold_in.shape == (2000, 3)
    assert loaded.scann_dir is not None and loaded.build["ann"] == "scann"
    assert loaded.region_column("DE") == 1 and loaded.region_column("XX") is None
    # ScaNN's assets are stored with relative paths: the folder loads from where it was renamed to.
    from services.retrieval.build import searcher_for

    rows, _ = searcher_for(loaded).search(loaded.embeddings[7], 5)
    expected, _ = ExactSearcher(loaded.embeddings).search(loaded.embeddings[7], 5)
    assert len(set(rows.tolist()) & set(expected.tolist())) >= 4


def test_an_unexpected_file_is_refused(tmp_path):
    path = write(tmp_path)
    (path / "stray.bin").write_bytes(b"x")
    with pytest.raises(InvalidIndex, match="not in the metadata"):
        load_index(path)


def test_a_missing_scann_asset_is_refused(tmp_path):
    from tests.support.retrieval import write_index

    path = write_index(tmp_path, count=1000, scann=True)
    next((path / "scann").glob("*.npy")).unlink()
    with pytest.raises(InvalidIndex, match="missing scann/"):
        load_index(path)
