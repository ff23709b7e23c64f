"""The committed model repository: every model folder carries a GPU config and a local (CPU-only Triton) config that
declare the same tensors, and the local configs' python model is one file, copied per folder without drift."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.ranking.model_config import CONFIG_FILE, CONFIGS_DIR
from services.ranking.repository import validate_path

PROJECT_REPOSITORY = Path(__file__).resolve().parents[3] / "model_repository"
MODELS = sorted(p.name for p in PROJECT_REPOSITORY.iterdir() if (p / CONFIG_FILE).is_file())
PYTHON_MODEL = "onnx_python_model.py"


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())


def configs_only(model: str, target: Path) -> Path:
    """The model folder's configs, without any version a developer exported locally (validate would run them)."""
    model_dir = target / model
    model_dir.mkdir(parents=True)
    shutil.copy(PROJECT_REPOSITORY / model / CONFIG_FILE, model_dir)
    shutil.copytree(PROJECT_REPOSITORY / model / CONFIGS_DIR, model_dir / CONFIGS_DIR)
    return model_dir


def test_the_repository_holds_both_rankers():
    assert {"ranker", "sequence_ranker"} <= set(MODELS)


@pytest.mark.parametrize("model", MODELS)
def test_local_config_declares_the_gpu_configs_tensors(model, tmp_path):
    """`aisle models validate` on the committed configs: configs/local.pbtxt parses, names the folder, gives every
    input to its warm-up, points at an existing python model, and declares exactly config.pbtxt's tensors."""
    model_dir = configs_only(model, tmp_path)
    report = validate_path(model_dir)
    assert report.ok, report.problems
    assert f"{model_dir / CONFIGS_DIR / 'local.pbtxt'}: parses, same tensors as {CONFIG_FILE}" in report.checked


@pytest.mark.parametrize("model", MODELS)
def test_gpu_config_runs_onnxruntime_on_gpu_and_local_config_the_python_backend_on_cpu(model):
    gpu = parse(PROJECT_REPOSITORY / model / CONFIG_FILE)
    local = parse(PROJECT_REPOSITORY / model / CONFIGS_DIR / "local.pbtxt")
    assert gpu.backend == "onnxruntime"
    assert [group.kind for group in gpu.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_GPU]
    assert local.backend == "python"
    assert [group.kind for group in local.instance_group] == [model_config_pb2.ModelInstanceGroup.KIND_CPU]
    assert local.default_model_filename == f"../{CONFIGS_DIR}/{PYTHON_MODEL}"
    assert (PROJECT_REPOSITORY / model / CONFIGS_DIR / PYTHON_MODEL).is_file()


@pytest.mark.parametrize("model", MODELS)
def test_every_model_folder_carries_the_same_python_model(model):
    """Model folders are synced one at a time (k8s/base/config/sync-artifacts.sh), so each carries its own copy."""
    reference = (PROJECT_REPOSITORY / "ranker" / CONFIGS_DIR / PYTHON_MODEL).read_bytes()
    assert (PROJECT_REPOSITORY / model / CONFIGS_DIR / PYTHON_MODEL).read_bytes() == reference


def test_validate_names_a_local_config_that_drifted_from_the_gpu_config(tmp_path):
    model_dir = configs_only("sequence_ranker", tmp_path)
    local = model_dir / CONFIGS_DIR / "local.pbtxt"
    local.write_text(local.read_text().replace('name: "return_probability"', 'name: "return_prob"'))
    report = validate_path(model_dir)
    assert not report.ok
    assert any("local.pbtxt: inputs/outputs/max_batch_size differ from config.pbtxt" in p for p in report.problems)
