"""Publishing and rolling back while the embedded backend serves under concurrent load: zero failed calls, and a
version that fails its warm-up never serves."""

from __future__ import annotations

import asyncio
import os
import shutil

from grpc_health.v1 import health_pb2

from services.ranking.repository import publish, rollback
from tests.integration.conftest import health_status
from tests.integration.ranking.breakers import poison_weights
from tests.integration.ranking.conftest import copy_model_repository
from tests.integration.ranking.helpers import Load, rank_request, ranking_server, settings_for


async def test_publish_and_rollback_under_load_fail_no_call(feature_model, tmp_path):
    repository = copy_model_repository(feature_model.repository, tmp_path / "repo")
    model_dir = repository / "ranker"
    source = tmp_path / "export"
    shutil.copytree(model_dir / "1", source)
    ids = feature_model.item_ids
    settings = settings_for(repository, watch_interval_s=0.05)
    async with ranking_server(settings) as (host, _), Load(host.port, rank_request(ids[:5], ids[:30])) as load:
        await load.until_version("1")

        await asyncio.to_thread(publish, source, model_dir)
        await load.until_version("2")

        # A version that fails its warm-up (NaN scores), put in place without `publish` as a careless copy would:
        # the watch refuses it and version 2 keeps serving.
        staging = model_dir / ".staging-3-manual"
        shutil.copytree(source, staging)
        poison_weights(staging / "model.onnx")
        os.rename(staging, model_dir / "3")
        await asyncio.sleep(0.6)
        assert set(load.versions[-20:]) == {"2"}
        assert await health_status(host.port) == health_pb2.HealthCheckResponse.SERVING

        await asyncio.to_thread(rollback, model_dir, 1)
        await load.until_version("1")

        await asyncio.to_thread(publish, source, model_dir)
        await load.until_version("4")
    assert not load.failures, load.failures[:5]
    assert len(load.versions) > 50
    assert "3" not in load.versions
