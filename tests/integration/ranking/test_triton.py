"""The ranking service's Triton backend against a real Triton server (python backend wrapping ONNX Runtime, the
local config): readiness, parity with the embedded backend, explicit load of a new version under load, a version
Triton refuses, rollback, unload, model not found, and the fallback to the embedded backend."""

from __future__ import annotations

import asyncio
import os
import shutil
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
from click.testing import CliRunner
from tritonclient.grpc.aio import InferenceServerClient
from tritonclient.utils import InferenceServerException

from aisle.common.v1 import common_pb2
from services.cli import main
from services.core.errors import details_of
from services.core.grpc_runtime import VARIABLE as GRPC_VARIABLE
from services.demo.triton import SHM_DIR, LocalTriton
from services.ranking.backends.base import ModelNotReady
from services.ranking.backends.triton import TritonBackend
from tests.integration.ranking.breakers import poison_weights
from tests.integration.ranking.conftest import copy_model_repository, needs_triton, triton_launcher, triton_server
from tests.integration.ranking.helpers import Load, rank, rank_request, ranking_server, settings_for

pytestmark = needs_triton


def http_status(url: str) -> int:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return reply.status


def requests_for(item_ids: list[str], count: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [
        rank_request(
            list(rng.choice(item_ids, size=rng.integers(0, 20))),
            list(rng.choice(item_ids, size=rng.integers(1, 300))) + ["NOT-IN-CATALOG"],
        )
        for _ in range(count)
    ]


async def assert_same_scores(repository, triton, item_ids, model_name: str = "ranker") -> list:
    """Both backends answer every request alike; returns the (embedded, triton) answers. The Triton-backed service
    gets the requests all at once, so Triton's dynamic batcher sees mixed candidate counts."""
    requests = requests_for(item_ids)
    async with (
        ranking_server(settings_for(repository, model_name=model_name)) as (embedded, _),
        ranking_server(
            settings_for(repository, model_name=model_name, backend="triton", triton_targets=triton.grpc_target)
        ) as (remote, _),
    ):
        embedded_answers = [await rank(embedded.port, request) for request in requests]
        triton_answers = await asyncio.gather(*(rank(remote.port, request) for request in requests))
    for local, served in zip(embedded_answers, triton_answers, strict=True):
        assert served.model_version == local.model_version and not served.degradations
        assert served.model_version.name == model_name
        assert [s.item_id for s in served.scored_items] == [s.item_id for s in local.scored_items]
        assert np.allclose(
            [s.purchase_probability for s in served.scored_items],
            [s.purchase_probability for s in local.scored_items],
            atol=1e-5,
        )
        assert [s.HasField("return_probability") for s in served.scored_items] == [
            s.HasField("return_probability") for s in local.scored_items
        ]
        assert np.allclose(
            [s.return_probability for s in served.scored_items],
            [s.return_probability for s in local.scored_items],
            atol=1e-5,
        )
    return list(zip(embedded_answers, triton_answers, strict=True))


def process_environment(pid: int) -> dict[str, str]:
    entries = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(entry.decode(errors="replace").partition("=")[::2] for entry in entries if entry)


async def test_ready_and_same_scores_as_embedded_for_the_trained_ranker(trained, tmp_path):
    repository = copy_model_repository(trained.model_repository, tmp_path / "repo")
    with triton_server(repository, tmp_path / "triton.log") as triton:
        assert await asyncio.to_thread(http_status, f"{triton.http_url}/v2/models/ranker/versions/1/ready") == 200
        # Aisle's gRPC runtime is not passed on: the local server runs gRPC's defaults, as the Triton container does.
        assert os.environ.get(GRPC_VARIABLE) and GRPC_VARIABLE not in process_environment(triton.process.pid)
        client = InferenceServerClient(triton.grpc_target)
        assert await client.is_server_ready() and await client.is_model_ready("ranker", "1")
        await client.close()
        await assert_same_scores(repository, triton, trained.item_ids)


async def test_a_killed_local_triton_leaves_no_shared_memory_behind(trained, tmp_path):
    """The python backend's regions carry the server's own prefix and go when it exits, even by SIGKILL (each kill
    left a 1 MiB region in /dev/shm), and another server's regions stay."""
    repository = copy_model_repository(trained.model_repository, tmp_path / "repo")
    server = LocalTriton(repository, tmp_path / "triton.log", launcher=triton_launcher())
    try:
        await asyncio.to_thread(server.start)
        mine = set(server.shm_regions())
        assert mine, f"no region named {server.shm_prefix}* in {SHM_DIR}: the prefix was not applied"
        others = set(SHM_DIR.iterdir()) - mine
        await asyncio.to_thread(server.kill)
        assert server.shm_regions() == []
        assert others <= set(SHM_DIR.iterdir()), "another server's regions were removed"
        await asyncio.to_thread(server.start)  # restarts on its prefix, with regions of its own again
        assert server.shm_regions()
    finally:
        server.stop()
    assert server.shm_regions() == []


async def test_same_scores_as_embedded_for_a_model_with_features_and_a_return_head(feature_model, tmp_path):
    repository = copy_model_repository(feature_model.repository, tmp_path / "repo")
    with triton_server(repository, tmp_path / "triton.log") as triton:
        await assert_same_scores(repository, triton, feature_model.item_ids)


def aisle(*args) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["models", *map(str, args)])
    return result.exit_code, result.output


