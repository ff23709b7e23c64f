"""Which versions the embedded backend serves: one that fails a check is refused at load and by the repository
watch, and the previous version keeps serving. Tiny hand-built models, so each case takes milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from services.ranking.app import build_application
from services.ranking.backends.onnxruntime import OnnxRuntimeBackend
from services.ranking.model_config import METADATA_FILE, VOCABULARY_FILE, ModelConfigError
from services.ranking.settings import RankingSettings
from tests.integration.ranking.tiny_models import ITEMS, add_version, item_ids, tiny_repository

REFUSED = "services.ranking.backends.onnxruntime"


@contextlib.asynccontextmanager
async def serving(repository: Path, version: str = "") -> AsyncIterator[OnnxRuntimeBackend]:
    backend = OnnxRuntimeBackend(repository, "ranker", version)
    try:
        await backend.load()
        yield backend
    finally:
        await backend.close()


async def refused_at_load(repository: Path, version: str) -> str:
    """The reason a backend pinned to ``version`` refuses to start with it."""
    with pytest.raises(ModelConfigError) as refusal:
        async with serving(repository, version):
            pass
    return str(refusal.value)


async def scores(backend: OnnxRuntimeBackend) -> tuple[str, list[float]]:
    ranking = await backend.rank(item_ids(3), item_ids(3), None)
    return ranking.model_version, ranking.purchase.tolist()


#: 1000 items and tables one row short: the last item (token 1000) has no row, which a random warm-up of 32
#: candidates and 100 history tokens usually misses.
LARGE = 1000
SHORT_TABLES = [{"items": LARGE, "candidate_rows": LARGE}, {"items": LARGE, "history_rows": LARGE}]


@pytest.mark.parametrize("tables", SHORT_TABLES, ids=["candidate-table", "history-table"])
async def test_a_vocabulary_larger_than_the_item_table_is_refused(tmp_path, tables, caplog):
    repository = tiny_repository(tmp_path, {1: {"items": LARGE}})
    async with serving(repository) as backend:
        before = await scores(backend)
        add_version(repository / "ranker", 2, **tables)
        with caplog.at_level(logging.ERROR, logger=REFUSED):
            assert not await backend.refresh()
        assert await scores(backend) == before
        # The largest token is in both inputs of the warm-up, so the refusal does not depend on the random draw.
        assert "version 2 of ranker refused" in caplog.text and "warm-up inference failed" in caplog.text
        last = item_ids(LARGE)[-1]
        assert (await backend.rank([last], [last], None)).model_version == "1"
    assert "warm-up inference failed" in await refused_at_load(repository, "2")


async def test_an_empty_vocabulary_is_refused_and_the_previous_version_keeps_serving(tmp_path, caplog):
    repository = tiny_repository(tmp_path, {1: {}})
    async with serving(repository) as backend:
        before = await scores(backend)
        folder = add_version(repository / "ranker", 2)
        (folder / VOCABULARY_FILE).write_text("")  # a copy that failed half-way
        with caplog.at_level(logging.ERROR, logger=REFUSED):
            assert not await backend.refresh()
        assert await scores(backend) == before and min(before[1]) > 0
        assert f"{VOCABULARY_FILE}: no items" in caplog.text
    assert "no items" in await refused_at_load(repository, "2")


async def test_a_vocabulary_of_another_size_than_the_metadata_records_is_refused(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}, 2: {}})
    (repository / "ranker" / "1" / METADATA_FILE).write_text(json.dumps({"data": {"items": ITEMS}}))
    (repository / "ranker" / "2" / METADATA_FILE).write_text(json.dumps({"data": {"items": ITEMS + 5}}))
    reason = await refused_at_load(repository, "2")
    assert f"records {ITEMS + 5} items" in reason and f"has {ITEMS}" in reason
    async with serving(repository, "1") as backend:  # the count matches: served
        assert backend.model_version == "1"
    (repository / "ranker" / "2" / METADATA_FILE).write_text("{not json")
    assert "not valid JSON" in await refused_at_load(repository, "2")


@pytest.mark.parametrize(
    ("spec", "logged", "reason"),
    [
        # Scores that depend on the other candidates: the micro-batcher's padding would change them.
        ({"softmax": True}, "when other candidates share its row or batch", "share its row or batch"),
        # NaN for a shopper without history (a mean over no items), which a max() over the scores would hide.
        ({"nan_without_history": True}, "warm-up purchase scores are not probabilities", "not probabilities"),
    ],
    ids=["scores-depend-on-the-row", "nan-without-history"],
)
async def test_a_broken_new_version_is_refused_and_the_current_one_keeps_serving(
    tmp_path, caplog, spec, logged, reason
):
    repository = tiny_repository(tmp_path, {1: {}})
    async with serving(repository) as backend:
        before = await scores(backend)
        add_version(repository / "ranker", 2, **spec)
        with caplog.at_level(logging.ERROR, logger=REFUSED):
            assert not await backend.refresh()
        assert await scores(backend) == before
        assert logged in caplog.text
    assert reason in await refused_at_load(repository, "2")


async def test_a_version_refused_mid_copy_is_tried_again_once_its_files_change(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}})
    async with serving(repository) as backend:
        opened: list[str] = []
        open_version = backend._open

        def counting_open(version, folder):
            opened.append(version)
            return open_version(version, folder)

        backend._open = counting_open
        folder = add_version(repository / "ranker", 2)
        vocabulary = (folder / VOCABULARY_FILE).read_text()
        (folder / VOCABULARY_FILE).unlink()  # a copy in progress: model.onnx is there, the vocabulary not yet
        assert not await backend.refresh()
        assert not await backend.refresh()  # unchanged: not opened again on every poll
        assert opened == ["2"] and backend.model_version == "1"
        (folder / VOCABULARY_FILE).write_text(vocabulary)  # the copy completes
        assert await backend.refresh()
        assert opened == ["2", "2"] and backend.model_version == "2"
        assert not await backend.refresh()
        assert opened == ["2", "2"]
        ranking = await backend.rank([], item_ids(2), None)
        assert ranking.model_version == "2" and np.all(ranking.purchase > 0)


async def test_the_served_version_and_each_refusal_show_in_the_services_metrics(tmp_path):
    """What the alert on refused artefacts and a fleet split across versions read (k8s/monitoring), from the
    application as the server builds it: the version it serves, a broken publish counted, then the next good one."""
    repository = tiny_repository(tmp_path, {1: {}})
    settings = RankingSettings(model_repository=repository, model_name="ranker", watch_interval_s=0.05)
    registry = CollectorRegistry()
    app = build_application(settings, registry)
    labels = {"service": "ranking", "kind": "model"}

    def serving(version: str) -> float | None:
        return registry.get_sample_value("aisle_artifact_serving", {**labels, "version": version})

    async def until(check, within_s: float = 10.0) -> None:
        deadline = asyncio.get_running_loop().time() + within_s
        while not check():
            assert asyncio.get_running_loop().time() < deadline, "the model watch did not get there"
            await asyncio.sleep(0.05)

    await app.load()
    try:
        assert serving("1") == 1
        add_version(repository / "ranker", 2, softmax=True)  # fails its checks
        await until(lambda: registry.get_sample_value("aisle_artifact_refused_total", labels) == 1)
        assert serving("1") == 1 and serving("2") is None
        add_version(repository / "ranker", 3)
        await until(lambda: serving("3") == 1)
        assert serving("1") is None
        assert registry.get_sample_value("aisle_artifact_refused_total", labels) == 1  # not retried
    finally:
        await app.close()
