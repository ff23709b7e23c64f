"""Start-up of the embedded backend with bad newer versions in the repository: a restarted server serves what the
running ones kept serving (the newest version that passes), refusing each newer one as a running server refuses it.
Real ONNX Runtime sessions of tiny hand-built models."""

from __future__ import annotations

import logging

import pytest

from services.ranking.backends.onnxruntime import BatchingOptions, OnnxRuntimeBackend
from services.ranking.model_config import ModelConfigError
from tests.integration.ranking.tiny_models import ITEMS, add_version, item_ids, tiny_repository

LOGGER = "services.ranking.backends.onnxruntime"
#: Version 2 scores a row's candidates together (fails batch/padding parity); version 3's item table is shorter
#: than its vocabulary (fails the warm-up).
BAD = {2: {"softmax": True}, 3: {"candidate_rows": ITEMS - 10}}


def backend(repository, version: str = "") -> OnnxRuntimeBackend:
    return OnnxRuntimeBackend(repository, "ranker", version, batching=BatchingOptions(enabled=False))


def counting_opens(server: OnnxRuntimeBackend) -> list[str]:
    opened: list[str] = []
    real_open = server._open
    server._open = lambda version, folder: opened.append(version) or real_open(version, folder)
    return opened


async def test_a_restart_walks_back_past_bad_newer_versions_and_remembers_them(tmp_path, caplog):
    repository = tiny_repository(tmp_path, {1: {}, **BAD})
    server = backend(repository)
    opened = counting_opens(server)
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            await server.load()
        assert server.model_version == "1" and opened == ["3", "2", "1"]
        assert (await server.rank([], item_ids(3), None)).model_version == "1"
        # One loud line per refused version, naming it and why; then one saying what serves instead.
        refusals = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(refusals) == 2 and all("\n" not in line for line in refusals)
        assert refusals[0].startswith("version 3 of ranker refused at start-up") and "warm-up" in refusals[0]
        assert refusals[1].startswith("version 2 of ranker refused at start-up") and "share its row" in refusals[1]
        assert "serving ranker version 1, not the newest (3): 2 newer refused" in caplog.text
        # Recorded as a refresh records them: the repository watch does not load them again on every poll.
        assert not await server.refresh() and not await server.refresh()
        assert opened == ["3", "2", "1"]
        add_version(repository / "ranker", 4)
        assert await server.refresh() and server.model_version == "4"
    finally:
        await server.close()


async def test_start_up_fails_only_when_no_version_passes(tmp_path):
    repository = tiny_repository(tmp_path, BAD)
    server = backend(repository)
    with pytest.raises(ModelConfigError, match="none of the 2 versions .* the newest, 3, was refused: .*warm-up"):
        await server.load()
    assert server.model_version == ""
    await server.close()


async def test_a_lone_bad_version_fails_start_up_with_its_own_reason(tmp_path):
    repository = tiny_repository(tmp_path, {2: BAD[2]})
    with pytest.raises(ModelConfigError, match=r"ranker/2: a candidate's score changes"):
        await backend(repository).load()


async def test_a_pinned_version_is_the_only_one_tried(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}, **BAD})
    server = backend(repository, "2")
    opened = counting_opens(server)
    with pytest.raises(ModelConfigError, match="share its row or batch"):
        await server.load()
    assert opened == ["2"]
    await server.close()
