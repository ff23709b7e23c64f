from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest

from services.retrieval.covisitation import CoVisitationTable
from services.retrieval.index import (
    ATTRIBUTES_FILE,
    COVISITATION_ANCHORS_FILE,
    COVISITATION_FILE,
    EMBEDDINGS_FILE,
    METADATA_FILE,
    InvalidIndex,
    index_versions,
    latest_version,
    load_index,
    new_version,
    save_index,
)
from services.retrieval.search import ExactSearcher, top_k
from tests.support.retrieval import covisitation_table


def write(root, count=20, dim=4, version=None, seed=0, **extra):
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
        **extra,
    )


def replace_file(path, name, data: bytes | None):
    """Replaces (or with None removes) one file of a version and its checksum, as a buggy writer would."""
    metadata = json.loads((path / METADATA_FILE).read_text())
    if data is None:
        (path / name).unlink()
        del metadata["checksums"][name]
    else:
        (path / name).write_bytes(data)
        metadata["checksums"][name] = hashlib.sha256(data).hexdigest()
    (path / METADATA_FILE).write_text(json.dumps(metadata))


def packed(indptr, rows, scores) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, indptr=np.asarray(indptr), rows=np.asarray(rows), scores=np.asarray(scores))
    return buffer.getvalue()


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


def test_a_new_version_sorts_after_the_newest_even_when_the_clock_is_behind_it(tmp_path):
    """Servers serve the name that sorts last: a version written after the clock stepped back (or by a machine
    whose clock is behind the one that wrote the newest) is named 1 us after the newest, not by the clock."""
    write(tmp_path, version="21000101T000000000000Z")  # written by a clock far ahead
    write(tmp_path, version="zz-by-hand")  # a name given by hand is not compared
    made = write(tmp_path)
    assert made.name == "21000101T000000000001Z"
    assert index_versions(tmp_path)[-2] == made  # after every time-named version
    others = tmp_path / "shard-0"
    write(others, version="21000101T000000000005Z")
    assert new_version(tmp_path, others) == "21000101T000000000006Z"  # later than the newest under every root
    assert new_version(tmp_path / "missing") < "21000101T000000000000Z"  # with nothing to follow: the clock
    seconds = tmp_path / "named-to-the-second"  # as older builds and the tests name versions
    write(seconds, version="21000101T000059Z")
    assert new_version(seconds) == "21000101T000100000000Z" > "21000101T000059Z"  # not 00:00:05.9 + 1 us
    write(tmp_path / "no-date", version="20241301T000000Z")  # month 13: digits, but no time
    assert new_version(tmp_path / "no-date") < "21000101T000000000000Z"


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


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda metadata: [metadata], "is not an object"),
        (lambda metadata: {**metadata, "checksums": []}, "is not an object with a checksums object"),
        (lambda metadata: {**metadata, "build": []}, "unreadable: AttributeError"),
    ],
)
def test_metadata_of_the_wrong_shape_is_refused_as_an_invalid_index(tmp_path, change, message):
    path = write(tmp_path)
    metadata = json.loads((path / METADATA_FILE).read_text())
    (path / METADATA_FILE).write_text(json.dumps(change(metadata)))
    with pytest.raises(InvalidIndex, match=message):
        load_index(path)
    # Valid JSON too: attributes of the wrong shape are refused alike (their checksum matched: made by hand).
    path = write(tmp_path / "attributes")
    metadata = json.loads((path / METADATA_FILE).read_text())
    (path / ATTRIBUTES_FILE).write_text("[]")
    metadata["checksums"][ATTRIBUTES_FILE] = hashlib.sha256(b"[]").hexdigest()
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    with pytest.raises(InvalidIndex, match="unreadable"):
        load_index(path)


def test_missing_root_says_how_to_make_one(tmp_path):
    with pytest.raises(InvalidIndex, match="aisle train"):
        latest_version(tmp_path / "nope")


def test_a_version_folder_is_refused_as_a_root_and_left_as_it_was(tmp_path):
    version = write(tmp_path, version="v1")
    files = sorted(p.name for p in version.iterdir())
    with pytest.raises(
        ValueError, match=f"is an index version, not a folder of versions: write to its parent, {tmp_path}"
    ):
        write(version, version="v2")
    assert sorted(p.name for p in version.iterdir()) == files
    assert load_index(latest_version(tmp_path)).item_ids  # still loads: nothing was written into it


