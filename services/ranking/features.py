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
