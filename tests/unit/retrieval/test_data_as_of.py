"""Availability updates are compared with when a version's stock data was exported (``data_as_of``), not with when
the version was written: a version built later from an older export must not bring sold-out items back."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.index import METADATA_FILE, IndexArtifact, load_index, save_index, save_index_like
from services.retrieval.state import IndexHolder, IndexWatcher
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


async def test_an_update_for_an_item_newer_than_the_serving_version_reaches_the_version_that_holds_it(tmp_path):
    # A new item sells out before its index rolls out: the replica serving the older version does not hold it
    # (unknown), and the version that does, exported before the sale, must not serve it as in stock.
    export = write_index(tmp_path / "export", count=320)  # holds I00310
    root = tmp_path / "root"
    write_index(root, count=300, version="20260101T000000Z")
    holder = IndexHolder()
    await holder.load_latest(root)
    await asyncio.sleep(0.01)  # the sale comes after the export
    assert holder.apply_availability([pb.AvailabilityUpdate(item_id="I00310", stock=0)]) == (0, ["I00310"])
    built = save_index_like(load_index(export), root)
    assert await holder.swap(built)
    assert stock(holder, "I00310") == 0 and stock(holder, "I00311") == 10


async def test_a_swap_applies_the_remembered_updates_in_the_load_not_on_the_event_loop(tmp_path, monkeypatch):
    # After a full push every item has an update; applying them one by one on the event loop held every call
    # (0.4 s per 100,000). Only the updates that arrive during the load are left for the loop.
    import threading

    import services.retrieval.state as state

    holder, root, source = await sold_out_after_an_export(tmp_path)
    holder.apply_availability([pb.AvailabilityUpdate(item_id=f"I{i:05d}", stock=i % 3) for i in range(300)])
    on_loop, apply = [], state._apply

    def recorded(index, row, update):
        on_loop.append(threading.get_ident() == loop_thread)
        apply(index, row, update)

    loop_thread = threading.get_ident()
    monkeypatch.setattr(state, "_apply", recorded)
    assert await holder.swap(save_index_like(source, root))
    assert len(on_loop) == 300 and not any(on_loop)
    assert [stock(holder, f"I{i:05d}") for i in range(6)] == [0, 1, 2, 0, 1, 2]


async def test_an_update_that_arrives_while_a_version_loads_is_applied_to_it(tmp_path, monkeypatch):
    import threading

    import services.retrieval.state as state

    holder, root, source = await sold_out_after_an_export(tmp_path)
    applying, apply = asyncio.Event(), state._apply
    loop, loop_thread = asyncio.get_running_loop(), threading.get_ident()

    def slow_apply(index, row, update):
        if threading.get_ident() != loop_thread and not applying.is_set():
            loop.call_soon_threadsafe(applying.set)
            time.sleep(0.3)  # the load applies what it copied while the push goes on
        apply(index, row, update)

    monkeypatch.setattr(state, "_apply", slow_apply)
    swapping = asyncio.ensure_future(holder.swap(save_index_like(source, root)))
    await applying.wait()
    assert holder.apply_availability([pb.AvailabilityUpdate(item_id="I00008", stock=0)]) == (1, [])
    assert await swapping
    assert stock(holder, SOLD_OUT) == 0 and stock(holder, "I00008") == 0 and stock(holder, "I00009") == 10


async def test_rolling_back_to_an_older_version_keeps_the_updates_its_export_predates(tmp_path):
    """A newer export supersedes a push, but a rollback to the version before it must not serve that version's
    export without the pushes made since (an item sold out since would be recommended again)."""
    export = write_index(tmp_path / "export", count=300)
    root = tmp_path / "root"
    write_index(root, count=300, version="20260101T000000Z")
    holder = await serving_with_a_sale(root, export)
    await asyncio.sleep(0.01)
    fresh = write_index(root, count=300, version="20260102T000000Z")  # its stock data is newer than the push
    assert await holder.swap(fresh) and stock(holder, SOLD_OUT) == 10
    shutil.rmtree(fresh)  # rolled back: the watcher goes back to the version left
    assert await IndexWatcher(holder, root, 0).check_once()
    assert holder.current.artifact.version == "20260101T000000Z" and stock(holder, SOLD_OUT) == 0


async def test_an_update_numbered_but_not_yet_filed_when_a_load_reads_the_state_reaches_the_new_version(
    tmp_path, monkeypatch
):
    """The load reads the updates in its own thread while the loop applies a push: between numbering an update and
    filing it, the load's copies lack it, and the swap must still apply it."""
    import services.retrieval.state as state

    holder, root, source = await sold_out_after_an_export(tmp_path)
    built, loaded, real_file = save_index_like(source, root), [], state._file

    def file_once_the_load_has_read(index, item, update, updates, pending, apply=True):
        if not loaded and index is holder.current:  # the push, on the loop: the load reads the state right here
            loaded.append(holder.open(built))
        return real_file(index, item, update, updates, pending, apply)

    monkeypatch.setattr(state, "_file", file_once_the_load_has_read)
    assert holder.apply_availability([pb.AvailabilityUpdate(item_id="I00008", stock=0)]) == (1, [])
    monkeypatch.setattr(state, "_file", real_file)
    holder.adopt(loaded[0])  # as swap() does, on the loop, once the load is done
    holder.current = loaded[0]
    assert stock(holder, "I00008") == 0 and stock(holder, SOLD_OUT) == 0
