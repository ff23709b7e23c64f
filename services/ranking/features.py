"""Turns request ids into the model's input tensors. The same code path as training uses for its inputs.

Item tokens: line i (0-based) of the version's ``item_vocabulary.txt`` is token i + 1; token 0 is padding.
Documented defaults: unknown history items are dropped; unknown candidates are not sent to the model and get
purchase probability 0 (and no return probability), so they sort last.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from services.core.id_lines import read_id_lines
from services.core.id_table import MISSING, HashCollision, IdTable

PADDING_TOKEN = MISSING + 1  # tokens are vocabulary positions + 1: 0, padding, for an unknown id


class ItemVocabulary:
    """Item id -> token. Looked up through an :class:`~services.core.id_table.IdTable` (hundreds of candidate ids
    per request at once); through a dict in the rare vocabulary where two ids share a 64-bit hash."""

    def __init__(self, item_ids: Sequence[str]):
        self._size = len(item_ids)
        try:  # the table checks that the ids are distinct
            self._table: IdTable | None = IdTable(item_ids)
            self._tokens: dict[str, int] | None = None
        except HashCollision:  # distinct ids (checked), two of them with one hash
            self._table, self._tokens = None, {item: i + 1 for i, item in enumerate(item_ids)}
        except ValueError:
            raise ValueError("item vocabulary has duplicate ids") from None

    @classmethod
    def read(cls, path: Path) -> ItemVocabulary:
        """One id per line (:mod:`services.core.id_lines`): ValueError naming the line when one is empty, which would
        shift every later item's token by one, or holds a carriage return."""
        return cls(read_id_lines(path))

    def __len__(self) -> int:
        return self._size

    def token(self, item_id: str) -> int:
        return int(self.tokens([item_id])[0])

    def tokens(self, item_ids: Sequence[str]) -> np.ndarray:
        """int64 tokens, :data:`PADDING_TOKEN` for an unknown id."""
        if self._table is not None:
            return self._table.positions(item_ids) + 1  # MISSING (-1) + 1 is the padding token
        lookup = map(self._tokens.get, item_ids, itertools.repeat(PADDING_TOKEN))
        return np.fromiter(lookup, dtype=np.int64, count=len(item_ids))


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
#: Per-item features from the catalog and the training window, in this order. ``log_trending``: log(1 + baskets
#: holding the item per 10,000 baskets of the 7 days before the snapshot was made (training: before each
#: example's day; see training.features.RecentSales), so a ranker can tell this season's items from last season's.
STATIC_FEATURES = ("log_price", "margin", "log_popularity", "return_rate", "in_stock", "log_trending")
TRENDING_COLUMN = STATIC_FEATURES.index("log_trending")
#: Per (subject, candidate) features computed from the request's history (the whole ``history_item_ids`` window
#: of the model's contract, 200 items for the sequence ranker), appended after the static ones.
REQUEST_FEATURES = ("log_history_count", "history_recency", "history_share", "log_items_since")
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
        trending: np.ndarray | None = None,
    ) -> ItemFeatureSnapshot:
        """Rows in vocabulary order (token 1 first). Unknown items get the catalog's median price and margin,
        zero popularity, the mean return rate, "in stock" and zero recent sales. ``trending``: the recent-sales
        rate per item (baskets holding it per 10,000 baskets of the recent window; none when not given)."""
        if trending is None:
            trending = np.zeros(len(prices))
        columns = np.stack(
            [
                np.log1p(np.maximum(np.asarray(prices, dtype=np.float64), 0)),
                np.asarray(margins, dtype=np.float64),
                _log_counts(popularity),
                np.asarray(return_rates, dtype=np.float64),
                (np.asarray(in_stock) > 0).astype(np.float64),
                _log_counts(trending),
            ],
            axis=1,
        )
        defaults = np.array(
            [np.median(columns[:, 0]), np.median(columns[:, 1]), 0.0, columns[:, 3].mean(), 1.0, 0.0]
            if len(columns)
            else [0.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        )
        return cls(STATIC_FEATURES, np.vstack([defaults[None, :], columns]))

    def with_trending(self, trending: np.ndarray) -> ItemFeatureSnapshot:
        """The same snapshot with ``log_trending`` from ``trending`` (recent-sales rates, vocabulary order): what
        a snapshot made at another moment would hold. Training uses it to give each example the recent sales of
        its own day, as a snapshot made that day would have served them."""
        trending = np.asarray(trending)
        if trending.shape != (len(self),):
            raise ValueError(f"trending must have one count per item ({len(self)}), got shape {trending.shape}")
        values = self.values.copy()
        values[1:, TRENDING_COLUMN] = _log_counts(trending)
        return ItemFeatureSnapshot(self.names, values)

    def require_current(self, source: object) -> ItemFeatureSnapshot:
        """This snapshot when its columns are :data:`STATIC_FEATURES`, the ones this release joins; otherwise a
        ValueError naming ``source`` and the fix (a version exported by another release is retrained)."""
        if self.names != STATIC_FEATURES:
            raise ValueError(
                f"{source}: features {list(self.names)}, this release joins {list(STATIC_FEATURES)}: exported by "
                "another release; retrain with `aisle train`"
            )
        return self

    def save(self, path: Path) -> None:
        with path.open("wb") as handle:
            np.savez(handle, names=np.array(self.names), values=self.values)

    @classmethod
    def load(cls, path: Path) -> ItemFeatureSnapshot:
        with np.load(path, allow_pickle=False) as data:
            return cls([str(n) for n in data["names"]], data["values"])


def _log_counts(counts) -> np.ndarray:
    return np.log1p(np.maximum(np.asarray(counts, dtype=np.float64), 0))


def request_features(history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """[B, C, 4] from the history window ``history`` [B, L] (left-padded with 0, oldest first):

    - ``log_history_count``: log(1 + times the candidate occurs in the window);
    - ``history_recency``: 1 for the newest slot, falling linearly to 1/L at the oldest, 0 when absent;
    - ``history_share``: the candidate's occurrences / the window's known items (0 for an empty history), so a
      candidate bought in every basket of a short history counts like one bought as often in a long one;
    - ``log_items_since``: log(1 + items bought after the candidate's newest occurrence); log(1 + L) when absent.

    These are what lets the ranker handle repeat purchases (buy-again's frequency and recency, over the window).
    """
    count, newest = _occurrences(history, candidates)
    length = history.shape[1]
    known = history != PADDING_TOKEN
    recency = np.where(newest >= 0, (newest + 1) / length, 0.0)
    share = count / np.maximum(known.sum(axis=1, keepdims=True), 1)
    since = np.where(newest >= 0, length - 1 - newest, length)
    return np.stack([np.log1p(count), recency, share, np.log1p(since)], axis=2).astype(np.float32)


def _occurrences(history: np.ndarray, candidates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each candidate [B, C]: how often its token occurs in its row's history window, and the position of the
    newest occurrence (-1 when absent). Sort-based, O((L + C) log) per row rather than an L x C comparison."""
    rows, length = history.shape
    count = np.zeros(candidates.shape, dtype=np.int64)
    newest = np.full(candidates.shape, -1, dtype=np.int64)
    row_of, position = np.nonzero(history != PADDING_TOKEN)  # row-major: positions ascend within a row
    if row_of.size == 0:
        return count, newest
    span = int(max(history.max(), candidates.max(initial=0))) + 1
    keys = row_of * span + history[row_of, position]
    order = np.argsort(keys, kind="stable")  # stable: within a key, positions stay ascending
    unique, first, counts = np.unique(keys[order], return_index=True, return_counts=True)
    newest_position = position[order][first + counts - 1]
    wanted = np.arange(rows)[:, None] * span + candidates
    at = np.minimum(np.searchsorted(unique, wanted), unique.size - 1)
    found = (unique[at] == wanted) & (candidates != PADDING_TOKEN)
    count[found] = counts[at[found]]
    newest[found] = newest_position[at[found]]
    return count, newest


def candidate_features(snapshot: ItemFeatureSnapshot, history: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """The model's ``candidate_features`` input, [B, C, len(CANDIDATE_FEATURES)] float32.

    ``candidates`` hold tokens (0 for unknown ids, which get the snapshot's default row).
    """
    snapshot.require_current("the item feature snapshot")
    tokens = np.where(candidates < snapshot.values.shape[0], candidates, PADDING_TOKEN)
    static = snapshot.values[tokens]  # [B, C, S]
    return np.concatenate([static, request_features(history, candidates)], axis=2)
