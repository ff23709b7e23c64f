"""`aisle index push-availability` against real retrieval replicas on 127.0.0.1: every replica gets the updates, a
replica that is down fails the command by name, and bad input sends nothing."""

from __future__ import annotations

import asyncio
import contextlib
import json

import grpc
import pytest
from click.testing import CliRunner, Result

from aisle.common.v1 import common_pb2 as common
from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from aisle.retrieval.v1 import retrieval_service_pb2_grpc as pb_grpc
from services.core.server import ServiceHost
from services.retrieval.app import build_application
from services.retrieval.index_cli import index as index_cli
from services.retrieval.settings import RetrievalSettings
from tests.integration.conftest import serving
from tests.support.ports import dead_port
from tests.support.retrieval import write_index

POPULAR = common.CANDIDATE_SOURCE_POPULARITY


@pytest.fixture(scope="module")
def index_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("availability")
    write_index(root, version="20260101T000000Z")
    return root


@contextlib.asynccontextmanager
async def retrieval(path):
    """One retrieval replica on 127.0.0.1 and a stub to it."""
    settings = RetrievalSettings(host="127.0.0.1", port=0, metrics_port=None, index_path=path, index_poll_s=0)
    async with serving(ServiceHost(settings, build_application(settings))) as host:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{host.port}") as channel:
            yield host, pb_grpc.RetrievalServiceStub(channel)


async def push(*args: str, stdin: str | None = None) -> Result:
    """Runs the command as a shell would, in a thread: the servers keep serving on this test's event loop."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, index_cli, ["push-availability", *args], input=stdin)


async def popular(stub, region: str = "", k: int = 10) -> list[str]:
    request = pb.RetrieveRequest(k=k, sources=[POPULAR])
    request.context.region = region
    reply = await stub.Retrieve(request, timeout=5)
    return [c.item_id for c in reply.candidates]


def lines(*updates: dict) -> str:
    return "".join(json.dumps(update) + "\n" for update in updates)


async def test_every_replica_named_by_target_gets_the_updates(index_root, tmp_path):
    async with retrieval(index_root) as (one, stub_one), retrieval(index_root) as (two, stub_two):
        top = (await popular(stub_one))[0]
        assert top in await popular(stub_two)
        updates = tmp_path / "updates.jsonl"
        updates.write_text(lines({"item_id": top, "stock": 0}, {"item_id": "ghost", "stock": 3}))
        targets = [f"127.0.0.1:{one.port}", f"127.0.0.1:{two.port}"]
        result = await push(str(updates), "--target", targets[0], "--target", targets[1])
        assert result.exit_code == 0, result.output
        for stub in (stub_one, stub_two):
            assert top not in await popular(stub)
    for target in targets:
        [line] = [line for line in result.output.splitlines() if line.startswith(target)]
        assert "applied 1 of 2" in line and "ghost" in line


async def test_regions_are_replaced_and_stdin_is_read_in_batches(index_root):
    async with retrieval(index_root) as (one, stub_one), retrieval(index_root) as (two, stub_two):
        top_gb = (await popular(stub_one, region="GB"))[:3]
        updates = [{"item_id": item, "stock": 5, "set_regions": True, "sold_in_regions": ["DE"]} for item in top_gb]
        result = await push(
            "-", "--target", f"127.0.0.1:{one.port}", "--target", f"127.0.0.1:{two.port}", "--batch-size", "1",
            "--progress", stdin=lines(*updates),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        for stub in (stub_one, stub_two):
            assert not set(top_gb) & set(await popular(stub, region="GB", k=50))
            assert set(top_gb) <= set(await popular(stub, region="DE", k=2000))
    assert result.output.count("applied 3 of 3") == 2
    assert "pushing availability: 100%" in result.output and "6/6" in result.output  # 3 batches x 2 replicas


async def test_a_replica_that_is_down_fails_the_push_by_name_and_the_others_are_updated(index_root, tmp_path):
    with dead_port() as port:
        down = f"127.0.0.1:{port}"
        async with retrieval(index_root) as (up, stub):
            top = (await popular(stub))[0]
            updates = tmp_path / "updates.jsonl"
            updates.write_text(lines({"item_id": top, "stock": 0}))
            result = await push(str(updates), "--target", f"127.0.0.1:{up.port}", "--target", down, "--timeout", "2")
            assert top not in await popular(stub)
    assert result.exit_code == 1, result.output
    assert f"127.0.0.1:{up.port}: applied 1 of 1" in result.output
    assert f"{down}: FAILED" in result.output and "UNAVAILABLE" in result.output
    assert f"1 of 2 replicas failed: {down}" in result.output


async def test_a_bad_line_is_refused_with_its_line_and_field_and_nothing_is_sent(index_root, tmp_path):
    async with retrieval(index_root) as (host, stub):
        top = (await popular(stub))[0]
        updates = tmp_path / "updates.jsonl"
        updates.write_text(lines({"item_id": top, "stock": 0}, {"item_id": "I00002", "stok": 0}))
        result = await push(str(updates), "--target", f"127.0.0.1:{host.port}")
        assert top in await popular(stub)  # the good first line was not sent either
    assert result.exit_code == 2, result.output
    assert "line 2: stok: unknown field" in result.output
    assert "nothing was sent" in result.output


async def test_an_update_a_replica_refuses_names_the_field(index_root, tmp_path):
    async with retrieval(index_root) as (host, _):
        updates = tmp_path / "updates.jsonl"
        updates.write_text(lines({"item_id": "I00001", "stock": 1, "set_regions": True, "sold_in_regions": ["Mars"]}))
        result = await push(str(updates), "--target", f"127.0.0.1:{host.port}")
    assert result.exit_code == 1, result.output
    assert "INVALID_ARGUMENT" in result.output and "updates[0].sold_in_regions[0]" in result.output


async def test_a_name_is_resolved_to_its_addresses(index_root, tmp_path):
    async with retrieval(index_root) as (host, stub):
        top = (await popular(stub))[0]
        updates = tmp_path / "updates.jsonl"
        updates.write_text(lines({"item_id": top, "stock": 0}))
        name = f"localhost:{host.port}"
        result = await push(str(updates), "--target", name, "--address-family", "ipv4")
        assert top not in await popular(stub)
    assert result.exit_code == 0, result.output
    assert f"127.0.0.1:{host.port} (via {name}): applied 1 of 1" in result.output
