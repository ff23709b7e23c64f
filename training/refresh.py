"""Fresh item features for a trained ranker, without retraining it (``aisle refresh-features``).

A version's ``item_features.npz`` describes the shop as of the data it was trained on, and its recent sales
(``log_trending``) age by the day. This rebuilds the snapshot from newer shop data for the items of a version's
vocabulary and writes a new version folder — the same ``model.onnx``, vocabulary and parity sample, a fresh
snapshot, ``metadata.json`` saying what refreshed it — for ``aisle models publish``, which validates it and swaps it
in atomically (and tells Triton). The model is unchanged, so nothing else needs checking.

The retrieval index's ``trending`` column (the trending source) ages the same way: :func:`refresh_index` writes a new
version of an exported index with the data's recent sales and everything else unchanged.

All of the data counts as history here (there is nothing to hold out): popularity and return rates over all its
baskets, recent sales over the ``trending_days`` days up to its newest basket, prices, margins and stock from its
catalog. Vocabulary items the data's catalog no longer holds keep their old catalog columns and get no recent
sales; the defaults row (unknown items) is the version's own and stays as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import zipfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from services.core.paths import staging_folder
from services.ranking.features import FEATURES_FILE, TRENDING_COLUMN, ItemFeatureSnapshot, ItemVocabulary
from services.ranking.model_config import CONFIG_FILE, METADATA_FILE, MODEL_FILE, VOCABULARY_FILE
from services.retrieval.index import METADATA_FILE as INDEX_METADATA_FILE
from services.retrieval.index import IndexArtifact, InvalidIndex, latest_version, load_index, save_index_like
from training.data.schema import Dataset
from training.data.splits import split_dataset
from training.features import DAY_S, TRENDING_DAYS, export_sales, item_snapshot


class RefreshError(Exception):
    """The version or the data cannot give a fresh snapshot; the message says why and what to do."""


@dataclass(frozen=True)
class Refreshed:
    folder: Path
    matched: int  # vocabulary items found in the data's catalog
    missing: int  # vocabulary items the data's catalog no longer holds
    newest_day: str  # the newest basket's day (UTC), the end of the recent-sales window


def refresh_features(dataset: Dataset, source: Path, out: Path) -> Refreshed:
    """Writes ``out``: the version folder ``source`` with ``item_features.npz`` rebuilt from ``dataset`` (recent
    sales over the window the version was trained with, :func:`version_trending_days`)."""
    if out.exists():
        raise RefreshError(f"{out} already exists; give --out a new folder")
    if (out.resolve().parent / CONFIG_FILE).is_file():
        raise RefreshError(
            f"{out} is inside the model folder, where a server would load it unchecked: write it elsewhere and "
            "`aisle models publish` it"
        )
    for name in (MODEL_FILE, VOCABULARY_FILE, FEATURES_FILE):
        if not (source / name).is_file():
            raise RefreshError(f"{source} has no {name}: refresh a version `aisle train` exported (one with features)")
    try:
        current = ItemFeatureSnapshot.load(source / FEATURES_FILE).require_current(source / FEATURES_FILE)
    except (zipfile.BadZipFile, EOFError) as exc:  # cut short, as an interrupted copy leaves it
        raise RefreshError(f"{source / FEATURES_FILE}: not a readable item feature snapshot: {exc}") from None
    except (OSError, ValueError, KeyError) as exc:  # unreadable, or another release's columns
        raise RefreshError(str(exc)) from None
    try:
        vocabulary = ItemVocabulary.read(source / VOCABULARY_FILE)
    except (OSError, ValueError) as exc:  # unreadable, or duplicate ids
        raise RefreshError(f"{source / VOCABULARY_FILE}: {exc}") from None
    if len(vocabulary) != len(current):
        raise RefreshError(f"{source}: {len(vocabulary)} vocabulary items but {len(current)} snapshot rows")

    trending_days = version_trending_days(source)
    history = split_dataset(dataset, min_baskets=sys.maxsize)  # every basket is history; nothing held out
    if not history.train:
        raise RefreshError(f"{dataset.name}: no purchases, so no popularity or recent sales to refresh from")
    fresh = item_snapshot(dataset.catalog, history, trending_days)
    tokens = vocabulary.tokens(dataset.catalog.item_ids)  # each data row's token in the version, 0 if none
    held = np.flatnonzero(tokens)
    values = current.values.copy()
    values[1:, TRENDING_COLUMN] = 0.0  # items the data no longer holds have no recent sales ...
    values[tokens[held]] = fresh.values[held + 1]  # ... the others get every fresh column
    matched = int(held.size)
    if not matched:
        raise RefreshError(
            f"none of the {len(vocabulary)} items of {source / VOCABULARY_FILE} is in {dataset.name}'s catalog: "
            "is this the same shop's data?"
        )
    newest = max(int(user.times[-1]) for user in history.train)
    newest_day = datetime.fromtimestamp(newest // DAY_S * DAY_S, UTC).date().isoformat()
    _write(
        source,
        out,
        ItemFeatureSnapshot(current.names, values),
        _metadata(source, dataset, trending_days, newest_day, matched, len(vocabulary)),
    )
    return Refreshed(out, matched, len(vocabulary) - matched, newest_day)


def version_trending_days(version: Path) -> int:
    """The recent-sales window a ranker version was trained with (its metadata's training config)."""
    config = _read_metadata(version).get("training", {}).get("config", {})
    return int(config.get("trending_days", TRENDING_DAYS))


def _read_metadata(source: Path) -> dict:
    path = source / METADATA_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _metadata(source: Path, dataset: Dataset, trending_days: int, newest_day: str, matched: int, items: int) -> dict:
    metadata = _read_metadata(source)
    metadata["features"] = {
        "refreshed_at": datetime.now(UTC).isoformat(),
        "from_version": source.name,
        "data": {"name": dataset.name, "fingerprint": dataset.fingerprint, "spec": dataset.spec},
        "newest_day": newest_day,
        "trending_days": trending_days,
        "vocabulary_items_matched": matched,
        "vocabulary_items_missing": items - matched,
    }
    return metadata


def _write(source: Path, out: Path, snapshot: ItemFeatureSnapshot, metadata: dict) -> None:
    """``out`` appears whole or not at all."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(out.parent, f".staging-{out.name}-")
    try:
        for item in source.iterdir():
            if item.is_file() and item.name not in (FEATURES_FILE, METADATA_FILE):
                shutil.copy2(item, staging / item.name)
        snapshot.save(staging / FEATURES_FILE)
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.rename(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def index_to_refresh(root: Path) -> IndexArtifact:
    """The newest version of the exported index ``root``, checked as :func:`refresh_index` needs it; the CLI calls
    this before writing anything, so a wrong ``--index`` costs no half-done refresh."""
    if (root / INDEX_METADATA_FILE).is_file():
        raise RefreshError(
            f"{root} is an index version, not an index root: pass the folder of versions, --index {root.parent}"
        )
    try:
        artifact = load_index(latest_version(root))
    except InvalidIndex as exc:
        raise RefreshError(f"cannot read the index to refresh: {exc}") from None
    if artifact.covisitation_anchors is not None or "shards" in artifact.build or artifact.scann_dir:
        raise RefreshError(
            f"{artifact.path} is a built (sharded or ScaNN) version: refresh the index `aisle train` exported, then "
            "build from it with `aisle index build` as after training"
        )
    return artifact


def refresh_index(
    dataset: Dataset, root: Path, trending_days: int = TRENDING_DAYS, artifact: IndexArtifact | None = None
) -> Path:
    """Adds a version to the exported index ``root`` (as ``aisle train`` writes it: whole, exact search) whose
    ``trending`` column holds ``dataset``'s recent sales as of its newest basket; every other part is the newest
    version's (``artifact``, when :func:`index_to_refresh` read it already). Items the data's catalog no longer holds
    have no recent sales. Returns the new version's path."""
    artifact = artifact if artifact is not None else index_to_refresh(root)
    counts = export_sales(dataset, trending_days).latest()
    rows = dataset.catalog.rows()
    found = [(i, rows[item]) for i, item in enumerate(artifact.item_ids) if item in rows]
    if not found:
        raise RefreshError(f"none of the index's {len(artifact)} items is in {dataset.name}'s catalog")
    trending = np.zeros(len(artifact), dtype=np.float32)
    index_rows, data_rows = (np.array(part) for part in zip(*found, strict=True))
    trending[index_rows] = counts[data_rows]
    return save_index_like(artifact, root, trending=trending)
