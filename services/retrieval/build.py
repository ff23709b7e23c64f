"""Building ScaNN searchers for index versions (``aisle index build``), and the recall spot-check.

Default parameters follow ScaNN's guidance and what was measured here (docs/benchmarks.md): about 2 sqrt(N) leaves,
a few percent of them searched, anisotropic hashing with 2 dimensions per block, and exact reordering of enough
pre-reorder neighbours for k = 100.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, replace
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


def build_scann(
    embeddings: np.ndarray, directory: Path, config: ScannConfig, target_recall: float | None = None
) -> dict:
    """Builds and serializes a ScaNN searcher into ``directory``; returns the build parameters.

    With ``target_recall``, ``config.leaves_to_search`` is replaced by the fewest leaves whose recall@10 against
    exact search reaches it (:func:`tune_leaves`), and the measured curve is returned with the parameters."""
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
    tuning = None
    if target_recall is not None:
        queries = sample_queries(embeddings, TUNING_SAMPLES, seed=1)
        curve = tune_leaves(searcher, embeddings, queries, config, target_recall)
        config = replace(config, leaves_to_search=choose_leaves(curve, target_recall, config.num_leaves))
        tuning = {"target_recall": target_recall, "samples": len(queries), "curve": [asdict(p) for p in curve]}
    # Relative asset paths, so the folder still loads after the atomic rename into place.
    searcher.serialize(str(directory), relative_path=True)
    return {"ann": "scann", **asdict(config), **({"tuning": tuning} if tuning else {})}


#: Queries the tuning measures recall with (the serving spot-check uses 64 others: another seed).
TUNING_SAMPLES = 400
#: Shares of the tree's leaves the tuning tries, fewest first.
TUNING_FRACTIONS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class RecallPoint:
    """One point of the recall/effort curve: recall@10 against exact search, and the time of one query."""

    leaves_to_search: int
    recall: float
    query_us: float


class TargetRecallUnreachable(ValueError):
    """Even searching every leaf misses the recall asked for (the quantisation or the reordering is too coarse)."""


def tune_leaves(
    searcher, embeddings: np.ndarray, queries: np.ndarray, config: ScannConfig, target_recall: float, k: int = 10
) -> list[RecallPoint]:
    """Recall@k of a built ScaNN searcher for ``queries`` (sampled item vectors with noise, as for
    :func:`spot_check_recall`) at more and more leaves searched (:data:`TUNING_FRACTIONS` of the tree), until it
    reaches ``target_recall``. Shows a progress bar: at a million items the exact answers take seconds."""
    from tqdm.auto import tqdm

    exact = ExactSearcher(embeddings)
    want = [set(exact.search(query, k)[0].tolist()) for query in tqdm(queries, desc="exact answers", leave=False)]
    ladder = sorted({max(1, math.ceil(config.num_leaves * f)) for f in TUNING_FRACTIONS})
    pre_reorder = max(k, config.pre_reorder_num_neighbors)
    curve: list[RecallPoint] = []
    for leaves in (bar := tqdm(ladder, desc="tuning leaves to search", unit="setting")):
        found, _ = searcher.search_batched(
            queries, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder, leaves_to_search=leaves
        )
        hits = sum(len(w & set(f.tolist())) for w, f in zip(want, found, strict=True))
        recall = hits / (len(queries) * min(k, embeddings.shape[0]))
        timed = queries[:50]
        start = time.perf_counter()
        for query in timed:
            searcher.search(
                query, final_num_neighbors=k, pre_reorder_num_neighbors=pre_reorder, leaves_to_search=leaves
            )
        query_us = (time.perf_counter() - start) / len(timed) * 1e6
        curve.append(RecallPoint(leaves, round(recall, 4), round(query_us, 1)))
        bar.set_postfix(leaves=leaves, recall=f"{recall:.3f}")
        if recall >= target_recall:
            break
    log.info("recall@%d by leaves searched: %s", k, ", ".join(f"{p.leaves_to_search}: {p.recall:.3f}" for p in curve))
    return curve


def choose_leaves(curve: list[RecallPoint], target_recall: float, num_leaves: int) -> int:
    """The fewest leaves of ``curve`` reaching ``target_recall``; refused, with what was reached, if none does."""
    for point in sorted(curve, key=lambda p: p.leaves_to_search):
        if point.recall >= target_recall:
            return point.leaves_to_search
    best = max(curve, key=lambda p: p.recall, default=None)
    reached = f"{best.recall:.3f} at {best.leaves_to_search} of {num_leaves} leaves" if best else "nothing measured"
    raise TargetRecallUnreachable(
        f"recall@10 {reached} is below the target {target_recall:.3f}: lower --target-recall, or keep more "
        "neighbours for exact re-scoring (--pre-reorder)"
    )


def searcher_for(artifact) -> Searcher:
    """The searcher an index version was built for: ScaNN when it has one, else exact."""
    if artifact.scann_dir is None:
        return ExactSearcher(artifact.embeddings)
    fields = ScannConfig.__dataclass_fields__
    config = ScannConfig(**{k: v for k, v in artifact.build.items() if k in fields})
    return ScannSearcher(artifact.scann_dir, config.search_params())


def sample_queries(embeddings: np.ndarray, samples: int, seed: int) -> np.ndarray:
    """Queries made from ``samples`` item vectors with a little noise (near, not on, an item), float32."""
    count = embeddings.shape[0]
    rng = np.random.default_rng(seed)
    rows = rng.choice(count, size=min(samples, count), replace=False)
    noise = rng.normal(scale=0.1 * float(np.abs(embeddings).mean() or 1.0), size=(len(rows), embeddings.shape[1]))
    return (embeddings[rows] + noise).astype(np.float32)


def spot_check_recall(
    searcher: Searcher, embeddings: np.ndarray, samples: int = 64, k: int = 10, seed: int = 0
) -> float:
    """Mean recall@k of ``searcher`` against exact search, for queries made from sampled item vectors."""
    count = embeddings.shape[0]
    if count == 0:
        return 0.0
    queries = sample_queries(embeddings, samples, seed)
    exact = ExactSearcher(embeddings)
    hits = 0
    for query in queries:
        want = set(exact.search(query, k)[0].tolist())
        got = set(searcher.search(query, k)[0].tolist())
        hits += len(want & got)
    return hits / (len(queries) * min(k, count))