async def test_publish_refusal_and_rollback_under_load_then_unload_and_unknown_model(feature_model, tmp_path):
    repository = copy_model_repository(feature_model.repository, tmp_path / "repo")
    model_dir = repository / "ranker"
    source = tmp_path / "export"
    shutil.copytree(model_dir / "1", source)
    ids = feature_model.item_ids
    with triton_server(repository, tmp_path / "triton.log") as triton:
        target = triton.grpc_target
        client = InferenceServerClient(target)
        settings = settings_for(repository, backend="triton", triton_targets=target, watch_interval_s=0.2)
        async with ranking_server(settings) as (host, _):
            async with Load(host.port, rank_request(ids[:5], ids[:100])) as load:
                await load.until_version("1")

                code, output = await asyncio.to_thread(
                    aisle, "publish", source, "--repository", repository, "--triton", target
                )
                assert code == 0 and f"Triton at {target} serves version 2" in output, output
                assert await client.is_model_ready("ranker", "2")
                await load.until_version("2")

                # A version Triton's own warm-up refuses (NaN scores): Triton keeps serving version 2.
                broken = model_dir / "3"
                shutil.copytree(source, broken)
                poison_weights(broken / "model.onnx")
                with pytest.raises(InferenceServerException, match="not a probability"):
                    await client.load_model("ranker")
                assert await client.is_model_ready("ranker", "2")
                await asyncio.sleep(0.5)
                assert set(load.versions[-10:]) == {"2"}

                code, output = await asyncio.to_thread(
                    aisle, "rollback", "--repository", repository, "--to", "1", "--triton", target
                )
                assert code == 0 and f"Triton at {target} serves version 1" in output, output
                await load.until_version("1")
            assert not load.failures, load.failures[:5]
            assert "3" not in load.versions and len(load.versions) > 30

            await client.unload_model("ranker")
            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await rank(host.port, rank_request([], ids[:3]))
            assert failure.value.code() == grpc.StatusCode.UNAVAILABLE
            info, _ = details_of(failure.value)
            assert info.reason == "MODEL_NOT_READY"
            assert f"model 'ranker' version 1 on Triton at {target} is not ready" in failure.value.details()

            with pytest.raises(grpc.aio.AioRpcError) as failure:
                await rank(host.port, rank_request([], ids[:3], model_name="other"))
            assert failure.value.code() == grpc.StatusCode.NOT_FOUND

        unknown = TritonBackend([target], repository, "no_such_model", ready_timeout_s=0)
        with pytest.raises(ModelNotReady, match=f"'no_such_model' has no ready version on Triton at {target}"):
            await unknown.load()
        await unknown.close()
        await client.close()


async def test_falls_back_to_embedded_when_triton_goes_away(feature_model, tmp_path):
    repository = copy_model_repository(feature_model.repository, tmp_path / "repo")
    ids = feature_model.item_ids
    request = rank_request(ids[:4], ids[:50])
    with triton_server(repository, tmp_path / "triton.log") as triton:
        settings = settings_for(
            repository, backend="triton", triton_targets=triton.grpc_target, fallback_to_embedded=True
        )
        async with ranking_server(settings) as (host, _):
            served = await rank(host.port, request)
            assert not served.degradations
            triton.process.terminate()
            triton.process.wait(timeout=20)
            fallen_back = await rank(host.port, request)
    assert [d.reason for d in fallen_back.degradations] == [common_pb2.DEGRADATION_REASON_RANKING_FALLBACK_BACKEND]
    assert np.allclose(
        [s.purchase_probability for s in fallen_back.scored_items],
        [s.purchase_probability for s in served.scored_items],
        atol=1e-5,
    )
