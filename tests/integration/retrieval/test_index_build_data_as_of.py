"""`aisle index build` makes a version later than the export it reads: its stock data is still the export's, so a
replica that swaps it in must keep the availability updates pushed since the export."""

from __future__ import annotations

import asyncio

from click.testing import CliRunner

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.retrieval.index import index_versions, latest_version, load_index
from services.retrieval.index_cli import index as index_cli
from services.retrieval.state import IndexHolder, IndexWatcher
from tests.support.retrieval import write_index


async def test_a_built_version_keeps_the_updates_pushed_since_its_export(tmp_path):
    export, root = tmp_path / "export", tmp_path / "root"
    write_index(export, count=300)
    write_index(root, count=300, version="20260101T000000Z")
    holder = IndexHolder()
    await holder.load_latest(root)
    await asyncio.sleep(0.01)
    holder.apply_availability([pb.AvailabilityUpdate(item_id="I00007", stock=0)])  # sells out after the export
    await asyncio.sleep(0.01)
    result = CliRunner().invoke(index_cli, ["build", str(export), "--out", str(root), "--ann", "exact"])
    assert result.exit_code == 0, result.output
    built = load_index(latest_version(root))
    assert built.data_as_of == load_index(latest_version(export)).data_as_of
    assert await IndexWatcher(holder, root, 1).check_once() and holder.current.artifact.path == built.path
    assert holder.current.availability.stock[holder.current.rows["I00007"]] == 0


def test_every_part_of_a_sharded_build_keeps_the_exports_data_as_of(tmp_path):
    export, out = tmp_path / "export", tmp_path / "out"
    source = load_index(write_index(export, count=300))
    args = ["build", str(export), "--out", str(out), "--shards", "2", "--ann", "exact"]
    result = CliRunner().invoke(index_cli, args)
    assert result.exit_code == 0, result.output
    for part in ("router", "shard-0", "shard-1"):
        [version] = index_versions(out / part)
        assert load_index(version).data_as_of == source.data_as_of, part
