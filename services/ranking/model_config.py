"""The ranker's contract, read from Triton's ``config.pbtxt`` (the same file Triton reads).

Repository layout: ``<repository>/<model>/config.pbtxt`` and ``<repository>/<model>/<version>/model.onnx``,
versions being positive integers. The ranking service requires these tensors (see model_repository/README.md):

- input ``history_item_ids``   INT64 [batch, history_length]   item tokens, oldest first, left-padded with 0
- input ``candidate_item_ids`` INT64 [batch, candidates]       item tokens to score
- optional input ``candidate_features`` FP32 [batch, candidates, len(features.CANDIDATE_FEATURES)] (10)
- output ``purchase_probability`` FP32 [batch, candidates]
- optional output ``return_probability`` FP32 [batch, candidates]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.ranking.features import CANDIDATE_FEATURES

HISTORY_INPUT = "history_item_ids"
CANDIDATES_INPUT = "candidate_item_ids"
FEATURES_INPUT = "candidate_features"
PURCHASE_OUTPUT = "purchase_probability"
RETURN_OUTPUT = "return_probability"
MODEL_FILE = "model.onnx"
VOCABULARY_FILE = "item_vocabulary.txt"
#: Training data, metrics, parity and versions of a version (and what refreshed its features).
METADATA_FILE = "metadata.json"
CONFIG_FILE = "config.pbtxt"
#: Alternative configs Triton picks with ``--model-config-name=<name>`` (``configs/<name>.pbtxt``).
CONFIGS_DIR = "configs"
#: Features per candidate in ``candidate_features``.
CANDIDATE_FEATURE_COUNT = len(CANDIDATE_FEATURES)

_DTYPES = {
    model_config_pb2.TYPE_INT64: np.dtype(np.int64),
    model_config_pb2.TYPE_INT32: np.dtype(np.int32),
    model_config_pb2.TYPE_FP32: np.dtype(np.float32),
}


class ModelConfigError(ValueError):
    """The model's config or repository layout is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: np.dtype
    #: Full shape including the batch dimension (-1 for variable sizes).
    shape: tuple[int, ...]


@dataclass(frozen=True)
class ModelContract:
    name: str
    max_batch_size: int
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    #: ``dynamic_batching.max_queue_delay_microseconds`` (None without dynamic batching); the embedded
    #: backend's micro-batcher uses it unless a setting overrides it.
    max_queue_delay_us: int | None = None

    @property
    def history_length(self) -> int:
        return self.inputs[HISTORY_INPUT].shape[-1]

    @property
    def has_candidate_features(self) -> bool:
        return FEATURES_INPUT in self.inputs

    @property
    def has_return_head(self) -> bool:
        return RETURN_OUTPUT in self.outputs


def read_model_config(path: Path) -> ModelContract:
    """Parses and checks a ``config.pbtxt`` against the ranking contract."""
    try:
        config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read: {exc}") from None
    except text_format.ParseError as exc:
        raise ModelConfigError(f"{path}: not a valid Triton model config: {exc}") from None
    batch = (-1,) if config.max_batch_size > 0 else ()

    def spec(tensor, kind: str) -> TensorSpec:
        if tensor.data_type not in _DTYPES:
            raise ModelConfigError(
                f"{path}: {kind} {tensor.name!r} has unsupported type "
                f"{model_config_pb2.DataType.Name(tensor.data_type)}"
            )
        return TensorSpec(tensor.name, _DTYPES[tensor.data_type], batch + tuple(tensor.dims))

    inputs = {t.name: spec(t, "input") for t in config.input}
    outputs = {t.name: spec(t, "output") for t in config.output}
    delay = config.dynamic_batching.max_queue_delay_microseconds if config.HasField("dynamic_batching") else None
    contract = ModelContract(config.name or path.parent.name, config.max_batch_size, inputs, outputs, delay)
    _check_contract(path, contract)
    return contract


def _check_contract(path: Path, contract: ModelContract) -> None:
    expected = {
        HISTORY_INPUT: (contract.inputs, np.int64, 2),
        CANDIDATES_INPUT: (contract.inputs, np.int64, 2),
        PURCHASE_OUTPUT: (contract.outputs, np.float32, 2),
    }
    if contract.has_return_head:
        expected[RETURN_OUTPUT] = (contract.outputs, np.float32, 2)
    if contract.has_candidate_features:
        expected[FEATURES_INPUT] = (contract.inputs, np.float32, 3)
    for name, (where, dtype, rank) in expected.items():
        tensor = where.get(name)
        if tensor is None:
            raise ModelConfigError(f"{path}: missing tensor {name!r} (the ranking contract needs it)")
        if tensor.dtype != dtype or len(tensor.shape) != rank:
            raise ModelConfigError(
                f"{path}: {name!r} must be {np.dtype(dtype).name} with {rank} dims including batch, "
                f"got {tensor.dtype.name} {list(tensor.shape)}"
            )
    if contract.history_length <= 0:
        raise ModelConfigError(f"{path}: {HISTORY_INPUT!r} needs a fixed history length, got -1")
    if contract.has_candidate_features and contract.inputs[FEATURES_INPUT].shape[-1] != CANDIDATE_FEATURE_COUNT:
        raise ModelConfigError(
            f"{path}: {FEATURES_INPUT!r} must end in {CANDIDATE_FEATURE_COUNT} features "
            f"(services.ranking.features.CANDIDATE_FEATURES), got {list(contract.inputs[FEATURES_INPUT].shape)}"
        )
    unknown = sorted(set(contract.inputs) - {HISTORY_INPUT, CANDIDATES_INPUT, FEATURES_INPUT})
    if unknown:
        raise ModelConfigError(
            f"{path}: inputs {unknown} are not part of the ranking contract; the service cannot fill them"
        )


#: The command that exports a version of each of the project's models (`aisle train` writes sequence_ranker, and
#: ranker with --skeleton).
EXPORTED_BY = {"ranker": "aisle train --skeleton", "sequence_ranker": "aisle train"}


def how_to_export(model_name: str) -> str:
    """What to run for a first version of ``model_name``, for a message that says none is there."""
    command = EXPORTED_BY.get(model_name)
    if command is not None:
        return f"export one with `{command}` or `aisle models publish`"
    return "publish one with `aisle models publish` (`aisle train` exports sequence_ranker, --skeleton ranker)"


def model_versions(model_dir: Path) -> list[int]:
    """Complete version folders (holding ``model.onnx``), oldest first. Only canonical numbers count: a folder
    ``010`` is not version 10, whose folder is ``10`` (``aisle models validate`` reports it as a stray)."""
    if not model_dir.is_dir():
        return []
    return sorted(
        int(p.name)
        for p in model_dir.iterdir()
        if p.name.isdigit() and p.name == str(int(p.name)) and int(p.name) > 0 and (p / MODEL_FILE).is_file()
    )


def resolve_version(model_dir: Path, requested: str = "") -> tuple[str, Path]:
    """(version, folder) to serve: ``requested`` if given, else the newest complete version."""
    versions = model_versions(model_dir)
    if requested:
        if int(requested) not in versions:
            raise ModelConfigError(
                f"{model_dir}: version {requested} has no {MODEL_FILE}; available: {versions or 'none'}"
            )
        return requested, model_dir / requested
    if not versions:
        raise ModelConfigError(f"{model_dir}: no version folder with {MODEL_FILE}; {how_to_export(model_dir.name)}")
    return str(versions[-1]), model_dir / str(versions[-1])
