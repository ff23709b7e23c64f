"""Exports trained models: rankers into the model repository, item embeddings into a retrieval index, and the
two-tower's query tower as ONNX.

A model version is written into a hidden staging folder, checked (ONNX checker, the ``config.pbtxt`` contract,
ONNX Runtime vs torch parity, and every check a server runs before it serves a version:
:func:`services.ranking.backends.onnxruntime.check_version`), then renamed into place, so a server never sees half a
version, nor one it would refuse. Rankers whose
``config.pbtxt`` declares ``candidate_features`` (the sequence ranker) are exported with that third input and the
version carries the :class:`ItemFeatureSnapshot` as ``item_features.npz``; a declared ``return_probability``
output must come out of the model as its second output.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnx
import torch

from services.core.id_lines import format_id_lines, id_list_problem
from services.core.paths import share_like_a_plain_write, staging_folder
from services.ranking.backends.onnxruntime import check_graph, check_version
from services.ranking.features import FEATURES_FILE, ItemFeatureSnapshot, candidate_features
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    VOCABULARY_FILE,
    ModelConfigError,
    ModelContract,
    read_model_config,
)
from services.ranking.repository import check_new_version, next_version, one_writer, retire
from services.retrieval.covisitation import CoVisitationTable
from services.retrieval.index import save_index

log = logging.getLogger(__name__)

#: Largest |ONNX Runtime - torch| accepted on the parity check.
PARITY_TOLERANCE = 1e-4
FEATURES_INPUT = "candidate_features"
QUERY_TOWER_FILE = "query_tower.onnx"
QUERY_OUTPUT = "query_embedding"


class ExportError(RuntimeError):
    pass


def export_ranker(
    model: torch.nn.Module,
    model_dir: Path,
    item_ids: Sequence[str],
    metadata: dict,
    version: int | None = None,
    snapshot: ItemFeatureSnapshot | None = None,
) -> Path:
    """Writes ``model_dir/<version>/`` (next free version unless given); returns the folder.

    ``model(history, candidates[, features])`` returns P(purchase), or (P(purchase), P(return)) when the config
    declares ``return_probability``. ``snapshot`` is required when the config declares ``candidate_features``.
    """
    version = version if version is not None else next_version(model_dir)
    final = model_dir / str(version)
    try:  # a number used before (retired included) would reach a Triton pod that still holds that one's tokens
        check_new_version(model_dir, version, fix="export as version {next}")
    except ModelConfigError as exc:
        raise ExportError(str(exc)) from None
    contract = _contract(model_dir, model.history_length)
    _check_item_ids(item_ids)
    with_features = FEATURES_INPUT in contract.inputs
    if with_features and snapshot is None:
        raise ExportError(f"{model_dir / 'config.pbtxt'} declares {FEATURES_INPUT!r}: pass the item feature snapshot")
    if with_features and snapshot is not None and len(snapshot) != len(item_ids):
        raise ExportError(f"the feature snapshot has {len(snapshot)} items, the vocabulary {len(item_ids)}")
    staging = staging_folder(model_dir, f".staging-{version}-")
    try:
        model.eval()
        onnx_path = staging / MODEL_FILE
        _export_onnx(model, onnx_path, contract)
        onnx.checker.check_model(str(onnx_path), full_check=True)
        (staging / VOCABULARY_FILE).write_text(format_id_lines(item_ids), encoding="utf-8")
        if with_features:
            snapshot.save(staging / FEATURES_FILE)
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        try:
            check_graph(onnx_path, session, contract)
        except ModelConfigError as exc:
            raise ExportError(str(exc)) from None
        parity = _parity(model, session, contract, snapshot if with_features else None)
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
        try:  # the servers' own checks, on the files as they will be published
            check_version(staging, session, model_dir.name, str(version), contract)
        except ModelConfigError as exc:
            reason = str(exc).replace(str(staging), str(final))
            raise ExportError(f"not published, the servers would refuse it: {reason}") from None
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _check_item_ids(item_ids: Sequence[str]) -> None:
    """The vocabulary file holds one id per line (:mod:`services.core.id_lines`)."""
    problem = id_list_problem(item_ids, "item id")
    if problem is not None:
        raise ExportError(f"{problem}; nothing was exported")


class Publication:
    """What one training run has exported so far: the ranker's version number, the folders it wrote beside the
    ranker (index version, query tower) and the ranker version once published. See :func:`published_together`."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.folders: list[Path] = []
        self.ranker: Path | None = None

    def wrote(self, folder: Path) -> Path:
        self.folders.append(folder)
        return folder


@contextlib.contextmanager
def published_together(model_dir: Path) -> Iterator[Publication]:
    """Around the export of the ranker and what goes with it, the ranker published last, as version
    ``publication.version``: the next number, picked and kept under the model folder's writer lock until the block
    ends (no publish or rollback may take it, or retire it, meanwhile; they wait). When the block fails, the
    folders it wrote go and the ranker, if published, is retired (its number stays used), so a failed run leaves no
    ranker version without its index."""
    with one_writer(model_dir, "aisle train (exporting)", lambda message: log.warning("%s", message)):
        publication = Publication(next_version(model_dir))
        try:
            yield publication
        except BaseException:
            if publication.ranker is not None:
                retire(model_dir, publication.version)
            for folder in publication.folders:
                shutil.rmtree(folder, ignore_errors=True)
            raise


