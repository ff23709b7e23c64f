"""What the retrieval service serves: an index version with its searcher, query encoder and live availability.

:class:`IndexHolder` swaps a whole :class:`ServingIndex` in one assignment, so a request sees one version from
start to end. A new version is validated (checksums, shapes, query tower, a recall spot-check against exact
search) before it replaces the old one; a bad one is refused with a log line and the old one keeps serving, and is
tried again only once its files change. At start-up the newest version that passes serves: a bad newest one is
refused (and remembered) alike, so a restarted replica serves what the running ones kept serving.
:class:`VersionHolder` and :class:`IndexWatcher` serve a shard router's query data the same way.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

import numpy as np

from aisle.retrieval.v1 import retrieval_service_pb2 as pb
from services.core.metrics import ArtifactMetrics
from services.core.versions import folder_stamp
from services.retrieval.build import searcher_for, spot_check_recall
from services.retrieval.index import (
    METADATA_FILE,
    IndexArtifact,
    InvalidIndex,
    index_versions,
    latest_version,
    load_index,
)
from services.retrieval.query_encoder import MeanEmbeddingEncoder, OnnxQueryTower, QueryEncoder
from services.retrieval.search import ExactSearcher, FilteredSearch

log = logging.getLogger(__name__)


#: The availability column of a region the index version has no column for: only its items sold everywhere are.
UNLISTED_REGION = -1


class Availability:
    """Stock and sold-in regions for one index version, changed in place by availability updates.

    Base masks (in stock and sold in a region) are cached per region and rebuilt only after an update.
    """

    def __init__(self, artifact: IndexArtifact):
        self.stock = artifact.stock.copy()
        self.sold_in = artifact.sold_in.copy()
        self.sold_everywhere = artifact.sold_everywhere.copy()
        self._masks: dict[tuple[int | None, bool], tuple[np.ndarray, int]] = {}

    def apply(self, row: int, stock: int, region_columns: list[int] | None) -> None:
        self.stock[row] = stock
        if region_columns is not None:  # a list of regions: sold there, and nowhere else
            self.sold_in[row] = False
            self.sold_in[row, region_columns] = True
            self.sold_everywhere[row] = False
        self._masks.clear()

    def base_mask(self, region_column: int | None, include_out_of_stock: bool) -> tuple[np.ndarray, int]:
        """(read-only mask, allowed count) of items sold in the region (a column of ``sold_in``, ``UNLISTED_REGION``,
        or None for any region) and (unless asked otherwise) in stock."""
        key = (region_column, include_out_of_stock)
        cached = self._masks.get(key)
        if cached is None:
            mask = np.ones(len(self.stock), dtype=bool) if include_out_of_stock else self.stock > 0
            if region_column == UNLISTED_REGION:
                mask &= self.sold_everywhere
            elif region_column is not None:
                mask &= self.sold_in[:, region_column]
            mask.flags.writeable = False
            cached = self._masks[key] = (mask, int(mask.sum()))
        return cached


@dataclass
class ServingIndex:
    artifact: IndexArtifact
    rows: dict[str, int]
    search: FilteredSearch
    encoder: QueryEncoder
    availability: Availability
    brand_codes: np.ndarray
    brand_vocabulary: dict[str, int]
    category_codes: np.ndarray
    category_vocabulary: dict[str, int]
    loaded_at: float
    #: Item ids as a numpy array, for turning result rows into ids in one step.
    item_id_array: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=object))
    #: Co-visitation anchor item id -> position in the artifact's table (the rows map when anchors are rows).
    covisitation_positions: dict[str, int] = field(default_factory=dict)
    #: Precomputed descending orders of static scores (popularity per region, trending), filled on first use.
    orders: dict = field(default_factory=dict)

    @property
    def version(self) -> str:
        return self.artifact.version


def _codes(values: list[str]) -> tuple[np.ndarray, dict[str, int]]:
    vocabulary: dict[str, int] = {}
    codes = np.fromiter((vocabulary.setdefault(v, len(vocabulary)) for v in values), dtype=np.int32, count=len(values))
    return codes, vocabulary


def open_index(path: Path, exact_threshold: int, min_recall: float, threads: int = 1) -> ServingIndex:
    """Loads and validates one version (blocking: run it in a thread)."""
    artifact = load_index(path)
    exact = ExactSearcher(artifact.embeddings)
    try:
        searcher = searcher_for(artifact)
    except Exception as exc:  # ScaNN raises RuntimeError on unreadable assets
        raise InvalidIndex(f"{path}: cannot load the ScaNN searcher: {exc}") from None
    recall = spot_check_recall(searcher, artifact.embeddings) if searcher is not exact else 1.0
    if recall < min_recall:
        raise InvalidIndex(f"{path}: recall spot-check {recall:.3f} is below {min_recall:.3f}")
    if artifact.query_tower is not None:
        encoder: QueryEncoder = OnnxQueryTower(artifact.query_tower, artifact.dimension, len(artifact), threads)
    else:
        encoder = MeanEmbeddingEncoder(artifact.embeddings)
    if artifact.covisitation is None:
        log.warning("index %s has no co-visitation table: the co-visitation source answers nothing", artifact.version)
    brand_codes, brands = _codes(artifact.brands)
    category_codes, categories = _codes(artifact.categories)
    log.info(
        "index %s ok: %d items x %d dims, %s search (spot-check recall@10 %.3f), %s queries",
        artifact.version,
        len(artifact),
        artifact.dimension,
        searcher.name,
        recall,
        encoder.name,
    )
    rows = {item: row for row, item in enumerate(artifact.item_ids)}
    anchors = artifact.covisitation_anchors
    return ServingIndex(
        artifact=artifact,
        rows=rows,
        search=FilteredSearch(searcher, exact, exact_threshold=exact_threshold),
        encoder=encoder,
        availability=Availability(artifact),
        brand_codes=brand_codes,
        brand_vocabulary=brands,
        category_codes=category_codes,
        category_vocabulary=categories,
        loaded_at=time.time(),
        item_id_array=np.array(artifact.item_ids, dtype=object),
        covisitation_positions=rows if anchors is None else {item: i for i, item in enumerate(anchors)},
    )


@dataclass(frozen=True)
class _Update:
    stock: int
    regions: tuple[str, ...] | None
    at: float
    seq: int = 0  # the order updates arrived in, across items


#: Updates for ids the serving version does not hold (items newer than it) kept for a later version that does;
#: past this many the oldest go first.
MAX_UNKNOWN_UPDATES = 100_000


class RefusedVersions:
    """Versions that failed their checks, keyed on their files' stamps when they were tried.

    A version is tried again only when its files change (a copy seen half-done, complete since); an unchanged bad
    version is not reloaded on every poll. Keying on the path alone would refuse a completed copy until restart.
    """

    def __init__(self) -> None:
        self._stamps: dict[Path, tuple] = {}
        self._reasons: dict[Path, str] = {}

    def add(self, path: Path, stamp: tuple, reason: str) -> None:
        self._stamps[path], self._reasons[path] = stamp, reason

    def refuses(self, path: Path) -> bool:
        """True while ``path`` holds the very files that were refused."""
        stamp = self._stamps.get(path)
        return stamp is not None and stamp == folder_stamp(path)

    def reason(self, path: Path) -> str:
        return self._reasons.get(path, "not refused")

    def __contains__(self, path: object) -> bool:
        """Whether ``path`` was ever refused (whatever its files are now)."""
        return path in self._stamps

    def __iter__(self) -> Iterator[Path]:
        return iter(self._stamps)


Served = TypeVar("Served")


class VersionHolder(Generic[Served]):
    """One served version of what a folder holds, its swaps and its refusals.

    :meth:`open` loads and validates a version (blocking, run in a thread; raises :class:`InvalidIndex`); a
    version that passes replaces the served one in one assignment, a bad one is refused with a log line and the
    old one keeps serving. What is served has an ``artifact`` with the ``path`` it came from.
    """

    #: What a log line calls the served thing.
    what = "index"

    def __init__(self, metrics: ArtifactMetrics | None = None) -> None:
        self.current: Served | None = None
        self.refused = RefusedVersions()
        self.metrics = metrics
        self._swap_lock = asyncio.Lock()

    @property
    def kind(self) -> str:
        """Its ``kind`` in :class:`ArtifactMetrics`: ``index``, ``router_query_data``."""
        return self.what.replace(" ", "_")

    def open(self, path: Path) -> Served:
        raise NotImplementedError

    def adopt(self, candidate: Served) -> None:
        """Called with a validated version just before it serves."""

    async def load_latest(self, root: Path) -> None:
        """Serves the newest version under ``root`` that passes its checks (the start-up path).

        A newer version that fails is refused as a running replica refuses it (a log line naming it and why; not
        tried again until its files change) and the next older one is tried, so a bad version on disk does not stop
        replicas from starting; raises only when none passes (or ``root`` is a version folder that fails)."""
        newest = latest_version(root)  # raises, naming the fix, when there is no version at all
        candidates = [newest] if (root / METADATA_FILE).is_file() else index_versions(root)[::-1]
        for path in candidates:
            if await self.swap(path):
                if path != newest:
                    log.warning(
                        "serving %s %s, older than the newest under %s: %d newer refused (logged above)",
                        self.what,
                        path.name,
                        root,
                        candidates.index(path),
                    )
                return
        if len(candidates) == 1:
            raise InvalidIndex(f"{newest} was refused: {self.refused.reason(newest)}")
        raise InvalidIndex(
            f"none of the {len(candidates)} versions under {root} passes its checks; the newest, {newest.name}, was "
            f"refused: {self.refused.reason(newest)}"
        )

    async def swap(self, path: Path) -> bool:
        """Validates ``path`` and serves it. False (old version keeps serving) when it is refused."""
        async with self._swap_lock:
            # Stamped before loading: files that change during the load make the next poll try again.
            stamp = await asyncio.to_thread(folder_stamp, path)
            try:
                candidate = await asyncio.to_thread(self.open, path)
            except InvalidIndex as exc:
                self.refused.add(path, stamp, str(exc))
                serving = self.current.artifact.version if self.current is not None else "nothing"
                log.error("refused %s %s: %s; still serving %s", self.what, path, exc, serving)
                if self.metrics is not None:
                    self.metrics.refused(self.kind)
                return False
            self.adopt(candidate)
            self.current = candidate
            log.info("now serving %s %s from %s", self.what, candidate.artifact.version, path)
            if self.metrics is not None:
                self.metrics.serving(self.kind, candidate.artifact.version)
            return True


class IndexHolder(VersionHolder[ServingIndex]):
    """The index being served, its swaps, and the availability updates that outlive swaps."""

    def __init__(
        self,
        exact_threshold: int = 20_000,
        min_recall: float = 0.8,
        threads: int = 1,
        metrics: ArtifactMetrics | None = None,
    ):
        super().__init__(metrics)
        self.exact_threshold, self.min_recall, self.threads = exact_threshold, min_recall, threads
        # The latest update per item, oldest first: for ids the serving version holds, and for ids it does not
        # (items newer than it), which a later version holding them gets. Both carry over to each later version
        # unless its stock data is newer.
        self._updates: dict[str, _Update] = {}
        self._pending: dict[str, _Update] = {}
        self._seq = 0
        #: id(candidate) -> (the last update seq its load applied, its updates, its pending ones)
        self._prepared: dict[int, tuple[int, dict[str, _Update], dict[str, _Update]]] = {}

    def open(self, path: Path) -> ServingIndex:
        """Loads ``path`` and applies the remembered updates to it, in the load's thread: a full push remembers one
        update per item, and applying them on the event loop held every call (0.4 s per 100,000 updates)."""
        candidate = open_index(path, self.exact_threshold, self.min_recall, self.threads)
        seq = self._seq
        remembered = [dict(self._pending), dict(self._updates)]  # copies, each atomic under the GIL
        as_of = candidate.artifact.data_as_of
        updates: dict[str, _Update] = {}
        pending: dict[str, _Update] = {}
        for snapshot in remembered:
            for item, update in snapshot.items():
                # Where the version's own stock data is newer, kept but not applied: a rollback to an older
                # version would otherwise serve its export's stock, without every push made since.
                _file(candidate, item, update, updates, pending, apply=update.at > as_of)
        self._prepared[id(candidate)] = (seq, updates, pending)
        return candidate

    def adopt(self, candidate: ServingIndex) -> None:
        """On the loop, just before ``candidate`` serves: the updates that arrived while it loaded (the newest
        entries, read from the end, so this costs what arrived, not what is remembered)."""
        seq, updates, pending = self._prepared.pop(id(candidate))
        arrived = []
        for remembered in (self._pending, self._updates):
            for item in reversed(remembered):
                update = remembered[item]
                if update.seq <= seq:
                    break
                arrived.append((item, update))
        for item, update in sorted(arrived, key=lambda entry: entry[1].seq):
            updates.pop(item, None)
            pending.pop(item, None)
            _file(candidate, item, update, updates, pending)
        self._updates, self._pending = updates, pending
        self._forget_oldest_pending()

    def apply_availability(self, updates: Iterable[pb.AvailabilityUpdate]) -> tuple[int, list[str]]:
        """Applies updates to the serving index and remembers them for later versions, those for ids it does not
        hold (reported as unknown) included. At most :data:`MAX_UNKNOWN_UPDATES` of those are kept."""
        serving = self.current
        applied, unknown = 0, []
        now = time.time()
        for update in updates:
            regions = tuple(update.sold_in_regions) if update.set_regions else None
            remembered = _Update(int(update.stock), regions, now, self._seq + 1)
            item = update.item_id
            self._updates.pop(item, None)  # re-inserted last: both stay oldest first
            self._pending.pop(item, None)
            if _file(serving, item, remembered, self._updates, self._pending):
                applied += 1
            else:
                unknown.append(item)
            # Counted once filed: a load reading the count in its thread (open) finds every update up to it in the
            # copies it takes next, and adopt() applies those numbered after it. Counted before filing, an update
            # the load read the count in the middle of was in neither.
            self._seq = remembered.seq
        self._forget_oldest_pending()
        return applied, unknown

    def _forget_oldest_pending(self) -> None:
        while len(self._pending) > MAX_UNKNOWN_UPDATES:
            del self._pending[next(iter(self._pending))]


def _file(
    index: ServingIndex | None,
    item: str,
    update: _Update,
    updates: dict[str, _Update],
    pending: dict[str, _Update],
    apply: bool = True,
) -> bool:
    """Files ``update`` under ``updates`` and applies it (unless ``apply`` is False) when ``index`` holds ``item``
    (True), else under ``pending`` (False): the one rule the serving version, a loading one and the updates pushed
    meanwhile share."""
    row = index.rows.get(item) if index is not None else None
    if row is None:
        pending[item] = update
        return False
    updates[item] = update
    if apply:
        _apply(index, row, update)
    return True


def _apply(index: ServingIndex, row: int, update: _Update) -> None:
    columns = None
    if update.regions is not None:
        columns = [c for c in (index.artifact.region_column(r) for r in update.regions) if c is not None]
    index.availability.apply(row, update.stock, columns)


class IndexWatcher:
    """Polls a root of versions and swaps in newer ones as they appear (each is tried once, and again only if its
    files change)."""

    def __init__(self, holder: VersionHolder, root: Path, interval_s: float):
        self.holder, self.root, self.interval_s = holder, root, interval_s
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.interval_s > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="index-watcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def check_once(self) -> bool:
        """Swaps in the newest version newer than the served one that passes its checks (a refused one is tried
        again only once its files change), as a restarting replica picks one; True if a swap happened."""
        try:
            newest = latest_version(self.root)
        except InvalidIndex:
            return False
        serving = self.holder.current
        if serving is not None and serving.artifact.path == newest:
            return False
        served = serving.artifact.path if serving is not None else None
        if newest == self.root or (served is not None and newest.name < served.name):
            candidates = [newest]  # the root is a version folder, or the newer ones were taken away: follow that
        else:  # newest first, down to the one served: a good version published with a bad one after it serves
            candidates = [path for path in index_versions(self.root)[::-1] if served is None or path.name > served.name]
        for path in candidates:
            if self.holder.refused.refuses(path):
                continue
            if await self.holder.swap(path):
                return True
        return False

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.check_once()
            except Exception:  # the watcher must outlive any one bad version
                log.exception("index watcher: check failed")
