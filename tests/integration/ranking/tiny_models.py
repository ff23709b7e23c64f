"""Hand-built ONNX rankers for the project's ``ranker`` contract, made in milliseconds without training.

A candidate's logit is its row of a candidate table; the history goes through a table of its own (gathered, then
weighted by zero), so a test can make either table too short for the vocabulary, or score candidates together
(a softmax over the row, which breaks the contract the micro-batcher relies on).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from services.ranking.model_config import CONFIG_FILE, MODEL_FILE, VOCABULARY_FILE
from tests.integration.ranking.conftest import PROJECT_MODEL

#: Items in a tiny version's vocabulary unless told otherwise (tokens 1..ITEMS).
ITEMS = 100


def item_ids(count: int = ITEMS) -> list[str]:
    return [f"I{i:05d}" for i in range(count)]


def tiny_ranker(
    path: Path,
    candidate_rows: int,
    history_rows: int,
    *,
    softmax: bool = False,
    nan_without_history: bool = False,
    seed: int = 0,
) -> None:
    """Writes ``model.onnx``: P(purchase) = sigmoid(candidate_table[token]) (softmax over the row if ``softmax``;
    NaN for a row whose history is empty if ``nan_without_history``, as a mean over no items gives)."""
    rng = np.random.default_rng(seed)
    nodes = [
        helper.make_node("Gather", ["candidate_table", "candidate_item_ids"], ["picked"], axis=0),
        helper.make_node("Squeeze", ["picked", "last_axis"], ["logits"]),
        helper.make_node("Gather", ["history_table", "history_item_ids"], ["seen"], axis=0),
        helper.make_node("ReduceSum", ["seen", "history_axis"], ["seen_sum"], keepdims=1),
        helper.make_node("Squeeze", ["seen_sum", "last_axis"], ["user"]),
        helper.make_node("Mul", ["user", "zero"], ["user_term"]),
        helper.make_node("Add", ["logits", "user_term"], ["summed"]),
    ]
    if nan_without_history:  # scores * (items seen / items seen): 0 / 0 for an empty history
        nodes += [
            helper.make_node("Greater", ["history_item_ids", "no_item"], ["known"]),
            helper.make_node("Cast", ["known"], ["known_count"], to=TensorProto.FLOAT),
            helper.make_node("ReduceSum", ["known_count", "history_axis"], ["count"], keepdims=1),
            helper.make_node("Div", ["count", "count"], ["one_or_nan"]),
            helper.make_node("Mul", ["summed", "one_or_nan"], ["scores"]),
        ]
    else:
        nodes.append(helper.make_node("Identity", ["summed"], ["scores"]))
    nodes.append(
        helper.make_node("Softmax", ["scores"], ["purchase_probability"], axis=1)
        if softmax
        else helper.make_node("Sigmoid", ["scores"], ["purchase_probability"])
    )
    graph = helper.make_graph(
        nodes,
        "tiny_ranker",
        [
            helper.make_tensor_value_info("history_item_ids", TensorProto.INT64, ["batch", 50]),
            helper.make_tensor_value_info("candidate_item_ids", TensorProto.INT64, ["batch", "candidates"]),
        ],
        [helper.make_tensor_value_info("purchase_probability", TensorProto.FLOAT, ["batch", "candidates"])],
        [
            numpy_helper.from_array(rng.normal(size=(candidate_rows, 1)).astype(np.float32), "candidate_table"),
            numpy_helper.from_array(rng.normal(size=(history_rows, 1)).astype(np.float32), "history_table"),
            numpy_helper.from_array(np.array([2], dtype=np.int64), "last_axis"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "history_axis"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero"),
            numpy_helper.from_array(np.array(0, dtype=np.int64), "no_item"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def add_version(
    model_dir: Path,
    version: int,
    *,
    items: int = ITEMS,
    candidate_rows: int | None = None,
    history_rows: int | None = None,
    softmax: bool = False,
    nan_without_history: bool = False,
) -> Path:
    """``model_dir/<version>/`` with ``model.onnx`` and ``item_vocabulary.txt``; tables have one row per token
    (``items + 1``, row 0 for padding) unless told otherwise."""
    folder = model_dir / str(version)
    folder.mkdir()
    rows = items + 1
    tiny_ranker(
        folder / MODEL_FILE,
        candidate_rows if candidate_rows is not None else rows,
        history_rows if history_rows is not None else rows,
        softmax=softmax,
        nan_without_history=nan_without_history,
        seed=version,
    )
    (folder / VOCABULARY_FILE).write_text("".join(f"{item}\n" for item in item_ids(items)))
    return folder


def tiny_repository(root: Path, versions: dict[int, dict] | None = None) -> Path:
    """``root/model_repository/ranker`` with the project's ``config.pbtxt`` and the given versions (keyword
    arguments of :func:`add_version` by version number); returns the repository."""
    model_dir = root / "model_repository" / "ranker"
    model_dir.mkdir(parents=True)
    shutil.copy(PROJECT_MODEL / CONFIG_FILE, model_dir / CONFIG_FILE)
    for version, spec in (versions or {}).items():
        add_version(model_dir, version, **spec)
    return root / "model_repository"
