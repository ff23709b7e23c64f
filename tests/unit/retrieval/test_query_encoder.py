"""The query tower's load-time checks: a tower that cannot encode every item of its index never serves."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from services.retrieval import state
from services.retrieval.index import InvalidIndex
from services.retrieval.query_encoder import OnnxQueryTower
from services.retrieval.state import IndexHolder, IndexWatcher
from tests.support.retrieval import write_index

ITEMS, DIMENSION = 500, 16


def tower(path, table_rows: int, fails_at_run_time: bool = False):
    """history_item_ids INT64 [B, L] -> query_embedding FP32 [B, D], the mean of the history's table rows.
    ``fails_at_run_time``: a valid graph that ONNX Runtime loads but cannot run on a history not 7 long."""
    table = np.random.default_rng(0).normal(size=(table_rows, DIMENSION)).astype(np.float32)
    initializers = [numpy_helper.from_array(table, "table")]
    tokens = "history_item_ids"
    nodes = []
    if fails_at_run_time:
        initializers.append(numpy_helper.from_array(np.array([1, 7], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", [tokens, "shape"], ["reshaped"]))
        tokens = "reshaped"
    nodes += [
        helper.make_node("Gather", ["table", tokens], ["rows"], axis=0),
        helper.make_node("ReduceMean", ["rows"], ["query_embedding"], axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "tower",
        [helper.make_tensor_value_info("history_item_ids", TensorProto.INT64, ["B", "L"])],
        [helper.make_tensor_value_info("query_embedding", TensorProto.FLOAT, ["B", DIMENSION])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_tower_covering_every_item_encodes_the_last_one(tmp_path):
    encoder = OnnxQueryTower(tower(tmp_path / "t.onnx", ITEMS + 1), DIMENSION, ITEMS)
    assert encoder.encode([ITEMS - 1]).shape == (DIMENSION,)


def test_a_tower_with_fewer_item_rows_than_the_index_is_refused_at_load(tmp_path):
    path = tower(tmp_path / "t.onnx", table_rows=ITEMS - 9)  # tokens 0..490: rows 0..489 of a 500-item index
    with pytest.raises(InvalidIndex, match="fails its warm-up"):
        OnnxQueryTower(path, DIMENSION, ITEMS)


def test_a_tower_that_fails_at_run_time_is_refused_at_load(tmp_path):
    path = tower(tmp_path / "t.onnx", ITEMS + 1, fails_at_run_time=True)
    with pytest.raises(InvalidIndex, match="t.onnx: query tower fails its warm-up"):
        OnnxQueryTower(path, DIMENSION, ITEMS)


async def test_a_version_whose_tower_fails_is_refused_once(tmp_path, monkeypatch):
    root = tmp_path / "index"
    write_index(root, count=ITEMS, version="20260101T000000Z")
    holder = IndexHolder()
    await holder.load_latest(root)
    broken = tower(tmp_path / "broken.onnx", ITEMS + 1, fails_at_run_time=True)
    write_index(root, count=ITEMS, version="20260102T000000Z", query_tower=broken)
    opened = []
    real_open = state.open_index
    monkeypatch.setattr(state, "open_index", lambda path, *a: opened.append(path.name) or real_open(path, *a))
    watcher = IndexWatcher(holder, root, interval_s=0)
    for _ in range(3):
        assert not await watcher.check_once()
    assert opened == ["20260102T000000Z"]
    assert holder.current.version == "20260101T000000Z"
