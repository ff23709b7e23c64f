"""Two real Triton servers under the ranking service's triton backend while ``aisle models publish`` and
``aisle models rollback`` load them one after the other (and each unloads the old version once the new one is
ready): no call fails. Needs the local Triton server (`make triton`); skipped where it is missing."""

from __future__ import annotations

import asyncio
import shutil

from click.testing import CliRunner

from services.cli import main
from tests.integration.ranking.conftest import copy_model_repository, needs_triton, triton_server
from tests.integration.ranking.helpers import Load, rank_request, ranking_server, settings_for

pytestmark = needs_triton


def aisle(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["models", *map(str, args)])
    return result.exit_code, result.output


async def test_publish_and_rollback_over_two_triton_servers_fail_no_call(feature_model, tmp_path):
    repository = copy_model_repository(feature_model.repository, tmp_path / "repo")
    source = tmp_path / "export"
    shutil.copytree(repository / "ranker" / "1", source)
    ids = feature_model.item_ids
    with triton_server(repository, tmp_path / "a.log") as a, triton_server(repository, tmp_path / "b.log") as b:
        told = ("--triton", a.grpc_target, "--triton", b.grpc_target)
        settings = settings_for(
            repository, backend="triton", triton_targets=f"{a.grpc_target},{b.grpc_target}", watch_interval_s=0.2
        )
        async with ranking_server(settings) as (host, _):
            async with Load(host.port, rank_request(ids[:5], ids[:100])) as load:
                await load.until_version("1")
                code, output = await asyncio.to_thread(aisle, "publish", source, "--repository", repository, *told)
                assert code == 0 and f"Triton at {b.grpc_target} serves version 2" in output, output
                await load.until_version("2")
                code, output = await asyncio.to_thread(aisle, "rollback", "--repository", repository, *told)
                assert code == 0 and f"Triton at {b.grpc_target} serves version 1" in output, output
                await load.until_version("1")
                await asyncio.sleep(0.5)
    assert not load.failures, load.failures[:5]
    assert set(load.versions) == {"1", "2"} and len(load.versions) > 50
