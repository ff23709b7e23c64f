"""Availability updates are compared with when a version's stock data was exported (``data_as_of``), not with when
the version was written: a version built later from an older export must not bring sold-out items back."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime
from pathlib import Path

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.index import METADATA_FILE, IndexArtifact, load_index, save_index, save_index_like
from services.retrieval.state import IndexHolder
from tests.support.retrieval import write_index

SOLD_OUT = "I00007"


async def serving_with_a_sale(root, export) -> IndexHolder:
    """A replica serving ``root``'s newest version, told after ``export`` was written that SOLD_OUT sold out."""
    holder = IndexHolder()
    await holder.load_latest(root)
    await asyncio.sleep(0.01)  # the push comes after the export, by the clock the metadata uses too
    assert load_index(export).data_as_of < time.time() and stock(holder, SOLD_OUT) == 10
    assert holder.apply_availability([pb.AvailabilityUpdate(item_id=SOLD_OUT, stock=0)]) == (1, [])
    return holder


def stock(holder: IndexHolder, item: str) -> int:
    serving = holder.current
    return int(serving.availability.stock[serving.rows[item]])


async def sold_out_after_an_export(tmp_path) -> tuple[IndexHolder, Path, IndexArtifact]:
    """A replica serving a version under ``root``, told of SOLD_OUT's sale after an export was written: (the
    replica, root, the export)."""
    export = write_index(tmp_path / "export", count=300)
    root = tmp_path / "root"
    write_index(root, count=300, version="20260101T000000Z")
    holder = await serving_with_a_sale(root, export)
    await asyncio.sleep(0.01)
    return holder, root, load_index(export)


async def test_a_version_built_later_from_an_older_export_keeps_the_updates_pushed_since(tmp_path):
    holder, root, source = await sold_out_after_an_export(tmp_path)
    built = save_index_like(source, root)  # as `aisle index build` and `aisle refresh` derive a version
    after = load_index(built)
    assert after.created_at > time.time() - 60 and after.created_at > source.created_at
    assert after.data_as_of == source.data_as_of  # the stock data is the export's
    assert await holder.swap(built) and holder.current.artifact.path == built
    assert stock(holder, SOLD_OUT) == 0  # still sold out


async def test_an_update_older_than_the_versions_stock_data_is_superseded_by_it(tmp_path):
    export = write_index(tmp_path / "export", count=300)
    root = tmp_path / "root"
    write_index(root, count=300, version="20260101T000000Z")
    holder = await serving_with_a_sale(root, export)
    await asyncio.sleep(0.01)
    fresh = write_index(root, count=300, version="20260102T000000Z")  # a new export: its stock data is newer
    assert await holder.swap(fresh)
    assert stock(holder, SOLD_OUT) == load_index(fresh).stock[holder.current.rows[SOLD_OUT]] == 10


def test_save_index_records_when_the_stock_data_was_exported(tmp_path):
    ids = ["a", "b"]
    kwargs = dict(
        item_ids=ids, embeddings=[[1.0], [2.0]], popularity=[1, 2], categories=ids, brands=ids, model_name="m"
    )
    given = save_index(tmp_path, model_version="1", data_as_of=1_700_000_000.25, **kwargs)
    metadata = json.loads((given / METADATA_FILE).read_text())
    assert metadata["data_as_of"] == datetime.fromtimestamp(1_700_000_000.25, UTC).isoformat()
    assert load_index(given).data_as_of == 1_700_000_000.25
    written = save_index(tmp_path, model_version="2", stock=[1, 0], **kwargs)  # default: as of the export, now
    artifact = load_index(written)
    assert artifact.data_as_of == artifact.created_at
    # No stock data at all (what `aisle train` writes): every update pushed so far still applies.
    assert load_index(save_index(tmp_path, model_version="3", **kwargs)).data_as_of == 0.0


async def test_a_version_without_stock_data_keeps_every_update_pushed_before_it(tmp_path):
    """`aisle train` writes an index from the model alone (every item in stock): a sale pushed before it was
    written must still hold once a replica swaps it in, or sold-out items come back."""
    holder, root, source = await sold_out_after_an_export(tmp_path)
    trained = save_index(
        root,
        version="20260103T000000Z",
        item_ids=source.item_ids,
        embeddings=source.embeddings,
        popularity=source.popularity,
        categories=source.categories,
        brands=source.brands,
        model_name="two_tower",
        model_version="2",
    )
    assert load_index(trained).data_as_of == 0.0
    assert await holder.swap(trained)
    assert stock(holder, SOLD_OUT) == 0  # still sold out


async def test_an_index_written_before_data_as_of_falls_back_to_its_created_at(tmp_path):
    export = write_index(tmp_path / "export", count=300)
    root = tmp_path / "root"
    write_index(root, count=300, version="20260101T000000Z")
    holder = await serving_with_a_sale(root, export)

    def older_format(version, created_at):
        path = write_index(root, count=300, version=version)
        metadata = json.loads((path / METADATA_FILE).read_text())
        del metadata["data_as_of"]
        metadata["created_at"] = created_at
        (path / METADATA_FILE).write_text(json.dumps(metadata))
        artifact = load_index(path)  # still loads
        assert artifact.data_as_of == artifact.created_at
        return path

    # Written before the update: the update still applies.
    assert await holder.swap(older_format("20260102T000000Z", "2000-01-01T00:00:00+00:00"))
    assert stock(holder, SOLD_OUT) == 0
    # Written after it: its data supersedes the update.
    assert await holder.swap(older_format("20260103T000000Z", datetime.now(UTC).isoformat()))
    assert stock(holder, SOLD_OUT) == 10
