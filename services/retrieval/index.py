"""The retrieval index artefact: one immutable, versioned folder per index build.

    <index root>/<version>/
        metadata.json          format, version, model, dimension, item_count, regions, popularity_regions
                               (the regions whose region_popularity row is their own sales; regional_popularity,
                               for older readers: whether all of them are), build parameters,
                               created_at, data_as_of (when the stock and regions were exported) and a sha256 for
                               every other file (the contract; checked on every load)
        item_ids.txt           one item id per line (none empty); row i of every matrix below (token i + 1 in
                               query_tower.onnx)
        item_embeddings.npy    float32 [items, dimension]
        item_table.npz         popularity [items], trending [items], stock [items], sold_in [items, regions],
                               sold_everywhere [items] (sold in any region, one without a column included;
                               optional: without it, the items sold in every listed region),
                               region_popularity [regions, items]
        item_attributes.json   {"category": [...], "brand": [...]} aligned with item_ids.txt
        regions.txt            region codes, one per line (column j of sold_in, row j of region_popularity)
        query_tower.onnx       optional: history_item_ids INT64 [batch, L] -> query_embedding FP32 [batch, D]
        covisitation.npz       optional: indptr, rows, scores: per anchor item, the rows bought with it (best first;
                               see services.retrieval.covisitation)
        covisitation_anchors.txt  optional: the anchor item ids, one per line (a shard's anchors are the whole
                               catalog's items); without it anchor i is row i
        scann/                 optional: the ScaNN searcher (tree + asymmetric hashing + reordering)

Writers (training export, ``aisle index build``) go through :func:`save_index`, which writes into a hidden staging
folder and renames it into place, so a reader never sees half a version. :func:`load_index` refuses a folder unless
every file is present, every checksum matches and every shape agrees with the metadata.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import zipfile
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from services.core.id_lines import format_id_lines, id_list_problem, read_id_lines
from services.core.paths import staging_folder
from services.core.validation import region_problem
from services.retrieval.covisitation import CoVisitationTable

FORMAT = "aisle-index/1"
METADATA_FILE = "metadata.json"
IDS_FILE = "item_ids.txt"
EMBEDDINGS_FILE = "item_embeddings.npy"
TABLE_FILE = "item_table.npz"
ATTRIBUTES_FILE = "item_attributes.json"
REGIONS_FILE = "regions.txt"
QUERY_TOWER_FILE = "query_tower.onnx"
COVISITATION_FILE = "covisitation.npz"
COVISITATION_ANCHORS_FILE = "covisitation_anchors.txt"
SCANN_DIR = "scann"
REQUIRED_FILES = (IDS_FILE, EMBEDDINGS_FILE, TABLE_FILE, ATTRIBUTES_FILE, REGIONS_FILE)


class InvalidIndex(ValueError):
    """An index folder that must not serve. The message names the folder and the failed check."""


@dataclass(frozen=True)
class IndexArtifact:
    """A loaded, verified index version. Arrays are read-only: availability changes live elsewhere."""

    path: Path
    version: str
    model_name: str
    model_version: str
    item_ids: list[str]
    embeddings: np.ndarray
    popularity: np.ndarray
    trending: np.ndarray
    stock: np.ndarray
    sold_in: np.ndarray  # bool [items, regions]
    region_popularity: np.ndarray  # [regions, items]
    regions: list[str]
    categories: list[str]
    brands: list[str]
    build: dict = field(default_factory=dict)
    #: When the version was written (seconds since the epoch).
    created_at: float = 0.0
    #: When its stock and regions were exported (seconds since the epoch): availability updates older than this are
    #: stale, newer ones still apply. A version built from another keeps its source's; ``created_at`` for a version
    #: written before metadata recorded it.
    data_as_of: float = 0.0
    query_tower: Path | None = None
    scann_dir: Path | None = None
    #: Items bought together, per anchor (None: the index has no co-visitation data).
    covisitation: CoVisitationTable | None = None
    #: Anchor item ids of the co-visitation table (None: anchor i is row i).
    covisitation_anchors: list[str] | None = None
    #: The regions whose row of ``region_popularity`` is ranked by their own sales (enough of them); any other
    #: region's row repeats the shop's list or leans on it, and no answer may call its popular items the region's.
    popularity_regions: frozenset[str] = frozenset()
    #: bool [items]: sold in every region, including one this version has no column for (``sold_in`` lists the
    #: known regions only). Versions written before it: the items sold in every known region.
    sold_everywhere: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.sold_everywhere is None:
            everywhere = self.sold_in.all(axis=1)
            everywhere.flags.writeable = False
            object.__setattr__(self, "sold_everywhere", everywhere)

    @property
    def dimension(self) -> int:
        return int(self.embeddings.shape[1])

    def __len__(self) -> int:
        return len(self.item_ids)

    def region_column(self, region: str) -> int | None:
        try:
            return self.regions.index(region)
        except ValueError:
            return None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != METADATA_FILE)


#: How new version names are written: the UTC time to the microsecond, so that names sort in time order.
VERSION_FORMAT = "%Y%m%dT%H%M%S%fZ"
#: Time names a version may have (ours, and to the second, as older builds and hand-made versions have them), the
#: format each is read with, and the step a new name takes after one so that it sorts after it ("...T000059Z" sorts
#: after every microsecond of that second: "0" < "Z").
_TIME_NAMES = (
    (re.compile(r"\d{8}T\d{12}Z"), VERSION_FORMAT, timedelta(microseconds=1)),
    (re.compile(r"\d{8}T\d{6}Z"), "%Y%m%dT%H%M%SZ", timedelta(seconds=1)),
)


def new_version(*roots: Path) -> str:
    """A new version name: the UTC time to the microsecond, and after every version already under ``roots``
    (just after the newest when the clock is behind it). Servers serve the name that sorts last, so a version
    named before the newest, after the clock stepped back (an NTP correction, another machine's clock), would
    never serve. Names that are not times (given by hand) are not compared."""
    name = datetime.now(UTC)
    for root in roots:
        for folder in reversed(index_versions(root)):
            after = _just_after(folder.name)
            if after is not None:
                name = max(name, after)
                break
    return name.strftime(VERSION_FORMAT)


def _just_after(name: str) -> datetime | None:
    """The earliest time whose :data:`VERSION_FORMAT` name sorts after the time name ``name``; None for another."""
    for pattern, layout, step in _TIME_NAMES:
        if pattern.fullmatch(name):
            try:
                return datetime.strptime(name, layout).replace(tzinfo=UTC) + step
            except ValueError:  # digits of no date (month 13, hour 25): not a time name
                return None
    return None


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
    regions: Sequence[str] = (),
    sold_in: np.ndarray | None = None,
    region_popularity: np.ndarray | None = None,
    sold_everywhere: np.ndarray | None = None,
    trending: np.ndarray | None = None,
    stock: np.ndarray | None = None,
    query_tower: Path | None = None,
    build_ann: Callable[[np.ndarray, Path], dict] | None = None,
    sharding: dict[str, int] | None = None,
    covisitation: CoVisitationTable | None = None,
    covisitation_anchors: Sequence[str] | None = None,
    data_as_of: float | None = None,
    popularity_regions: Collection[str] | None = None,
) -> Path:
    """Writes a complete index version under ``root`` atomically; returns its path.

    Optional data defaults to: sold everywhere, region popularity = overall popularity, trending = popularity,
    stock = 1. ``sold_everywhere`` (bool [items]) marks the items sold in any region, one without a column here
    included; its default is the items ``sold_in`` every listed region. ``popularity_regions`` names the regions whose
    ``region_popularity`` row is ranked by their own sales (recorded in the metadata; a version built from another
    passes it on); its default is every region when ``region_popularity`` is given, none without it (every region's
    list is then the shop's). ``query_tower`` is an ONNX file
    copied in. ``build_ann(embeddings, folder)`` writes an ANN structure into ``folder`` (see
    :mod:`services.retrieval.build`) and returns its parameters for the metadata.
    ``sharding`` (``{"shards": n}`` for a router's data, ``{"shards": n, "shard": i}`` for a shard) is recorded with
    the build parameters. ``covisitation`` is the co-visitation source's table; its anchors are this index's rows
    unless ``covisitation_anchors`` names them (a shard's table is keyed by every catalog item). ``data_as_of``
    (seconds since the epoch) is when ``stock`` and ``sold_in`` were exported, default now: a version built from
    another passes its source's ``data_as_of``, so a replica that swaps it in keeps the availability updates pushed
    since that export (see :attr:`IndexArtifact.data_as_of`). Given neither ``stock`` nor ``sold_in`` (as
    ``aisle train`` writes one), the version holds no stock data, and its default is the epoch: every update
    pushed still applies (an item sold out before the version was written stays sold out).
    """
    has_stock_data = stock is not None or sold_in is not None  # read before the defaults fill them
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    count = len(item_ids)
    regions = list(regions)
    popularity = np.asarray(popularity, dtype=np.float32)
    sold_in = np.ones((count, len(regions)), dtype=bool) if sold_in is None else np.asarray(sold_in, dtype=bool)
    if popularity_regions is None:
        popularity_regions = regions if region_popularity is not None else ()
    popularity_regions = sorted(set(popularity_regions))
    if region_popularity is None:
        region_popularity = np.tile(popularity, (len(regions), 1))
    region_popularity = np.asarray(region_popularity, dtype=np.float32).reshape(len(regions), count)
    trending = popularity.copy() if trending is None else np.asarray(trending, dtype=np.float32)
    stock = np.ones(count, dtype=np.int64) if stock is None else np.asarray(stock, dtype=np.int64)
    _check_inputs(item_ids, embeddings, popularity, categories, brands, regions, sold_in, trending, stock)
    if sold_everywhere is None:
        sold_everywhere = sold_in.all(axis=1)
    sold_everywhere = np.asarray(sold_everywhere, dtype=bool)
    if sold_everywhere.shape != (count,):
        raise ValueError(f"sold_everywhere must have one entry per item, got shape {sold_everywhere.shape}")
    if not set(popularity_regions) <= set(regions):
        raise ValueError(f"popularity_regions {sorted(set(popularity_regions) - set(regions))} are not in regions")
    if covisitation is not None:
        if covisitation_anchors is not None:
            _check_anchor_ids(covisitation_anchors)
        anchors = count if covisitation_anchors is None else len(covisitation_anchors)
        _check_covisitation(covisitation, count, anchors)
    if (root / METADATA_FILE).is_file():  # a version folder given where its root belongs: it would be corrupted
        raise ValueError(f"{root} is an index version, not a folder of versions: write to its parent, {root.parent}")
    version = version or new_version(root)
    written = datetime.now(UTC)
    if data_as_of is None and not has_stock_data:
        data_as_of = 0.0  # no stock data of its own: nothing pushed so far is superseded by it
    as_of = written if data_as_of is None else datetime.fromtimestamp(data_as_of, UTC)
    root.mkdir(parents=True, exist_ok=True)
    final = root / version
    if final.exists():
        raise FileExistsError(f"index version {final} already exists; versions are immutable")
    staging = staging_folder(root, f".{version}-")
    try:
        (staging / IDS_FILE).write_text(format_id_lines(item_ids), encoding="utf-8")
        np.save(staging / EMBEDDINGS_FILE, embeddings)
        with (staging / TABLE_FILE).open("wb") as handle:
            np.savez(
                handle,
                popularity=popularity,
                trending=trending,
                stock=stock,
                sold_in=sold_in,
                sold_everywhere=sold_everywhere,
                region_popularity=region_popularity,
            )
        (staging / ATTRIBUTES_FILE).write_text(
            json.dumps({"category": list(categories), "brand": list(brands)}), encoding="utf-8"
        )
        (staging / REGIONS_FILE).write_text(format_id_lines(regions), encoding="utf-8")
        if query_tower is not None:
            shutil.copyfile(query_tower, staging / QUERY_TOWER_FILE)
        if covisitation is not None:
            with (staging / COVISITATION_FILE).open("wb") as handle:
                np.savez(handle, indptr=covisitation.indptr, rows=covisitation.rows, scores=covisitation.scores)
            if covisitation_anchors is not None:
                (staging / COVISITATION_ANCHORS_FILE).write_text(
                    format_id_lines(covisitation_anchors), encoding="utf-8"
                )
        build = {"ann": "exact"}
        if build_ann is not None:
            (staging / SCANN_DIR).mkdir()
            build = build_ann(embeddings, staging / SCANN_DIR)
        if sharding:
            build = {**build, **sharding}
        metadata = {
            "format": FORMAT,
            "version": version,
            "model": {"name": model_name, "version": model_version},
            "dimension": int(embeddings.shape[1]),
            "item_count": count,
            "regions": regions,
            "popularity_regions": popularity_regions,
            # What readers older than ``popularity_regions`` read: every region's own sales, or none called so.
            "regional_popularity": bool(regions) and popularity_regions == sorted(set(regions)),
            "metric": "dot_product",
            "build": build,
            "created_at": written.isoformat(),
            "data_as_of": as_of.isoformat(),
            "checksums": {name: _sha256(staging / name) for name in _files(staging)},
        }
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        os.replace(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def save_index_like(artifact: IndexArtifact, root: Path, **changes) -> Path:
    """A new whole version under ``root`` holding ``artifact``'s items and data (query tower and co-visitation table
    included, no ANN structure; stock data as of the artifact's ``data_as_of``), with ``changes`` (any
    :func:`save_index` keyword) in place of its own."""
    data = dict(
        item_ids=artifact.item_ids,
        embeddings=artifact.embeddings,
        popularity=artifact.popularity,
        categories=artifact.categories,
        brands=artifact.brands,
        model_name=artifact.model_name,
        model_version=artifact.model_version,
        regions=artifact.regions,
        sold_in=artifact.sold_in,
        sold_everywhere=artifact.sold_everywhere,
        region_popularity=artifact.region_popularity,
        trending=artifact.trending,
        stock=artifact.stock,
        query_tower=artifact.query_tower,
        covisitation=artifact.covisitation,
        covisitation_anchors=artifact.covisitation_anchors,
        data_as_of=artifact.data_as_of,
        popularity_regions=artifact.popularity_regions,
    )
    return save_index(root, **{**data, **changes})


def _check_inputs(item_ids, embeddings, popularity, categories, brands, regions, sold_in, trending, stock):
    count = len(item_ids)
    if not count:
        raise ValueError("an index needs at least one item (a shard of a catalog smaller than the shard count?)")
    if embeddings.ndim != 2 or embeddings.shape[0] != count or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must be [{count}, dim], got {embeddings.shape}")
    for name, values in (("popularity", popularity), ("trending", trending), ("stock", stock)):
        if values.shape != (count,):
            raise ValueError(f"{name} must have one entry per item, got shape {values.shape}")
    if len(categories) != count or len(brands) != count:
        raise ValueError("categories and brands must have one entry per item")
    if sold_in.shape != (count, len(regions)):
        raise ValueError(f"sold_in must be [{count}, {len(regions)}], got {sold_in.shape}")
    _check_ids(regions, "region")
    unsendable = [region for region in regions if region_problem(region)]
    if unsendable:  # a request could never name it (``context.region``): its column would never serve
        raise ValueError(
            f"regions {unsendable[:5]} are not region codes requests can send (at most 16 letters, digits, '-' "
            "and '_'): name them by code (GB, US-CA)"
        )
    _check_ids(item_ids, "item id")
    if not np.isfinite(embeddings).all():
        raise ValueError("embeddings contain NaN or infinite values")


def _check_covisitation(table: CoVisitationTable, count: int, anchors: int) -> None:
    if table.anchors != anchors:
        raise ValueError(f"the co-visitation table has {table.anchors} anchors, expected {anchors}")
    if table.rows.size and (table.rows.min() < 0 or table.rows.max() >= count):
        raise ValueError(f"co-visitation rows must lie in [0, {count})")
    starts = np.zeros(table.rows.size + 1, dtype=bool)
    starts[table.indptr] = True  # where an anchor's neighbours begin
    if np.any((np.diff(table.scores) > 0) & ~starts[1:-1]):
        raise ValueError("co-visitation scores must be best first within each anchor")


def _check_anchor_ids(anchors: Sequence[str]) -> None:
    _check_ids(anchors, "co-visitation anchor id")


def _check_ids(ids: Sequence[str], what: str) -> None:
    """Ids written one per line: see :mod:`services.core.id_lines`."""
    problem = id_list_problem(ids, what)
    if problem is not None:
        raise ValueError(problem)


def _read_lines(path: Path) -> list[str]:
    try:
        return read_id_lines(path)
    except ValueError as exc:
        raise InvalidIndex(f"{path}: {exc}") from None


def index_versions(root: Path) -> list[Path]:
    """Complete version folders under ``root`` (names sort by time), oldest first."""
    if not root.is_dir():
        return []
    return sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / METADATA_FILE).is_file()
    )


def latest_version(root: Path) -> Path:
    """The newest complete version folder under ``root``, or ``root`` itself if it is one."""
    if (root / METADATA_FILE).is_file():
        return root
    if not root.is_dir():
        raise InvalidIndex(f"index path {root} does not exist; build one with `aisle train` (or set the path)")
    versions = index_versions(root)
    if not versions:
        raise InvalidIndex(f"no index version (a folder with {METADATA_FILE}) under {root}")
    return versions[-1]


def load_index(path: Path, mmap: bool = False) -> IndexArtifact:
    """Loads and verifies one index version folder. Raises :class:`InvalidIndex` on any mismatch.

    ``mmap`` maps the embeddings instead of reading them: pages are loaded as rows are used (a shard router
    looks up only the rows of the request's history and anchors)."""
    try:
        metadata = json.loads((path / METADATA_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InvalidIndex(f"{path}: unreadable {METADATA_FILE}: {exc}") from None
    if not isinstance(metadata, dict) or not isinstance(metadata.get("checksums", {}), dict):
        raise InvalidIndex(f"{path}: {METADATA_FILE} is not an object with a checksums object")
    if metadata.get("format") != FORMAT:
        raise InvalidIndex(f"{path}: format {metadata.get('format')!r} is not {FORMAT!r}")
    checksums = metadata.get("checksums", {})
    for name in REQUIRED_FILES:
        if name not in checksums:
            raise InvalidIndex(f"{path}: metadata has no checksum for {name}")
    present = set(_files(path))
    for name, expected in checksums.items():
        if name not in present:
            raise InvalidIndex(f"{path}: missing {name}")
        if _sha256(path / name) != expected:
            raise InvalidIndex(f"{path}: checksum mismatch for {name} (corrupt or partly copied)")
    if extra := present - set(checksums):
        raise InvalidIndex(f"{path}: files not in the metadata: {sorted(extra)[:5]}")
    try:
        return _read(path, metadata, mmap)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InvalidIndex):
            raise
        # TypeError / AttributeError: JSON of the wrong shape (a list where an object belongs, say)
        raise InvalidIndex(f"{path}: unreadable: {type(exc).__name__}: {exc}") from None


def _read(path: Path, metadata: dict, mmap: bool) -> IndexArtifact:
    item_ids = _read_lines(path / IDS_FILE)
    embeddings = np.load(path / EMBEDDINGS_FILE, allow_pickle=False, mmap_mode="r" if mmap else None)
    with np.load(path / TABLE_FILE, allow_pickle=False) as table:
        columns = {name: table[name] for name in table.files}
    attributes = json.loads((path / ATTRIBUTES_FILE).read_text(encoding="utf-8"))
    regions = _read_lines(path / REGIONS_FILE)
    count, dimension = metadata.get("item_count"), metadata.get("dimension")
    expected = {
        "popularity": (count,),
        "trending": (count,),
        "stock": (count,),
        "sold_in": (count, len(regions)),
        "region_popularity": (len(regions), count),
    }
    if "sold_everywhere" in columns:  # optional: versions before it hold the items sold in every region
        expected["sold_everywhere"] = (count,)
    shapes = {name: columns[name].shape for name in expected}
    if (
        len(item_ids) != count
        or embeddings.shape != (count, dimension)
        or shapes != expected
        or regions != metadata.get("regions")
    ):
        raise InvalidIndex(
            f"{path}: shapes disagree with metadata (ids {len(item_ids)}, embeddings {embeddings.shape}, "
            f"table {shapes}, regions {regions}; metadata says {count} x {dimension})"
        )
    if embeddings.dtype != np.float32 or not np.isfinite(embeddings).all():
        raise InvalidIndex(f"{path}: embeddings must be finite float32")
    if len(attributes.get("category", [])) != count or len(attributes.get("brand", [])) != count:
        raise InvalidIndex(f"{path}: item attributes do not cover every item")
    covisitation, anchors = _read_covisitation(path, count, sharded=metadata.get("build", {}).get("shard") is not None)
    model = metadata.get("model", {})
    return IndexArtifact(
        path=path,
        version=str(metadata["version"]),
        model_name=str(model.get("name", "")),
        model_version=str(model.get("version", "")),
        item_ids=item_ids,
        embeddings=embeddings,
        popularity=columns["popularity"].astype(np.float32),
        trending=columns["trending"].astype(np.float32),
        stock=columns["stock"],
        sold_in=columns["sold_in"].astype(bool),
        region_popularity=columns["region_popularity"].astype(np.float32),
        regions=regions,
        categories=list(attributes["category"]),
        brands=list(attributes["brand"]),
        build=dict(metadata.get("build", {})),
        created_at=(created := _timestamp(metadata.get("created_at"))),
        data_as_of=_timestamp(metadata["data_as_of"]) if "data_as_of" in metadata else created,
        query_tower=path / QUERY_TOWER_FILE if (path / QUERY_TOWER_FILE).is_file() else None,
        scann_dir=path / SCANN_DIR if (path / SCANN_DIR).is_dir() else None,
        covisitation=covisitation,
        covisitation_anchors=anchors,
        popularity_regions=_popularity_regions(path, metadata, regions),
        sold_everywhere=columns["sold_everywhere"].astype(bool) if "sold_everywhere" in columns else None,
    )


def _popularity_regions(path: Path, metadata: dict, regions: list[str]) -> frozenset[str]:
    """The regions ranked by their own sales, as the metadata says; for versions written before
    ``popularity_regions``, every region or none, as ``regional_popularity`` says (every region when it names
    regions without saying, as versions older still were served)."""
    named = metadata.get("popularity_regions")
    if named is None:
        return frozenset(regions) if metadata.get("regional_popularity", bool(regions)) else frozenset()
    if not isinstance(named, list) or not set(named) <= set(regions):
        raise InvalidIndex(f"{path}: popularity_regions {named!r} must be a list of the index's regions {regions}")
    return frozenset(named)


def _read_covisitation(path: Path, count: int, sharded: bool) -> tuple[CoVisitationTable | None, list[str] | None]:
    anchors_file = path / COVISITATION_ANCHORS_FILE
    anchors = _read_lines(anchors_file) if anchors_file.is_file() else None
    if not (path / COVISITATION_FILE).is_file():
        if anchors is not None:
            raise InvalidIndex(f"{path}: {COVISITATION_ANCHORS_FILE} without {COVISITATION_FILE}")
        return None, None
    if sharded and anchors is None:
        raise InvalidIndex(
            f"{path}: a shard's {COVISITATION_FILE} needs {COVISITATION_ANCHORS_FILE} (its anchors are the whole "
            "catalog's items, not the shard's rows); rebuild it with `aisle index build --shards`"
        )
    try:
        with np.load(path / COVISITATION_FILE, allow_pickle=False) as packed:
            arrays = {name: packed[name] for name in ("indptr", "rows", "scores")}
        for name in ("indptr", "rows"):
            if not np.issubdtype(arrays[name].dtype, np.integer):
                raise ValueError(f"{name} must be integers, got {arrays[name].dtype}")
        table = CoVisitationTable(
            arrays["indptr"].astype(np.int64), arrays["rows"].astype(np.int64), arrays["scores"].astype(np.float32)
        )
        if anchors is not None and len(set(anchors)) != len(anchors):  # lines are non-empty (_read_lines)
            raise ValueError("co-visitation anchor ids must be unique")
        _check_covisitation(table, count, count if anchors is None else len(anchors))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise InvalidIndex(f"{path}: {COVISITATION_FILE}: {exc}") from None
    return table, anchors


def _timestamp(value: object) -> float:
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return 0.0
