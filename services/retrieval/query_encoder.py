"""Turns a subject's recent items into a query vector, in-process, so callers send history, not vectors."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from services.core.onnx_runtime import check_onnxruntime_install
from services.retrieval.index import InvalidIndex

log = logging.getLogger(__name__)

HISTORY_INPUT = "history_item_ids"
#: Newest items a query tower with a dynamic history length is given.
MAX_DYNAMIC_LENGTH = 200
QUERY_OUTPUT = "query_embedding"


class QueryEncoder(Protocol):
    name: str

    def encode(self, history_rows: list[int]) -> np.ndarray:
        """A float32 [dimension] query for a history of index rows (oldest first, at least one)."""


class MeanEmbeddingEncoder:
    """Recency-weighted mean of the history's item vectors: the fallback for indexes without a query tower."""

    name = "mean_embedding"

    def __init__(self, embeddings: np.ndarray, decay: float = 0.85):
        self.embeddings, self.decay = embeddings, decay

    def encode(self, history_rows: list[int]) -> np.ndarray:
        weights = self.decay ** np.arange(len(history_rows) - 1, -1, -1, dtype=np.float32)
        return (self.embeddings[history_rows] * weights[:, None]).sum(axis=0) / weights.sum()


class OnnxQueryTower:
    """The two-tower model's query tower, exported to ONNX and shipped inside the index version.

    Contract: input ``history_item_ids`` INT64 [batch, L] (index row + 1, 0 = padding, left-padded, oldest
    first; L fixed or dynamic); output ``query_embedding`` FP32 [batch, dimension]. Checked and warmed up on load
    with the index's first and last item, so a tower that cannot encode every item is refused there.
    """

    name = "query_tower"

    def __init__(self, path: Path, dimension: int, item_count: int, threads: int = 1):
        check_onnxruntime_install()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        try:
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own types for invalid files
            raise InvalidIndex(f"{path}: ONNX Runtime cannot load the query tower: {exc}") from None
        inputs = {i.name: i for i in self._session.get_inputs()}
        outputs = {o.name: o for o in self._session.get_outputs()}
        history = inputs.get(HISTORY_INPUT)
        if history is None or history.type != "tensor(int64)" or len(history.shape) != 2:
            raise InvalidIndex(f"{path}: query tower needs input {HISTORY_INPUT!r} INT64 [batch, length]")
        if QUERY_OUTPUT not in outputs:
            raise InvalidIndex(f"{path}: query tower has no output {QUERY_OUTPUT!r}")
        if set(inputs) != {HISTORY_INPUT}:
            raise InvalidIndex(f"{path}: unsupported query tower inputs {sorted(inputs)}")
        # A fixed length means left-pad/truncate to it; a dynamic one takes the newest items as they are.
        self.length = int(history.shape[1]) if isinstance(history.shape[1], int) else None
        self.dimension = dimension
        # The first and the last item's tokens: a tower whose item table is shorter than the index fails here,
        # at load, instead of on the first history holding one of the items past its table.
        try:
            warm = self._run(np.array([min(1, item_count), item_count], dtype=np.int64))
        except Exception as exc:  # ORT raises its own types for a model it cannot run
            raise InvalidIndex(
                f"{path}: query tower fails its warm-up on tokens 1 and {item_count} (the index's first and last "
                f"item): {str(exc).strip()}"
            ) from None
        if warm.shape != (dimension,) or not np.isfinite(warm).all():
            raise InvalidIndex(f"{path}: query tower gives {warm.shape} vectors, the index has {dimension} dims")

    def _run(self, tokens: np.ndarray) -> np.ndarray:
        length = self.length or min(len(tokens), MAX_DYNAMIC_LENGTH)
        history = np.zeros((1, length), dtype=np.int64)
        tail = tokens[-length:]
        history[0, length - tail.size :] = tail
        return self._session.run([QUERY_OUTPUT], {HISTORY_INPUT: history})[0][0]

    def encode(self, history_rows: list[int]) -> np.ndarray:
        return self._run(np.asarray(history_rows, dtype=np.int64) + 1)
