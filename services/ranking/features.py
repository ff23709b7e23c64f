"""Turns request ids into the model's input tensors. The same code path as training uses for its inputs.

Item tokens: line i (0-based) of the version's ``item_vocabulary.txt`` is token i + 1; token 0 is padding.
Documented defaults: unknown history items are dropped; unknown candidates are not sent to the model and get
purchase probability 0 (and no return probability), so they sort last.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

PADDING_TOKEN = 0


class ItemVocabulary:
    def __init__(self, item_ids: Sequence[str]):
        if len(set(item_ids)) != len(item_ids):
            raise ValueError("item vocabulary has duplicate ids")
        self._tokens = {item: i + 1 for i, item in enumerate(item_ids)}

    @classmethod
    def read(cls, path: Path) -> ItemVocabulary:
        return cls([line for line in path.read_text(encoding="utf-8").splitlines() if line])

    def __len__(self) -> int:
        return len(self._tokens)

    def token(self, item_id: str) -> int:
        return self._tokens.get(item_id, PADDING_TOKEN)

    def tokens(self, item_ids: Sequence[str]) -> np.ndarray:
        get = self._tokens.get
        return np.fromiter((get(i, PADDING_TOKEN) for i in item_ids), dtype=np.int64, count=len(item_ids))


def encode_history(tokens: np.ndarray, length: int) -> np.ndarray:
    """Known tokens (oldest first), the newest ``length`` kept, left-padded to ``length``: shape [length]."""
    known = tokens[tokens != PADDING_TOKEN][-length:]
    out = np.zeros(length, dtype=np.int64)
    if known.size:
        out[length - known.size :] = known
    return out


# --- Candidate features -------------------------------------------------------------------------------------
# One implementation for training and serving: training builds its inputs with these functions, the ranking
# service builds the model's ``candidate_features`` input with the same ones, so there is no training/serving skew.

FEATURES_FILE = "item_features.npz"
#: Per-item features from the catalog and the training window, in this order.
STATIC_FEATURES = ("log_price", "margin", "log_popularity", "return_rate", "in_stock")
#: Per (subject, candidate) features computed from the request's history, appended after the static ones.
REQUEST_FEATURES = ("log_history_count", "history_recency")
CANDIDATE_FEATURES = STATIC_FEATURES + REQUEST_FEATURES


class ItemFeatureSnapshot:
    """Static item features, one row per token: row 0 holds the defaults used for unknown items.

    Saved as ``item_features.npz`` beside ``item_vocabulary.txt`` in a model version folder (rows follow the
    vocabulary: row ``t`` is the item whose token is ``t``).
    """

    def __init__(self, names: Sequence[str], values: np.ndarray):
        values = np.asarray(values, dtype=np.float32)
        if values.ndim != 2 or values.shape[1] != len(names) or values.shape[0] < 1:
            raise ValueError(f"feature values must be [items + 1, {len(names)}], got {values.shape}")
        if not np.isfinite(values).all():
            raise ValueError("item features contain NaN or infinite values")
        self.names = tuple(names)
        self.values = values

    def __len__(self) -> int:
        return self.values.shape[0] - 1

    @classmethod
    def from_catalog(
        cls,
        prices: np.ndarray,
        margins: np.ndarray,
        popularity: np.ndarray,
        return_rates: np.ndarray,
        in_stock: np.ndarray,
    ) -> ItemFeatureSnapshot:
        """Rows in vocabulary order (token 1 first). Unknown items get the catalog's median price and margin,
        zero popularity, the mean return rate and "in stock"."""
        columns = np.stack(
            [
                np.log1p(np.maximum(np.asarray(prices, dtype=np.float64), 0)),
                np.asarray(margins, dtype=np.float64),
                np.log1p(np.maximum(np.asarray(popularity, dtype=np.float64), 0)),
                np.asarray(return_rates, dtype=np.float64),
                (np.asarray(in_stock) > 0).astype(np.float64),
            ],
            axis=1,
        )
        defaults = np.array(
            [np.median(columns[:, 0]), np.median(columns[:, 1]), 0.0, columns[:, 3].mean(), 1.0]
            if len(columns)
            else [0.0, 0.0, 0.0, 0.0, 1.0]
        )
        return cls(STATIC_FEATURES, np.vstack([defaults[None, :], columns]))

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, names=np.array(self.names), values=self.values)

    @classmethod
    def load(cls, path: Path) -> ItemFeatureSnapshot:
        with np.load(path, allow_pickle=False) as data:
            return cls([str(n) for n in data["names"]], data["values"])


def request_features(history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[B, C, 2]: log(1 + times the candidate occurs in the history) and its recency (1 = the newest item,
    falling linearly to 0 at the oldest slot; 0 when absent). ``history`` [B, L] is left-padded with 0."""
    length = history.shape[1]
    matches = (candidates[:, :, None] == history[:, None, :]) & (history[:, None, :] != PADDING_TOKEN)
    count = matches.sum(axis=2)
    # Position of the newest match: the highest index where it matches (history is oldest first).
    newest = np.where(matches.any(axis=2), length - 1 - np.argmax(matches[:, :, ::-1], axis=2), -1)
    recency = np.where(newest >= 0, (newest + 1) / length, 0.0)
    return np.stack([np.log1p(count), recency], axis=2).astype(np.float32)


def candidate_features(snapshot: ItemFeatureSnapshot, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The model's ``candidate_features`` input, [B, C, len(CANDIDATE_FEATURES)] float32.

    ``candidates`` hold tokens (0 for unknown ids, which get the snapshot's default row).
    """
    if snapshot.names != STATIC_FEATURES:
        raise ValueError(f"snapshot features {snapshot.names} are not {STATIC_FEATURES}")
    tokens = np.where(candidates < snapshot.values.shape[0], candidates, PADDING_TOKEN)
    static = snapshot.values[tokens]  # [B, C, S]
    return np.concatenate([static, request_features(history, candidates)], axis=2)