def prepare_out(out: Path) -> None:
    """Creates the artefacts folder ``out`` (``--out``) and checks it takes files, before anything is trained."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--out {out} is a file: give a folder for the index, query tower and run record")
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ExportError(f"--out {out} is not a writable folder: {exc}") from None


def check_ranker_contract(model_dir: Path, history_length: int, candidate_features: int | None) -> ModelContract:
    """The model folder's ``config.pbtxt`` against the model about to be exported (its history window, and
    ``candidate_features`` of that width, or none); called before training, so a mismatch costs no training."""
    contract = _contract(model_dir, history_length)
    declared = contract.inputs[FEATURES_INPUT].shape[-1] if FEATURES_INPUT in contract.inputs else None
    if declared != candidate_features:
        said = f"declares {declared} {FEATURES_INPUT}" if declared is not None else f"declares no {FEATURES_INPUT}"
        has = candidate_features if candidate_features is not None else "none"
        raise ExportError(f"{model_dir / 'config.pbtxt'} {said}, the model takes {has}: {_PICK_THE_FOLDER}")
    return contract


_PICK_THE_FOLDER = (
    "pick the model folder made for this model (--model-name sequence_ranker for `aisle train`, "
    "ranker for `aisle train --skeleton`)"
)


def _contract(model_dir: Path, history_length: int) -> ModelContract:
    config_path = model_dir / "config.pbtxt"
    if not config_path.is_file():
        raise ExportError(
            f"{config_path} is missing: a model folder needs its config.pbtxt before versions can be exported"
        )
    try:
        contract = read_model_config(config_path)
    except ModelConfigError as exc:
        raise ExportError(str(exc)) from None
    if contract.history_length != history_length:
        raise ExportError(
            f"{config_path} says history length {contract.history_length}, the model has {history_length}: "
            + _PICK_THE_FOLDER
        )
    return contract


def export_index(
    model: torch.nn.Module,
    index_root: Path,
    item_ids: Sequence[str],
    popularity: np.ndarray,
    categories: Sequence[str],
    brands: Sequence[str],
    model_name: str,
    model_version: str,
    embeddings: np.ndarray | None = None,
    covisitation: CoVisitationTable | None = None,
) -> Path:
    """A retrieval index version: ``embeddings`` [items, dim] (default: the model's ``item_vectors()``) and the
    co-visitation source's table when given."""
    if embeddings is None:
        embeddings = model.item_vectors().numpy()
    return save_index(
        index_root,
        item_ids=item_ids,
        embeddings=embeddings,
        popularity=popularity,
        categories=categories,
        brands=brands,
        model_name=model_name,
        model_version=model_version,
        covisitation=covisitation,
    )


def export_query_tower(query_tower: torch.nn.Module, folder: Path, num_items: int, metadata: dict) -> Path:
    """Writes ``folder/query_tower.onnx`` (input ``history_item_ids`` INT64 [batch, L] tokens = index row + 1,
    0 = padding, left-padded; output ``query_embedding`` FP32 [batch, D]) and ``metadata.json``, atomically and
    parity-checked. ``folder`` must not exist yet; returns it."""
    if folder.exists():
        raise ExportError(f"{folder} already exists; query tower versions are immutable")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(folder.parent, f".staging-{folder.name}-")
    try:
        query_tower.eval()
        path = staging / QUERY_TOWER_FILE
        length = query_tower.history_length
        with _quiet_exporter():
            torch.onnx.export(
                query_tower,
                (torch.zeros(2, length, dtype=torch.int64),),
                str(path),
                input_names=[HISTORY_INPUT],
                output_names=[QUERY_OUTPUT],
                dynamic_shapes={HISTORY_INPUT: {0: torch.export.Dim("batch"), 1: torch.export.Dim("length")}},
                dynamo=True,
                opset_version=18,
                external_data=False,
                verbose=False,
            )
        onnx.checker.check_model(str(path), full_check=True)
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(1)
        history = rng.integers(0, num_items + 1, size=(3, length), dtype=np.int64)
        history[0, :-1] = 0
        history[1, :] = 0
        got = session.run([QUERY_OUTPUT], {HISTORY_INPUT: history})[0]
        with torch.no_grad():
            want = query_tower(torch.from_numpy(history)).numpy()
        diff = _check_parity(got, want)
        (staging / "metadata.json").write_text(
            json.dumps(
                {
                    **metadata,
                    "inputs": {HISTORY_INPUT: ["batch", "length"]},
                    "outputs": {QUERY_OUTPUT: ["batch", int(want.shape[1])]},
                    "tokens": "index row + 1 (item_ids.txt line), 0 = padding, left-padded",
                    "exported_at": datetime.now(UTC).isoformat(),
                    "parity_max_abs_diff": diff,
                    "torch": torch.__version__,
                    "onnx": onnx.__version__,
                },
                indent=2,
            )
            + "\n",
            encoding="utf-8",
        )
        os.replace(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


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


def _export_onnx(model: torch.nn.Module, path: Path, contract) -> None:
    with _quiet_exporter():
        _export_dynamo(model, path, contract)


def _export_dynamo(model: torch.nn.Module, path: Path, contract) -> None:
    batch, count = torch.export.Dim("batch"), torch.export.Dim("candidates")
    inputs = [torch.zeros(2, model.history_length, dtype=torch.int64), torch.ones(2, 8, dtype=torch.int64)]
    names = [HISTORY_INPUT, CANDIDATES_INPUT]
    shapes = {HISTORY_INPUT: {0: batch}, CANDIDATES_INPUT: {0: batch, 1: count}}
    if FEATURES_INPUT in contract.inputs:
        width = contract.inputs[FEATURES_INPUT].shape[-1]
        inputs.append(torch.zeros(2, 8, width, dtype=torch.float32))
        names.append(FEATURES_INPUT)
        shapes[FEATURES_INPUT] = {0: batch, 1: count}
    torch.onnx.export(
        model,
        tuple(inputs),
        str(path),
        input_names=names,
        output_names=_outputs(contract),
        dynamic_shapes=shapes,
        dynamo=True,
        opset_version=18,
        external_data=False,
        verbose=False,
    )


def _outputs(contract) -> list[str]:
    return [PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if contract.has_return_head else [])


def _check_parity(got: np.ndarray, want: np.ndarray) -> float:
    if got.shape != want.shape:
        raise ExportError(f"ONNX Runtime output shape {got.shape} differs from torch's {want.shape}")
    diff = float(np.abs(got - want).max())
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"ONNX Runtime and torch disagree by {diff:.2e} (> {PARITY_TOLERANCE:.0e})")
    return diff


def _parity(model: torch.nn.Module, session, contract, snapshot: ItemFeatureSnapshot | None) -> float:
    """Largest |ORT - torch| over every output, on a batch of 3 (one one-item history) x 37 candidates."""
    rng = np.random.default_rng(1)
    history = rng.integers(0, model.num_items + 1, size=(3, model.history_length), dtype=np.int64)
    history[0, :-1] = 0  # a one-item history
    candidates = rng.integers(1, model.num_items + 1, size=(3, 37), dtype=np.int64)
    candidates[1, :5] = history[1, -5:]  # repeat candidates exercise the history features
    feeds = {HISTORY_INPUT: history, CANDIDATES_INPUT: candidates}
    args = [torch.from_numpy(history), torch.from_numpy(candidates)]
    if snapshot is not None:
        features = candidate_features(snapshot, history, candidates)
        feeds[FEATURES_INPUT] = features
        args.append(torch.from_numpy(features))
    names = _outputs(contract)
    got = session.run(names, feeds)
    with torch.no_grad():
        want = model(*args)
    want = [w.numpy() for w in (want if isinstance(want, tuple | list) else (want,))]
    if len(want) < len(names):
        raise ExportError(f"config.pbtxt declares outputs {names}, the model returns {len(want)}")
    return max(_check_parity(g, w) for g, w in zip(got, want[: len(names)], strict=True))


def staged_text(path: Path, text: str) -> Path:
    """``text`` written beside ``path`` in a hidden temporary file, to be renamed over it (:func:`os.replace`) once
    the rest of a run is written too: a write that fails (a full disk) leaves ``path`` as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, staged = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
        share_like_a_plain_write(Path(staged))  # mkstemp's 0600 would keep other users out
    except BaseException:
        Path(staged).unlink(missing_ok=True)
        raise
    return Path(staged)


def catalog_json(catalog) -> str:
    """``catalog.json``, the item facts the gateway's re-ranking reads (services/gateway/catalog.py), from a training
    catalog (the data's or the synthetic shop's): title, category, brand, price, ``margin`` (fraction of the price:
    the data's, or the loader's assumed one where it has none) and ``stock`` (units as of the data). Without margin
    and stock a policy with ``ExpectedProfitScorer`` or ``InStockFilter`` could not start on it."""
    items = {
        item: {
            "title": title,
            "category": category,
            "brand": brand,
            "price": float(price),
            "margin": float(margin),
            "stock": int(stock),
        }
        for item, title, category, brand, price, margin, stock in zip(
            catalog.item_ids,
            catalog.titles,
            catalog.categories,
            catalog.brands,
            catalog.prices,
            catalog.margins,
            catalog.stock,
            strict=True,
        )
    }
    return json.dumps(items)


def write_catalog(catalog, path: Path) -> None:
    """:func:`catalog_json` into ``path``, replaced whole (a failed write leaves the previous one)."""
    os.replace(staged_text(path, catalog_json(catalog)), path)
