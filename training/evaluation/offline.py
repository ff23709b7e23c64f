"""Runs recommenders over held-out baskets under both protocols and collects full-ranking metrics.

- **repeat**: every catalog item may be recommended, previously bought ones included; target = the whole basket.
- **discovery**: items in the customer's history are excluded from the ranking; target = the basket's items not
  in the history (customers whose basket holds nothing new are left out of this protocol, for every model alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
from tqdm.auto import tqdm

from training.data.splits import EvalCase
from training.evaluation.baselines import ScoredBatch
from training.evaluation.metrics import (
    calibration,
    coverage,
    intra_list_diversity,
    novelty,
    top_k,
    user_metrics,
)

PROTOCOLS = ("repeat", "discovery")
K, K_RECALL = 10, 100


class Recommender(Protocol):
    name: str

    def score(self, cases: list[EvalCase], exclude_history: bool = False) -> ScoredBatch: ...


@dataclass
class ModelResult:
    metrics: dict[str, float]
    per_user: dict[str, np.ndarray]
    calibration: dict | None = None
    top: np.ndarray = field(default_factory=lambda: np.zeros((0, K), dtype=np.int64))


def protocol_cases(cases: list[EvalCase], protocol: str) -> list[EvalCase]:
    if protocol == "repeat":
        return list(cases)
    if protocol != "discovery":
        raise ValueError(f"unknown protocol {protocol!r}; one of {PROTOCOLS}")
    kept = []
    for case in cases:
        new = case.target[~np.isin(case.target, case.history)]
        if len(new):
            kept.append(EvalCase(case.user, case.history, new, case.time))
    return kept


def evaluate(
    model: Recommender,
    cases: list[EvalCase],
    protocol: str,
    popularity: np.ndarray,
    categories: np.ndarray,
    batch: int = 256,
    progress: bool = False,
    baskets: int | None = None,
) -> ModelResult:
    """Metrics of one model over ``cases`` (already restricted with :func:`protocol_cases`). ``popularity`` and
    ``baskets``: training baskets holding each item and training baskets in all, for novelty, which is left out
    when ``baskets`` is not given."""
    exclude = protocol == "discovery"
    tops, per_user, probabilities, labels, top_probabilities, top_labels = [], [], [], [], [], []
    bar = tqdm(total=len(cases), desc=f"{model.name} [{protocol}]", unit="user", disable=not progress, leave=False)
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        scored = model.score(chunk, exclude_history=exclude)
        scores = scored.scores.astype(np.float32, copy=True)
        if exclude:
            for u, case in enumerate(chunk):
                scores[u, case.history] = -np.inf
        top = top_k(scores, K_RECALL)
        targets = [c.target for c in chunk]
        per_user.append(user_metrics(top, targets, K, K_RECALL))
        tops.append(top[:, :K])
        if scored.probabilities is not None:
            relevant = np.zeros(scores.shape, dtype=bool)
            for u, target in enumerate(targets):
                relevant[u, target] = True
            valid = np.isfinite(scored.probabilities)
            if exclude:
                valid &= np.isfinite(scores)
            probabilities.append(scored.probabilities[valid])
            labels.append(relevant[valid])
            shown = np.take_along_axis(scored.probabilities, top[:, :K], axis=1)
            shown_labels = np.take_along_axis(relevant, top[:, :K], axis=1)
            top_probabilities.append(shown[np.isfinite(shown)])
            top_labels.append(shown_labels[np.isfinite(shown)])
        bar.update(len(chunk))
    bar.close()
    merged = {name: np.concatenate([p[name] for p in per_user]) for name in per_user[0]} if per_user else {}
    top = np.concatenate(tops) if tops else np.zeros((0, K), dtype=np.int64)
    metrics = {name: float(values.mean()) for name, values in merged.items()}
    metrics.update(
        {
            "coverage": coverage(top, len(popularity)),
            "diversity": intra_list_diversity(top, categories) if len(top) else 0.0,
            "users": len(cases),
        }
    )
    if baskets is not None:
        metrics["novelty"] = novelty(top, popularity, baskets) if len(top) else 0.0
    calibrated = None
    if probabilities:
        calibrated = {
            "candidates": calibration(np.concatenate(probabilities), np.concatenate(labels)),
            "top10": calibration(np.concatenate(top_probabilities), np.concatenate(top_labels)),
        }
        metrics["ece_candidates"] = calibrated["candidates"]["ece"]
        metrics["ece_top10"] = calibrated["top10"]["ece"]
    return ModelResult(metrics, merged, calibrated, top)