def test_an_index_without_items_is_refused(tmp_path):
    with pytest.raises(ValueError, match="at least one item"):
        write(tmp_path, count=0)
    assert not list(tmp_path.iterdir())


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


REGIONAL = dict(
    regions=["GB", "DE", "FR"],
    sold_in=np.tile([[True, True, True], [True, False, False]], (10, 1)),
    region_popularity=np.ones((3, 20)),
)


def test_what_is_sold_everywhere_and_which_regions_rank_by_their_own_sales_round_trip(tmp_path):
    # Item 0 is restricted to all three listed regions: sold in each, but not in a region the index does not list.
    everywhere = np.tile([True, False], 10)
    everywhere[0] = False
    loaded = load_index(write(tmp_path, sold_everywhere=everywhere, popularity_regions=["GB", "DE"], **REGIONAL))
    assert loaded.sold_everywhere.tolist() == everywhere.tolist()
    assert loaded.popularity_regions == {"GB", "DE"}
    metadata = json.loads((loaded.path / METADATA_FILE).read_text())
    assert metadata["popularity_regions"] == ["DE", "GB"] and metadata["regional_popularity"] is False
    # The defaults: sold everywhere = sold in every listed region; sales by region given = every region's own.
    loaded = load_index(write(tmp_path / "defaults", **REGIONAL))
    assert loaded.sold_everywhere.tolist() == [True, False] * 10
    assert loaded.popularity_regions == {"GB", "DE", "FR"}
    assert json.loads((loaded.path / METADATA_FILE).read_text())["regional_popularity"] is True
    without_sales = {**REGIONAL, "region_popularity": None}
    assert load_index(write(tmp_path / "shop", **without_sales)).popularity_regions == frozenset()


@pytest.mark.parametrize(("regional_popularity", "ranked"), [(True, {"GB", "DE", "FR"}), (False, set()), (None, None)])
def test_a_version_written_before_sold_everywhere_and_popularity_regions_reads_as_it_was_served(
    tmp_path, regional_popularity, ranked
):
    path = write(tmp_path, **REGIONAL)
    with np.load(path / "item_table.npz") as table:
        columns = {name: table[name] for name in table.files if name != "sold_everywhere"}
    buffer = io.BytesIO()
    np.savez(buffer, **columns)
    replace_file(path, "item_table.npz", buffer.getvalue())
    metadata = json.loads((path / METADATA_FILE).read_text())
    del metadata["popularity_regions"]
    if regional_popularity is None:  # older still: regional whenever it names regions
        del metadata["regional_popularity"]
    else:
        metadata["regional_popularity"] = regional_popularity
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    loaded = load_index(path)
    assert loaded.sold_everywhere.tolist() == [True, False] * 10
    assert loaded.popularity_regions == (ranked if ranked is not None else {"GB", "DE", "FR"})


def test_regional_data_that_does_not_fit_is_refused(tmp_path):
    # A region no request could name (context.region takes codes) would be a column that never serves.
    with pytest.raises(ValueError, match=r"regions \['United Kingdom'\] are not region codes"):
        write(tmp_path, **{**REGIONAL, "regions": ["GB", "DE", "United Kingdom"]})
    with pytest.raises(ValueError, match=r"popularity_regions \['NL'\] are not in regions"):
        write(tmp_path, popularity_regions=["GB", "NL"], **REGIONAL)
    with pytest.raises(ValueError, match="sold_everywhere must have one entry per item"):
        write(tmp_path, sold_everywhere=np.ones(19, dtype=bool), **REGIONAL)
    assert not list(tmp_path.iterdir())  # refused before anything was written
    path = write(tmp_path, **REGIONAL)
    metadata = json.loads((path / METADATA_FILE).read_text())
    (path / METADATA_FILE).write_text(json.dumps({**metadata, "popularity_regions": ["NL"]}))
    with pytest.raises(InvalidIndex, match=r"popularity_regions \['NL'\] must be a list of the index's regions"):
        load_index(path)
    with np.load(path / "item_table.npz") as table:
        columns = {name: table[name] for name in table.files}
    buffer = io.BytesIO()
    np.savez(buffer, **{**columns, "sold_everywhere": np.ones(7, dtype=bool)})
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    replace_file(path, "item_table.npz", buffer.getvalue())
    with pytest.raises(InvalidIndex, match="shapes disagree"):
        load_index(path)


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


