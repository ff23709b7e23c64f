"""Index versions with known structure for retrieval tests (no training needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.retrieval.build import ScannConfig, build_scann
from services.retrieval.covisitation import CoVisitationTable
from services.retrieval.index import save_index

REGIONS = ["GB", "DE", "FR"]
#: Scores of anchor i's co-visited items i+1..i+5 (mod count) in :func:`covisitation_table`, best first.
COVISITATION_SCORES = (1.0, 0.8, 0.6, 0.4, 0.2)


def clustered_embeddings(count: int, dimension: int = 16, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Vectors around a few centres, shaped like trained item embeddings (not uniform noise)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dimension))
    assignment = rng.integers(0, clusters, size=count)
    return (centres[assignment] + 0.35 * rng.normal(size=(count, dimension))).astype(np.float32)


def covisitation_table(count: int) -> CoVisitationTable:
    """Item i co-bought with items i+1..i+5 (mod ``count``), scored :data:`COVISITATION_SCORES`."""
    width = len(COVISITATION_SCORES)
    anchors = np.repeat(np.arange(count), width)
    offsets = np.tile(np.arange(1, width + 1), count)
    return CoVisitationTable(
        np.arange(0, width * count + 1, width, dtype=np.int64),
        ((anchors + offsets) % count).astype(np.int64),
        np.tile(np.array(COVISITATION_SCORES, dtype=np.float32), count),
    )


def write_index(
    root: Path,
    count: int = 3000,
    dimension: int = 16,
    seed: int = 0,
    version: str | None = None,
    scann: bool = False,
    ids: list[str] | None = None,
    query_tower: Path | None = None,
    covisitation: bool = False,
) -> Path:
    """An index version: items I00000.., 3 regions (items sold in 1-3 of them), 5% out of stock,
    brands b0-b9 and categories c0-c4 by row, popularity decreasing with row, trending the reverse;
    with ``covisitation``, the :func:`covisitation_table` of its items."""
    rng = np.random.default_rng(seed)
    item_ids = ids if ids is not None else [f"I{i:05d}" for i in range(count)]
    embeddings = clustered_embeddings(count, dimension, seed=seed)
    sold_in = rng.random((count, len(REGIONS))) < 0.7
    sold_in[np.arange(count), rng.integers(0, len(REGIONS), size=count)] = True
    popularity = np.linspace(1000, 1, count).astype(np.float32)
    region_popularity = np.stack([popularity * (1 + 0.5 * rng.random(count)) for _ in REGIONS])
    stock = np.where(rng.random(count) < 0.05, 0, 10)
    build = None
    if scann:
        config = ScannConfig.for_items(count, search_fraction=0.2)

        def build(vectors, folder):
            return build_scann(vectors, folder, config)

    return save_index(
        root,
        item_ids=item_ids,
        embeddings=embeddings,
        popularity=popularity,
        categories=[f"c{i % 5}" for i in range(count)],
        brands=[f"b{i % 10}" for i in range(count)],
        model_name="test",
        model_version="1",
        version=version,
        regions=REGIONS,
        sold_in=sold_in,
        region_popularity=region_popularity,
        trending=popularity[::-1].copy(),
        stock=stock,
        query_tower=query_tower,
        build_ann=build,
        covisitation=covisitation_table(count) if covisitation else None,
    )
