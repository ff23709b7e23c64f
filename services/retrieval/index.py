"""The retrieval index artefact and exact (brute-force) search over it.

An index version is a folder, written by training/export code and read here::

    <index root>/<version>/
        metadata.json          format, version, model, dimension, item_count, metric, checksums (the contract)
        item_ids.txt           one item id per line; row i of the matrices below
        item_embeddings.npy    float32 [item_count, dimension]
        item_popularity.npy    float32 [item_count]   purchases in the training window
        item_attributes.json   {"category": [...], "brand": [...]} aligned with item_ids.txt

A folder is refused (with a message saying which check failed) unless every file is present, every checksum
matches and shapes agree with the metadata. ScaNN comes behind the same :class:`ExactIndex` search interface.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

FORMAT = "aisle-index/1"
METADATA_FILE = "metadata.json"
IDS_FILE = "item_ids.txt"
EMBEDDINGS_FILE = "item_embeddings.npy"
POPULARITY_FILE = "item_popularity.npy"
ATTRIBUTES_FILE = "item_attributes.json"
DATA_FILES = (IDS_FILE, EMBEDDINGS_FILE, POPULARITY_FILE, ATTRIBUTES_FILE)


class InvalidIndex(ValueError):
    """An index folder that must not serve. The message names the folder and the failed check."""


@dataclass(frozen=True)
class IndexArtifact:
    """A loaded, verified index version."""

    path: Path
    version: str
    model_name: str
    model_version: str
    item_ids: list[str]
    embeddings: np.ndarray
    popularity: np.ndarray
    categories: list[str]
    brands: list[str]

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_index(
    root: Path,
    *,
    item_ids: Sequence[str],
    embeddings: np.ndarray,
    popularity: np.ndarray,
    categories: Sequence[str],
    brands: Sequence[str],
    model_name: str,
    model_version: str,
    version: str | None = None,
) -> Path:
    """Writes a complete index version under ``root`` atomically (temp folder, then rename); returns its path."""
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    popularity = np.ascontiguousarray(popularity, dtype=np.float32)
    count = len(item_ids)
    if embeddings.ndim != 2 or embeddings.shape[0] != count:
        raise ValueError(f"embeddings must be [{count}, dim], got {embeddings.shape}")
    if popularity.shape != (count,) or len(categories) != count or len(brands) != count:
        raise ValueError("popularity, categories and brands must have one entry per item")
    if len(set(item_ids)) != count or any(not item or "\n" in item for item in item_ids):
        raise ValueError("item ids must be unique, non-empty and single-line")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")
    version = version or datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise FileExistsError(f"index version {final} already exists")
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=root))
    try:
        (staging / IDS_FILE).write_text("\n".join(item_ids) + "\n", encoding="utf-8")
        np.save(staging / EMBEDDINGS_FILE, embeddings)
        np.save(staging / POPULARITY_FILE, popularity)
        (staging / ATTRIBUTES_FILE).write_text(
            json.dumps({"category": list(categories), "brand": list(brands)}), encoding="utf-8"
        )
        metadata = {
            "format": FORMAT,
            "version": version,
            "model": {"name": model_name, "version": model_version},
            "dimension": int(embeddings.shape[1]),
            "item_count": count,
            "metric": "dot_product",
            "created_at": datetime.now(UTC).isoformat(),
            "checksums": {name: _sha256(staging / name) for name in DATA_FILES},
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def latest_version(root: Path) -> Path:
    """The newest complete version folder under ``root`` (names sort by time), or ``root`` itself if it is one."""
    if (root / METADATA_FILE).is_file():
        return root
    if not root.is_dir():
        raise InvalidIndex(f"index path {root} does not exist; build one with `aisle train` (or set the path)")
    versions = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    versions = [p for p in versions if (p / METADATA_FILE).is_file()]
    if not versions:
        raise InvalidIndex(f"no index version (a folder with {METADATA_FILE}) under {root}")
    return versions[-1]


def load_index(path: Path) -> IndexArtifact:
    """Loads and verifies one index version folder. Raises :class:`InvalidIndex` on any mismatch."""
    try:
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidIndex(f"{path}: unreadable {METADATA_FILE}: {exc}") from None
    if metadata.get("format") != FORMAT:
        raise InvalidIndex(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    checksums = metadata.get("checksums", {})
    for name in DATA_FILES:
        file = path / name
        if not file.is_file():
            raise InvalidIndex(f"{path}: missing {name}")
        if checksums.get(name) != _sha256(file):
            raise InvalidIndex(f"{path}: checksum mismatch for {name} (corrupt or partly copied)")
    item_ids = (path / IDS_FILE).read_text(encoding="utf-8").splitlines()
    embeddings = np.load(path / EMBEDDINGS_FILE, allow_pickle=False)
    popularity = np.load(path / POPULARITY_FILE, allow_pickle=False)
    attributes = json.loads((path / ATTRIBUTES_FILE).read_text(encoding="utf-8"))
    count, dimension = metadata.get("item_count"), metadata.get("dimension")
    if len(item_ids) != count or embeddings.shape != (count, dimension) or popularity.shape != (count,):
        raise InvalidIndex(
            f"{path}: shapes disagree with metadata (ids {len(item_ids)}, embeddings {embeddings.shape}, "
            f"popularity {popularity.shape}; metadata says {count} x {dimension})"
        )
    if embeddings.dtype != np.float32 or not np.isfinite(embeddings).all():
        raise InvalidIndex(f"{path}: embeddings must be finite float32")
    if len(attributes.get("category", [])) != count or len(attributes.get("brand", [])) != count:
        raise InvalidIndex(f"{path}: item attributes do not cover every item")
    model = metadata.get("model", {})
    return IndexArtifact(
        path=path,
        version=str(metadata["version"]),
        model_name=str(model.get("name", "")),
        model_version=str(model.get("version", "")),
        item_ids=item_ids,
        embeddings=embeddings,
        popularity=popularity,
        categories=list(attributes["category"]),
        brands=list(attributes["brand"]),
    )


class ExactIndex:
    """Top-k by exact dot product. The reference every approximate index is measured against."""

    def __init__(self, embeddings: np.ndarray):
        self._embeddings = embeddings

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(rows, scores) of the ``k`` best items, best first; ``allowed`` is a boolean mask over rows."""
        scores = self._embeddings @ query.astype(np.float32, copy=False)
        return top_k(scores, k, allowed)


def top_k(scores: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the ``k`` highest scores among ``allowed`` rows, sorted best first (ties by row)."""
    if allowed is not None:
        scores = np.where(allowed, scores, -np.inf)
        k = min(k, int(allowed.sum()))
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32)
    rows = np.argpartition(-scores, k - 1)[:k]
    order = np.lexsort((rows, -scores[rows]))
    rows = rows[order]
    return rows.astype(np.int64), scores[rows].astype(np.float32)
