"""Full-ranking metrics (every catalog item is a candidate; no sampled negatives), per user so they can be paired.

Definitions (relevance is binary: an item is relevant when it is in the user's held-out basket ``T``):

- HR@K: 1 when any of the top K is relevant.
- NDCG@K: sum over relevant ranks r <= K of 1 / log2(r + 1), divided by the ideal (min(|T|, K) relevant items
  at the top).
- Recall@K: |top K intersect T| / |T|.
- coverage@K: distinct items recommended in anyone's top K / catalog size.
- novelty@K: mean self-information -log2 p(i) of recommended items, p(i) = (training baskets holding i + 1) /
  (training baskets + catalog size).
- intra-list diversity@K: share of pairs in a top-K list whose categories differ (0: all the same, 1: all
  different).
- calibration: predicted P(purchase) against the observed purchase rate in equal-count bins; ECE is the
  count-weighted mean |observed - predicted|.
"""

from __future__ import annotations

import numpy as np

CUTOFFS = (10, 100)


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """[U, k] item rows by descending score, ties by lower row first: the first k of a stable sort, also when
    ties straddle the cut-off (NaN ranks as -inf).

    One partition finds each row's k-th best score; rows above it are in, and of those equal to it the lowest
    rows fill the remaining places, so the cost stays a partition plus O(U x items) comparisons, not a full sort.
    """
    k = min(k, scores.shape[1])
    if k <= 0:
        return np.zeros((scores.shape[0], 0), dtype=np.int64)
    if np.isnan(scores).any():
        scores = np.where(np.isnan(scores), -np.inf, scores)
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # [U, 1]: the k-th best score of each row
    above = scores > kth
    tied = scores == kth
    places = k - above.sum(axis=1, keepdims=True)  # how many of the tied rows get in (at least 1)
    chosen = above | (tied & (np.cumsum(tied, axis=1, dtype=np.int32) <= places))
    rows = np.nonzero(chosen)[1].reshape(len(scores), k)  # exactly k per row, in row order
    row_scores = np.take_along_axis(scores, rows, axis=1)
    order = np.lexsort((rows, -row_scores), axis=1)
    return np.take_along_axis(rows, order, axis=1)


def user_metrics(top: np.ndarray, targets: list[np.ndarray], k: int = 10, k_recall: int = 100) -> dict[str, np.ndarray]:
    """Per-user HR@k, NDCG@k, Recall@k and Recall@k_recall from ranked lists [U, width] (a catalog smaller than
    the cutoff is ranked whole)."""
    users = len(targets)
    hit = np.zeros((users, top.shape[1]), dtype=bool)
    for u, target in enumerate(targets):
        hit[u] = np.isin(top[u], target)
    sizes = np.array([len(t) for t in targets], dtype=np.float64)
    if (sizes == 0).any():
        raise ValueError("every user needs at least one target item")
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    dcg = (hit[:, :k] * discounts[: hit[:, :k].shape[1]]).sum(axis=1)
    ideal = np.array([discounts[: int(min(s, k))].sum() for s in sizes])
    return {
        f"hr@{k}": hit[:, :k].any(axis=1).astype(np.float64),
        f"ndcg@{k}": dcg / ideal,
        f"recall@{k}": hit[:, :k].sum(axis=1) / sizes,
        f"recall@{k_recall}": hit[:, :k_recall].sum(axis=1) / sizes,
    }


def coverage(top: np.ndarray, num_items: int) -> float:
    return float(len(np.unique(top)) / num_items) if num_items else 0.0


def novelty(top: np.ndarray, popularity: np.ndarray, baskets: int) -> float:
    """Mean -log2 p(i) over ``top``, p(i) as defined above: ``popularity`` = training baskets holding each item,
    ``baskets`` = training baskets (not ``popularity.sum()``, which counts basket lines)."""
    p = (popularity + 1.0) / (baskets + len(popularity))
    return float(np.mean(-np.log2(p[top])))


def intra_list_diversity(top: np.ndarray, categories: np.ndarray) -> float:
    """Mean over lists of the share of item pairs from different categories (``categories``: codes per row)."""
    k = top.shape[1]
    if k < 2:
        return 0.0
    cats = categories[top]  # [U, k]
    different = cats[:, :, None] != cats[:, None, :]
    pairs = k * (k - 1)
    return float(np.mean(different.sum(axis=(1, 2)) / pairs))


def calibration(probabilities: np.ndarray, labels: np.ndarray, bins: int = 10) -> dict:
    """Reliability in equal-count bins and the expected calibration error."""
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    labels = np.asarray(labels, dtype=np.float64).ravel()
    if not len(probabilities):
        return {"ece": None, "bins": [], "count": 0}
    order = np.argsort(probabilities, kind="stable")
    curve, ece = [], 0.0
    for chunk in np.array_split(order, min(bins, len(order))):
        predicted, observed = float(probabilities[chunk].mean()), float(labels[chunk].mean())
        curve.append({"predicted": predicted, "observed": observed, "count": int(len(chunk))})
        ece += len(chunk) * abs(observed - predicted)
    return {
        "ece": ece / len(probabilities),
        "mean_predicted": float(probabilities.mean()),
        "observed_rate": float(labels.mean()),
        "bins": curve,
        "count": int(len(probabilities)),
    }


def paired_bootstrap(a: np.ndarray, b: np.ndarray, samples: int = 2000, seed: int = 0, level: float = 0.95) -> dict:
    """Ratio mean(a) / mean(b) over the same users, with a percentile confidence interval from resampling users."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or not len(a):
        raise ValueError("paired bootstrap needs two equally long, non-empty per-user arrays")
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), size=(samples, len(a)))
    means_a, means_b = a[picks].mean(axis=1), b[picks].mean(axis=1)
    ratios = means_a / np.maximum(means_b, 1e-12)
    tail = (1.0 - level) / 2
    return {
        "ratio": float(a.mean() / max(b.mean(), 1e-12)),
        "low": float(np.quantile(ratios, tail)),
        "high": float(np.quantile(ratios, 1 - tail)),
        "p_ratio_le_1": float(np.mean(ratios <= 1.0)),
        "samples": samples,
        "users": int(len(a)),
    }
