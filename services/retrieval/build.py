"""Building ScaNN searchers for index versions (``aisle index build``), and the recall spot-check.

Default parameters follow ScaNN's guidance and what was measured here (docs/benchmarks.md): about 2 sqrt(N) leaves,
a few percent of them searched, anisotropic hashing with 2 dimensions per block, and exact reordering of enough
pre-reorder neighbours for k = 100.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from services.retrieval.search import ExactSearcher, ScannSearcher, ScannSearchParams, Searcher

log = logging.getLogger(__name__)

#: Catalogs at most this large are served by exact search: ScaNN would not be faster enough to matter.
EXACT_BELOW_ITEMS = 20_000


@dataclass(frozen=True)
class ScannConfig:
    num_leaves: int
    leaves_to_search: int
    training_sample_size: int
    dimensions_per_block: int = 2
    anisotropic_threshold: float = 0.2
    reorder_num_neighbors: int = 1000
    pre_reorder_num_neighbors: int = 1000

    @classmethod
    def for_items(cls, count: int, search_fraction: float = 0.1) -> ScannConfig:
        leaves = max(2, min(int(2 * math.sqrt(count)), count // 50 or 2))
        return cls(
            num_leaves=leaves,
            leaves_to_search=max(1, int(round(leaves * search_fraction))),
            training_sample_size=min(count, 250_000),
        )

    def search_params(self) -> ScannSearchParams:
        return ScannSearchParams(self.leaves_to_search, self.pre_reorder_num_neighbors, self.num_leaves)


def build_scann(embeddings: np.ndarray, directory: Path, config: ScannConfig) -> dict:
    """Builds and serializes a ScaNN searcher into ``directory``; returns the build parameters."""
    import scann

    builder = (
        scann.scann_ops_pybind.builder(embeddings, 100, "dot_product")
        .tree(
            num_leaves=config.num_leaves,
            num_leaves_to_search=config.leaves_to_search,
            training_sample_size=config.training_sample_size,
        )
        .score_ah(config.dimensions_per_block, anisotropic_quantization_threshold=config.anisotropic_threshold)
        .reorder(config.reorder_num_neighbors)
    )
    searcher = builder.build()
    # Relative asset paths, so the folder still loads after the atomic rename into place.
    searcher.serialize(str(directory), relative_path=True)
    return {"ann": "scann", **asdict(config)}


def searcher_for(artifact) -> Searcher:
    """The searcher an index version was built for: ScaNN when it has one, else exact."""
    if artifact.scann_dir is None:
        return ExactSearcher(artifact.embeddings)
    fields = ScannConfig.__dataclass_fields__
    config = ScannConfig(**{k: v for k, v in artifact.build.items() if k in fields})
    return ScannSearcher(artifact.scann_dir, config.search_params())


def spot_check_recall(
    searcher: Searcher, embeddings: np.ndarray, samples: int = 64, k: int = 10, seed: int = 0
) -> float:
    """Mean recall@k of ``searcher`` against exact search, for queries made from sampled item vectors."""
    count = embeddings.shape[0]
    if count == 0:
        return 0.0
    rng = np.random.default_rng(seed)
    rows = rng.choice(count, size=min(samples, count), replace=False)
    noise = rng.normal(scale=0.1 * float(np.abs(embeddings).mean() or 1.0), size=(len(rows), embeddings.shape[1]))
    exact = ExactSearcher(embeddings)
    hits = 0
    for query in (embeddings[rows] + noise).astype(np.float32):
        want = set(exact.search(query, k)[0].tolist())
        got = set(searcher.search(query, k)[0].tolist())
        hits += len(want & got)
    return hits / (len(rows) * min(k, count))
