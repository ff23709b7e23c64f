from __future__ import annotations

import re
from pathlib import Path

import pytest

from services.ranking.model_config import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    ModelConfigError,
    read_model_config,
    resolve_version,
)

PROJECT_CONFIG = Path(__file__).resolve().parents[2] / "model_repository" / "ranker" / "config.pbtxt"


def test_the_committed_config_meets_the_contract():
    contract = read_model_config(PROJECT_CONFIG)
    assert contract.name == "ranker" and contract.max_batch_size == 64
    assert contract.inputs[HISTORY_INPUT].shape == (-1, 50)
    assert contract.inputs[CANDIDATES_INPUT].shape == (-1, -1)
    assert contract.history_length == 50 and not contract.has_return_head


def edited(tmp_path, old: str, new: str) -> Path:
    text = PROJECT_CONFIG.read_text()
    assert old in text
    path = tmp_path / "config.pbtxt"
    path.write_text(text.replace(old, new))
    return path


def test_a_missing_tensor_is_named(tmp_path):
    path = edited(tmp_path, '"purchase_probability"', '"score"')
    with pytest.raises(ModelConfigError, match="missing tensor 'purchase_probability'"):
        read_model_config(path)


def test_a_wrong_type_is_named(tmp_path):
    path = edited(tmp_path, "TYPE_INT64\n    dims: [ 50 ]", "TYPE_FP32\n    dims: [ 50 ]")
    with pytest.raises(ModelConfigError, match="'history_item_ids' must be int64"):
        read_model_config(path)


def test_a_variable_history_length_is_refused(tmp_path):
    path = edited(tmp_path, "dims: [ 50 ]", "dims: [ -1 ]")
    with pytest.raises(ModelConfigError, match="fixed history length"):
        read_model_config(path)


def test_text_that_is_not_a_model_config_is_refused(tmp_path):
    path = tmp_path / "config.pbtxt"
    path.write_text("name: 'ranker'\nnot_a_field: 3\n")
    with pytest.raises(ModelConfigError, match="not a valid Triton model config"):
        read_model_config(path)


def test_version_resolution(tmp_path):
    for version in ("1", "2", "10"):
        (tmp_path / version).mkdir()
        (tmp_path / version / "model.onnx").write_bytes(b"x")
    (tmp_path / "11").mkdir()  # no model.onnx: incomplete, never chosen
    (tmp_path / ".staging-12-x").mkdir()
    (tmp_path / "020").mkdir()  # not version 20 (whose folder would be 20/): a stray, never chosen
    (tmp_path / "020" / "model.onnx").write_bytes(b"x")
    assert resolve_version(tmp_path) == ("10", tmp_path / "10")
    assert resolve_version(tmp_path, "2") == ("2", tmp_path / "2")
    with pytest.raises(ModelConfigError, match="version 11 has no model.onnx"):
        resolve_version(tmp_path, "11")
    with pytest.raises(ModelConfigError, match="aisle train"):
        resolve_version(tmp_path / "empty")


@pytest.mark.parametrize(
    ("model", "command"),
    [
        ("ranker", "export one with `aisle train --skeleton`"),  # plain `aisle train` writes sequence_ranker
        ("sequence_ranker", "export one with `aisle train` or"),
        ("my_ranker", "publish one with `aisle models publish`"),
    ],
)
def test_a_model_without_versions_names_the_command_that_exports_one(tmp_path, model, command):
    (tmp_path / model).mkdir()
    with pytest.raises(ModelConfigError, match=re.escape(command)):
        resolve_version(tmp_path / model)