def test_covisitation_round_trip(tmp_path):
    table = covisitation_table(20)
    loaded = load_index(write(tmp_path, covisitation=table))
    assert loaded.covisitation_anchors is None and not (loaded.path / COVISITATION_ANCHORS_FILE).exists()
    assert loaded.covisitation.indptr.tolist() == table.indptr.tolist()
    assert loaded.covisitation.rows.tolist() == table.rows.tolist()
    assert loaded.covisitation.scores.tolist() == table.scores.tolist()
    assert loaded.covisitation.rows.dtype == np.int64 and loaded.covisitation.scores.dtype == np.float32
    # A table keyed by other anchors (a shard's: every catalog item) keeps their ids.
    anchors = [f"a{n}" for n in range(25)]
    keyed = CoVisitationTable(
        np.arange(26, dtype=np.int64), np.arange(25, dtype=np.int64) % 20, np.linspace(1, 2, 25, dtype=np.float32)
    )
    loaded = load_index(write(tmp_path / "keyed", covisitation=keyed, covisitation_anchors=anchors))
    assert loaded.covisitation_anchors == anchors
    assert loaded.covisitation.rows.tolist() == keyed.rows.tolist()
    assert loaded.covisitation.scores.tolist() == keyed.scores.tolist()


def test_an_index_without_covisitation_loads_without_it(tmp_path):
    loaded = load_index(write(tmp_path))
    assert loaded.covisitation is None and loaded.covisitation_anchors is None
    assert not (loaded.path / COVISITATION_FILE).exists()


def test_the_support_index_carries_the_known_covisitation_table(tmp_path):
    from tests.support.retrieval import write_index

    loaded = load_index(write_index(tmp_path, count=100, covisitation=True))
    start, end = loaded.covisitation.indptr[98], loaded.covisitation.indptr[99]
    assert loaded.covisitation.rows[start:end].tolist() == [99, 0, 1, 2, 3]
    assert loaded.covisitation.scores[start:end].tolist() == pytest.approx([1.0, 0.8, 0.6, 0.4, 0.2])


@pytest.mark.parametrize(
    ("table", "anchors", "message"),
    [
        (covisitation_table(19), None, "has 19 anchors, expected 20"),
        (covisitation_table(20), [f"a{n}" for n in range(21)], "has 20 anchors, expected 21"),
        (CoVisitationTable(np.array([0] * 20 + [1]), np.array([20]), np.array([1.0], np.float32)), None, "rows"),
        (CoVisitationTable(np.array([0] * 20 + [1]), np.array([-1]), np.array([1.0], np.float32)), None, "rows"),
    ],
)
def test_bad_covisitation_is_refused_before_writing(tmp_path, table, anchors, message):
    with pytest.raises(ValueError, match=message):
        write(tmp_path, covisitation=table, covisitation_anchors=anchors)
    assert not list(tmp_path.iterdir())


def test_a_corrupt_covisitation_table_is_refused_by_checksum(tmp_path):
    path = write(tmp_path, covisitation=covisitation_table(20))
    data = bytearray((path / COVISITATION_FILE).read_bytes())
    data[-1] ^= 0xFF
    (path / COVISITATION_FILE).write_bytes(bytes(data))
    with pytest.raises(InvalidIndex, match="checksum mismatch for covisitation.npz"):
        load_index(path)


