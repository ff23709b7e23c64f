"""The interface every ranking backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class Scores:
    purchase: np.ndarray  # float32 [batch, candidates]
    returns: np.ndarray | None = None  # float32 [batch, candidates], when the model has the head


class ModelNotReady(RuntimeError):
    pass


class RankingBackend(Protocol):
    model_name: str
    model_version: str
    history_length: int

    async def load(self) -> None:
        """Loads, checks and warms up the model; raises if it must not serve."""

    async def score(self, history: np.ndarray, candidates: np.ndarray) -> Scores:
        """Scores int64 ``candidates`` [batch, C] for int64 ``history`` [batch, history_length]."""

    def tokens(self, item_ids: list[str]) -> np.ndarray:
        """Item ids to the model's tokens (0 for unknown)."""

    async def close(self) -> None: ...
