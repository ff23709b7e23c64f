"""``aisle refresh-features``: a trained version's item features rebuilt from newer data of the same shop, written
as a new version folder that ``aisle models publish`` takes in (same model, fresh snapshot)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from services.cli import main
from services.ranking.features import FEATURES_FILE, STATIC_FEATURES, TRENDING_COLUMN, ItemFeatureSnapshot
from services.ranking.model_config import model_versions
from services.ranking.repository import publish
from services.retrieval.index import index_versions, latest_version, load_index
from tests.support.tiny_training import SHOP, TINY
from training.data.loaders import load_dataset
from training.data.schema import Dataset
from training.data.splits import split_dataset
from training.features import RecentSales, export_sales, item_snapshot
from training.refresh import RefreshError, refresh_features, refresh_index
from training.run import TrainingRun, train_and_export

PROJECT_ROOT = Path(__file__).resolve().parents[3]
NEWER = {**SHOP, "seed": SHOP["seed"] + 1}  # the same shop's catalog, other (newer) sales


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> TrainingRun:
    root = tmp_path_factory.mktemp("refresh")
    repository = root / "model_repository"
    (repository / "sequence_ranker").mkdir(parents=True)
    shutil.copy(PROJECT_ROOT / "model_repository" / "sequence_ranker" / "config.pbtxt", repository / "sequence_ranker")
    return train_and_export(SHOP, root / "artifacts", repository, config=TINY, progress=False)


@pytest.fixture
def version(run: TrainingRun) -> Path:
    return run.ranker_dir


@pytest.fixture(scope="module")
def newer() -> Dataset:
    return load_dataset(NEWER)


def test_the_refreshed_snapshot_is_the_newer_data_as_history(version, newer, tmp_path):
    out = tmp_path / "fresh"
    refreshed = refresh_features(newer, version, out)
    dataset = newer
    history = split_dataset(dataset, min_baskets=sys.maxsize)
    assert not history.validation and len(history.train) > 0  # nothing held out
    want = item_snapshot(dataset.catalog, history)
    got, before = ItemFeatureSnapshot.load(out / FEATURES_FILE), ItemFeatureSnapshot.load(version / FEATURES_FILE)
    assert got.names == STATIC_FEATURES and refreshed.matched == len(got) and refreshed.missing == 0
    assert np.array_equal(got.values[1:], want.values[1:])  # the synthetic catalog keeps its order
    sales = RecentSales.from_split(history)  # every basket: nothing is held out
    assert np.allclose(got.values[1:, TRENDING_COLUMN], np.log1p(sales.rate_at(sales.latest_moment())))
    assert np.array_equal(got.values[0], before.values[0])  # the version's defaults for unknown items
    assert not np.array_equal(got.values, before.values)
    # The model, vocabulary and parity sample are the version's own; metadata says what refreshed the features.
    for name in ("model.onnx", "item_vocabulary.txt"):
        assert (out / name).read_bytes() == (version / name).read_bytes()
    features = json.loads((out / "metadata.json").read_text())["features"]
    assert features["from_version"] == version.name and features["data"]["fingerprint"] == dataset.fingerprint
    assert features["newest_day"] == refreshed.newest_day and features["vocabulary_items_missing"] == 0
    # `aisle models publish` validates the folder and adds it as the next version.
    repository = tmp_path / "repository"
    shutil.copytree(version.parent, repository / version.parent.name)
    published = publish(out, repository / version.parent.name)
    assert published.version == 2 and model_versions(repository / version.parent.name) == [1, 2]


def test_items_gone_from_the_catalog_keep_their_columns_without_recent_sales(version, newer, tmp_path):
    dataset = newer
    gone = dataset.catalog.item_ids[0]
    vocabulary = (version / "item_vocabulary.txt").read_text().splitlines()
    source = tmp_path / "version"
    shutil.copytree(version, source)
    renamed = [f"RETIRED-{item}" if item == gone else item for item in vocabulary]
    (source / "item_vocabulary.txt").write_text("\n".join(renamed) + "\n")
    refreshed = refresh_features(newer, source, tmp_path / "fresh")
    assert refreshed.missing == 1
    got, before = (
        ItemFeatureSnapshot.load(tmp_path / "fresh" / FEATURES_FILE),
        ItemFeatureSnapshot.load(source / FEATURES_FILE),
    )
    token = renamed.index(f"RETIRED-{gone}") + 1
    others = [c for c in range(len(STATIC_FEATURES)) if c != TRENDING_COLUMN]
    assert np.array_equal(got.values[token, others], before.values[token, others])
    assert got.values[token, TRENDING_COLUMN] == 0.0


def test_refresh_refuses_what_it_cannot_refresh_and_writes_nothing(version, newer, tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(RefreshError, match="already exists"):
        refresh_features(newer, version, taken)
    other_shop = tmp_path / "other.txt"
    other_shop.write_text("u1 x1 x2 x3\nu2 x2 x3\n", encoding="utf-8")
    with pytest.raises(RefreshError, match="same shop"):
        refresh_features(load_dataset({"format": "auto", "path": str(other_shop)}), version, tmp_path / "a")
    old = tmp_path / "old-version"
    shutil.copytree(version, old)
    snapshot = ItemFeatureSnapshot.load(version / FEATURES_FILE)
    ItemFeatureSnapshot(STATIC_FEATURES[:-1], snapshot.values[:, :-1]).save(old / FEATURES_FILE)
    with pytest.raises(RefreshError, match="retrain"):
        refresh_features(newer, old, tmp_path / "b")
    with pytest.raises(RefreshError, match="inside the model folder"):
        refresh_features(newer, version, version.parent / "2")
    assert not (version.parent / "2").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old-version", "other.txt", "taken"]


def test_a_refresh_that_fails_while_writing_leaves_nothing(version, newer, tmp_path, monkeypatch):
    def disk_full(self, path):
        path.write_bytes(b"half")
        raise OSError("No space left on device")

    monkeypatch.setattr(ItemFeatureSnapshot, "save", disk_full)
    with pytest.raises(OSError, match="No space"):
        refresh_features(newer, version, tmp_path / "fresh")
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its staging copy


def test_the_cli_writes_the_folder_and_names_the_publish_step(run, version, tmp_path):
    data = tmp_path / "sequences.txt"
    vocabulary = (version / "item_vocabulary.txt").read_text().splitlines()
    data.write_text(f"u1 {vocabulary[0]} {vocabulary[1]}\nu2 {vocabulary[1]}\n", encoding="utf-8")
    runner = CliRunner()
    repository = version.parent.parent
    out = tmp_path / "fresh"
    args = ["refresh-features", "--model-repository", str(repository), "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code != 0 and "--data is required" in result.output
    index = tmp_path / "index"
    shutil.copytree(run.index_dir.parent, index)
    result = runner.invoke(main, [*args, "--data", str(data), "--index", str(index)])
    assert result.exit_code == 0, result.output
    assert f"aisle models publish {out}" in result.output and (out / "model.onnx").is_file()
    assert f"{len(vocabulary) - 2} no longer in the catalog" in result.output
    assert f"index:         {latest_version(index)}" in result.output and len(list(index.iterdir())) == 2
    result = runner.invoke(main, [*args, "--data", str(data), "--version", "7"])
    assert result.exit_code == 1 and "version 7" in result.output


def test_the_index_gets_a_version_with_the_newer_recent_sales(run, newer, tmp_path):
    root = tmp_path / "index"
    shutil.copytree(run.index_dir.parent, root)
    before = load_index(latest_version(root))
    path = refresh_index(newer, root, TINY.trending_days)
    after = load_index(path)
    assert latest_version(root) == path and after.version != before.version
    assert np.array_equal(after.trending, export_sales(newer, TINY.trending_days).latest().astype(np.float32))
    assert not np.array_equal(after.trending, before.trending)
    for unchanged in ("embeddings", "popularity", "stock", "sold_in", "region_popularity"):
        assert np.array_equal(getattr(after, unchanged), getattr(before, unchanged)), unchanged
    assert after.item_ids == before.item_ids and after.query_tower is not None
    assert np.array_equal(after.covisitation.indptr, before.covisitation.indptr)
    with pytest.raises(RefreshError, match="cannot read"):
        refresh_index(newer, tmp_path / "no-index", TINY.trending_days)


def test_a_wrong_index_is_refused_before_out_is_written(run, version, tmp_path):
    data = tmp_path / "sequences.txt"
    vocabulary = (version / "item_vocabulary.txt").read_text().splitlines()
    data.write_text(f"u1 {vocabulary[0]} {vocabulary[1]}\n", encoding="utf-8")
    out, empty = tmp_path / "fresh", tmp_path / "empty"
    empty.mkdir()
    args = ["refresh-features", "--model-repository", str(version.parent.parent), "--data", str(data)]
    runner = CliRunner()
    result = runner.invoke(main, [*args, "--out", str(out), "--index", str(empty)])
    assert result.exit_code == 1 and "cannot read the index" in result.output and not out.exists()
    index = tmp_path / "index"
    shutil.copytree(run.index_dir.parent, index)
    served = latest_version(index)
    before = sorted(p.name for p in served.iterdir())
    result = runner.invoke(main, [*args, "--out", str(out), "--index", str(served)])
    assert (
        result.exit_code == 1
        and f"is an index version, not an index root: pass the folder of versions, --index {index}" in result.output
    )
    assert not out.exists() and sorted(p.name for p in served.iterdir()) == before
    result = runner.invoke(main, [*args, "--out", str(out), "--index", str(index)])  # the corrected retry
    assert result.exit_code == 0, result.output
    assert (out / "model.onnx").is_file() and len(index_versions(index)) == 2


def test_a_version_with_a_truncated_snapshot_is_refused(version, newer, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(version, cut)
    (cut / FEATURES_FILE).write_bytes((version / FEATURES_FILE).read_bytes()[:300])
    with pytest.raises(RefreshError, match=f"{FEATURES_FILE}: not a readable item feature snapshot"):
        refresh_features(newer, cut, tmp_path / "fresh")
    assert not (tmp_path / "fresh").exists()


def test_refresh_features_names_a_data_file_it_cannot_read(version, tmp_path):
    data = tmp_path / "events.parquet"
    data.write_text("event_type,timestamp,user_id,item_id\n", encoding="utf-8")
    args = ["refresh-features", "--model-repository", str(version.parent.parent), "--data", str(data)]
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "fresh")])
    assert result.exit_code == 1 and "cannot read" in result.output and "Traceback" not in result.output
