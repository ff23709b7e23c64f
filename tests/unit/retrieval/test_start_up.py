"""Start-up with a bad newest index version on disk: a restarted replica serves what the running ones kept serving
(the newest version that passes), refusing each newer one as a running replica refuses it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from services.retrieval import state
from services.retrieval.build import ScannConfig, build_scann
from services.retrieval.index import METADATA_FILE, InvalidIndex, save_index
from services.retrieval.router import QueryDataHolder
from services.retrieval.state import IndexHolder, IndexWatcher
from tests.support.retrieval import write_index

ITEMS = 3000


def low_recall_scann(root, version):
    """A real ScaNN version that searches 1 leaf of 300 (as `aisle index build --leaves 300 --search-fraction
    0.004` writes it): it loads, and fails the recall spot-check."""
    rng = np.random.default_rng(0)
    config = ScannConfig(num_leaves=300, leaves_to_search=1, training_sample_size=ITEMS)
    return save_index(
        root,
        item_ids=[f"I{i:05d}" for i in range(ITEMS)],
        embeddings=rng.normal(size=(ITEMS, 32)).astype(np.float32),
        popularity=rng.random(ITEMS),
        categories=["c"] * ITEMS,
        brands=["b"] * ITEMS,
        model_name="test",
        model_version="2",
        version=version,
        build_ann=lambda vectors, folder: build_scann(vectors, folder, config),
    )


def corrupt(path):
    metadata = json.loads((path / METADATA_FILE).read_text())
    metadata["checksums"]["item_ids.txt"] = "0" * 64
    (path / METADATA_FILE).write_text(json.dumps(metadata))
    return path


def count_opens(monkeypatch) -> list[str]:
    opened: list[str] = []
    real_open = state.open_index
    monkeypatch.setattr(state, "open_index", lambda path, *a: opened.append(path.name) or real_open(path, *a))
    return opened


async def test_a_restart_walks_back_past_bad_newer_versions_and_remembers_them(tmp_path, monkeypatch, caplog):
    good = write_index(tmp_path, count=300, version="20260101T000000Z")
    low_recall = low_recall_scann(tmp_path, "20260102T000000Z")
    broken = corrupt(write_index(tmp_path, count=300, version="20260103T000000Z", seed=1))
    opened = count_opens(monkeypatch)
    holder = IndexHolder()
    with caplog.at_level(logging.INFO, logger=state.__name__):
        await holder.load_latest(tmp_path)
    assert holder.current.artifact.path == good
    assert opened == [broken.name, low_recall.name, good.name]  # newest first
    # One loud line per refused version, naming it and why; then one saying what serves instead.
    refusals = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(refusals) == 2 and all("\n" not in r.getMessage() for r in refusals)
    assert broken.name in refusals[0].getMessage() and "checksum mismatch for item_ids.txt" in refusals[0].getMessage()
    assert low_recall.name in refusals[1].getMessage() and "recall spot-check" in refusals[1].getMessage()
    assert f"serving index {good.name}, older than the newest" in caplog.text
    # Recorded as a running replica records them: the watcher does not load them again on every poll.
    assert broken in holder.refused and low_recall in holder.refused
    watcher = IndexWatcher(holder, tmp_path, interval_s=0)
    assert not await watcher.check_once() and not await watcher.check_once()
    assert len(opened) == 3
    newer = write_index(tmp_path, count=300, version="20260104T000000Z", seed=2)
    assert await watcher.check_once() and holder.current.artifact.path == newer


async def test_start_up_fails_only_when_no_version_passes(tmp_path):
    corrupt(write_index(tmp_path, count=300, version="20260101T000000Z"))
    newest = corrupt(write_index(tmp_path, count=300, version="20260102T000000Z", seed=1))
    holder = IndexHolder()
    with pytest.raises(
        InvalidIndex, match=f"none of the 2 versions .* the newest, {newest.name}, was refused: .*checksum"
    ):
        await holder.load_latest(tmp_path)
    assert holder.current is None


async def test_a_version_folder_given_as_the_index_path_is_the_only_one_tried(tmp_path):
    write_index(tmp_path, count=300, version="20260101T000000Z")
    pinned = corrupt(write_index(tmp_path, count=300, version="20260102T000000Z", seed=1))
    with pytest.raises(InvalidIndex, match=f"{pinned} was refused: .*checksum mismatch"):
        await IndexHolder().load_latest(pinned)


async def test_the_router_walks_back_past_query_data_built_for_other_shards(tmp_path):
    good = write_index(tmp_path, count=300, version="20260101T000000Z")
    other = write_index(tmp_path, count=300, version="20260102T000000Z", seed=1)
    metadata = json.loads((other / METADATA_FILE).read_text())
    metadata["build"]["shards"] = 4
    (other / METADATA_FILE).write_text(json.dumps(metadata))
    holder = QueryDataHolder(shards=1)
    await holder.load_latest(tmp_path)
    assert holder.current.artifact.path == good and "built for 4 shards" in holder.refused.reason(other)
