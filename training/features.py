"""The ranker's inputs, built only with the ranking service's own functions (``services.ranking.features``).

Training, offline evaluation and serving all go through :func:`encode_history` and :func:`candidate_features`
with the same :class:`ItemFeatureSnapshot` (exported as ``item_features.npz``), so the features cannot drift.
The snapshot's behavioural columns (popularity, return rate) come from the training split only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from services.ranking.features import ItemFeatureSnapshot, candidate_features, encode_history
from training.data.schema import ItemCatalog
from training.data.splits import Split

HISTORY_LENGTH = 50  # the two-tower's query window
#: The sequence ranker's history window (``history_item_ids`` in its config.pbtxt): the repeat features count
#: over all of it (about ten Online Retail baskets), the ranker's attention reads the newest ``HISTORY_LENGTH``.
RANKER_HISTORY_LENGTH = 200


def item_snapshot(catalog: ItemCatalog, split: Split) -> ItemFeatureSnapshot:
    """Rows follow the vocabulary (catalog order): price and margin from the catalog, popularity and return rate
    from training data, in-stock from the catalog."""
    return ItemFeatureSnapshot.from_catalog(
        prices=catalog.prices,
        margins=catalog.margins,
        popularity=split.popularity(),
        return_rates=split.return_rates(),
        in_stock=catalog.stock,
    )


def history_tokens(histories: Sequence[np.ndarray], length: int = HISTORY_LENGTH) -> np.ndarray:
    """[B, length] tokens from catalog rows (oldest first), exactly as the ranking service encodes a request."""
    if not len(histories):
        return np.zeros((0, length), dtype=np.int64)
    return np.stack([encode_history(np.asarray(h, dtype=np.int64) + 1, length) for h in histories])


def ranker_inputs(
    snapshot: ItemFeatureSnapshot,
    histories: Sequence[np.ndarray],
    candidates: np.ndarray,
    length: int = RANKER_HISTORY_LENGTH,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(history tokens [B, L], candidate tokens [B, C], candidate features [B, C, F]) from catalog rows.

    ``candidates`` holds catalog rows, -1 for padding (token 0, which the snapshot maps to its default row).
    """
    history = history_tokens(histories, length)
    tokens = np.where(candidates >= 0, candidates + 1, 0).astype(np.int64)
    return history, tokens, candidate_features(snapshot, history, tokens)