@pytest.mark.parametrize(
    ("indptr", "rows", "scores", "message"),
    [
        ([0] * 20 + [1], [20], [1.0], r"covisitation\.npz: co-visitation rows must lie in \[0, 20\)"),
        ([0] * 20 + [1], [-3], [1.0], r"covisitation\.npz: co-visitation rows"),
        ([0] * 19 + [1], [3], [1.0], r"covisitation\.npz: the co-visitation table has 19 anchors, expected 20"),
        ([0] * 20 + [1], [3], [0.0], r"covisitation\.npz: co-visitation scores must be finite and positive"),
        ([0] * 20 + [1], [3], [-1.0], r"covisitation\.npz: co-visitation scores"),
        ([0] * 20 + [1], [3], [np.nan], r"covisitation\.npz: co-visitation scores"),
        ([1] * 21, [3], [1.0], r"covisitation\.npz: indptr must be a 1-d array starting at 0"),
        ([0] * 20 + [2], [3], [1.0], r"covisitation\.npz: indptr must be non-decreasing"),
        ([0, 1] + [0] * 19, [3], [1.0], r"covisitation\.npz: indptr must be non-decreasing"),
        ([0] * 20 + [1], [3.0], [1.0], r"covisitation\.npz: rows must be integers"),
        ([0.0] * 20 + [1.0], [3], [1.0], r"covisitation\.npz: indptr must be integers"),
        ([0] * 20 + [2], [3, 4], [0.5, 1.0], r"covisitation\.npz: co-visitation scores must be best first"),
    ],
)
def test_a_bad_covisitation_table_is_refused_naming_the_file(tmp_path, indptr, rows, scores, message):
    path = write(tmp_path, covisitation=covisitation_table(20))
    replace_file(path, COVISITATION_FILE, packed(indptr, rows, scores))
    with pytest.raises(InvalidIndex, match=message):
        load_index(path)


def test_best_first_is_checked_within_each_anchor_only(tmp_path):
    # Anchor 0 ends at 0.5 and anchor 1 starts at 1.0: allowed; each list is best first.
    table = CoVisitationTable(
        np.array([0, 2] + [3] * 19), np.array([1, 2, 3]), np.array([0.9, 0.5, 1.0], dtype=np.float32)
    )
    assert load_index(write(tmp_path, covisitation=table)).covisitation.scores.tolist() == pytest.approx([0.9, 0.5, 1])


def test_anchor_ids_must_be_unique_and_a_shard_needs_them(tmp_path):
    anchors = [f"a{n}" for n in range(20)]
    with pytest.raises(ValueError, match="anchor ids must be unique"):
        write(tmp_path / "dup", covisitation=covisitation_table(20), covisitation_anchors=anchors[:-1] + ["a0"])
    path = write(tmp_path / "ok", covisitation=covisitation_table(20), covisitation_anchors=anchors)
    replace_file(path, COVISITATION_ANCHORS_FILE, "".join(f"{a}\n" for a in anchors[:-1] + ["a0"]).encode())
    with pytest.raises(InvalidIndex, match="anchor ids must be unique"):
        load_index(path)
    shard = write(tmp_path / "shard", covisitation=covisitation_table(20), sharding={"shards": 2, "shard": 0})
    with pytest.raises(InvalidIndex, match="a shard's covisitation.npz needs covisitation_anchors.txt"):
        load_index(shard)


def test_covisitation_anchors_must_match_the_table(tmp_path):
    anchors = [f"a{n}" for n in range(20)]
    path = write(tmp_path, covisitation=covisitation_table(20), covisitation_anchors=anchors)
    assert load_index(path).covisitation_anchors == anchors
    replace_file(path, COVISITATION_ANCHORS_FILE, "".join(f"{a}\n" for a in anchors[:-1]).encode())
    with pytest.raises(InvalidIndex, match="covisitation.npz: the co-visitation table has 20 anchors, expected 19"):
        load_index(path)
    replace_file(path, COVISITATION_FILE, None)
    with pytest.raises(InvalidIndex, match="covisitation_anchors.txt without covisitation.npz"):
        load_index(path)


@pytest.mark.parametrize(
    "content",
    [
        "garbage",
        "no scores",
        "truncated",
    ],
)
def test_an_unreadable_covisitation_table_is_refused(tmp_path, content):
    path = write(tmp_path, covisitation=covisitation_table(20))
    if content == "garbage":
        data = b"garbage"
    elif content == "no scores":
        buffer = io.BytesIO()
        np.savez(buffer, indptr=np.zeros(21, np.int64), rows=np.zeros(0, np.int64))
        data = buffer.getvalue()
    else:
        data = (path / COVISITATION_FILE).read_bytes()[:60]
    replace_file(path, COVISITATION_FILE, data)
    with pytest.raises(InvalidIndex, match="covisitation.npz"):
        load_index(path)
