"""Exports a trained ranker into the model repository and its item embeddings into a retrieval index.

A model version is written into a hidden staging folder, checked (ONNX checker, the ``config.pbtxt`` contract,
ONNX Runtime vs torch parity), then renamed into place, so a server never sees half a version.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch

from services.ranking.backends.onnxruntime import check_graph
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    VOCABULARY_FILE,
    model_versions,
    read_model_config,
)
from services.retrieval.index import save_index
from training.tiny_ranker import TinySequenceRanker

#: Largest |ONNX Runtime - torch| accepted on the parity check.
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


def export_ranker(
    model: TinySequenceRanker,
    model_dir: Path,
    item_ids: Sequence[str],
    metadata: dict,
    version: int | None = None,
) -> Path:
    """Writes ``model_dir/<version>/`` (next free version unless given); returns the folder."""
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ExportError(
            f"{config_path} is missing: a model folder needs its config.pbtxt before versions can be exported"
        )
    contract = read_model_config(config_path)
    if contract.history_length != model.history_length:
        raise ExportError(
            f"{config_path} says history length {contract.history_length}, the model has {model.history_length}"
        )
    version = version if version is not None else max(model_versions(model_dir), default=0) + 1
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(f"{final} already exists; versions are immutable, pick a new one")
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{version}-", dir=model_dir))
    try:
        model.eval()
        onnx_path = staging / MODEL_FILE
        _export_onnx(model, onnx_path)
        onnx.checker.check_model(str(onnx_path), full_check=True)
        (staging / VOCABULARY_FILE).write_text("\n".join(item_ids) + "\n", encoding="utf-8")
        parity = _parity(model, onnx_path, contract)
        (staging / "metadata.json").write_text(
            json.dumps(
                {
                    **metadata,
                    "model": model_dir.name,
                    "version": version,
                    "exported_at": datetime.now(UTC).isoformat(),
                    "parity_max_abs_diff": parity,
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def export_index(
    model: TinySequenceRanker,
    index_root: Path,
    item_ids: Sequence[str],
    popularity: np.ndarray,
    categories: Sequence[str],
    brands: Sequence[str],
    model_name: str,
    model_version: str,
) -> Path:
    return save_index(
        index_root,
        item_ids=item_ids,
        embeddings=model.item_vectors().numpy(),
        popularity=popularity,
        categories=categories,
        brands=brands,
        model_name=model_name,
        model_version=model_version,
    )


@contextlib.contextmanager
def _quiet_exporter():
    """The dynamo exporter logs every graph pass; keep errors, drop the chatter."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx", "torch.export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _export_onnx(model: TinySequenceRanker, path: Path) -> None:
    with _quiet_exporter():
        _export_dynamo(model, path)


def _export_dynamo(model: TinySequenceRanker, path: Path) -> None:
    history = torch.zeros(2, model.history_length, dtype=torch.int64)
    candidates = torch.ones(2, 8, dtype=torch.int64)
    batch, count = torch.export.Dim("batch"), torch.export.Dim("candidates")
    torch.onnx.export(
        model,
        (history, candidates),
        str(path),
        input_names=[HISTORY_INPUT, CANDIDATES_INPUT],
        output_names=[PURCHASE_OUTPUT],
        dynamic_shapes={HISTORY_INPUT: {0: batch}, CANDIDATES_INPUT: {0: batch, 1: count}},
        dynamo=True,
        opset_version=18,
        external_data=False,
        verbose=False,
    )


def _parity(model: TinySequenceRanker, path: Path, contract) -> float:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    check_graph(path, session, contract)
    rng = np.random.default_rng(1)
    history = rng.integers(0, model.num_items + 1, size=(3, model.history_length), dtype=np.int64)
    history[0, :-1] = 0  # a one-item history
    candidates = rng.integers(1, model.num_items + 1, size=(3, 37), dtype=np.int64)
    got = session.run([PURCHASE_OUTPUT], {HISTORY_INPUT: history, CANDIDATES_INPUT: candidates})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(history), torch.from_numpy(candidates)).numpy()
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime and torch disagree by {diff:.2e} (> {PARITY_TOLERANCE:.0e})")
    return diff
