"""Embedded backend: ONNX Runtime in-process, reading the same ``config.pbtxt`` contract as Triton."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import numpy as np

from services.core.onnx_runtime import GPU_DISTRIBUTION, check_onnxruntime_install
from services.ranking.backends.base import ModelNotReady, Scores
from services.ranking.features import ItemVocabulary
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    HISTORY_INPUT,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    VOCABULARY_FILE,
    ModelConfigError,
    ModelContract,
    read_model_config,
    resolve_version,
)

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(float)": np.dtype(np.float32)}


class OnnxRuntimeBackend:
    """Loads ``<repository>/<model>/<version>/model.onnx``; checks it against ``config.pbtxt`` and warms it up."""

    def __init__(self, repository: Path, model_name: str, version: str = "", intra_op_threads: int = 1):
        self.repository = repository
        self.model_name = model_name
        self.requested_version = version
        self.intra_op_threads = intra_op_threads
        self.model_version = ""
        self.history_length = 0
        self.contract: ModelContract | None = None
        self.providers: list[str] = []
        self._session = None
        self._vocabulary: ItemVocabulary | None = None

    async def load(self) -> None:
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        distribution = check_onnxruntime_install()
        import onnxruntime as ort

        model_dir = self.repository / self.model_name
        contract = read_model_config(model_dir / "config.pbtxt")
        version, folder = resolve_version(model_dir, self.requested_version)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        wanted = ["CPUExecutionProvider"]
        if distribution == GPU_DISTRIBUTION:
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=wanted)
        except Exception as exc:  # ORT raises its own exception types for corrupt or invalid files
            raise ModelConfigError(f"{folder / MODEL_FILE}: ONNX Runtime cannot load it: {exc}") from None
        check_graph(folder / MODEL_FILE, session, contract)
        if not (folder / VOCABULARY_FILE).is_file():
            raise ModelConfigError(f"{folder}: missing {VOCABULARY_FILE} (the model's item tokens)")
        vocabulary = ItemVocabulary.read(folder / VOCABULARY_FILE)
        _warm_up(folder, session, contract, len(vocabulary))
        # get_available_providers() lists CUDA even where it cannot load; the session knows what it got.
        self.providers = list(session.get_providers())
        self._session, self._vocabulary, self.contract = session, vocabulary, contract
        self.model_version, self.history_length = version, contract.history_length
        log.info(
            "loaded %s version %s from %s with %s (%s), %d items",
            self.model_name,
            version,
            folder,
            self.providers[0],
            distribution,
            len(vocabulary),
        )

    def tokens(self, item_ids: list[str]) -> np.ndarray:
        if self._vocabulary is None:
            raise ModelNotReady("model not loaded")
        return self._vocabulary.tokens(item_ids)

    async def score(self, history: np.ndarray, candidates: np.ndarray) -> Scores:
        session, contract = self._session, self.contract
        if session is None or contract is None:
            raise ModelNotReady("model not loaded")
        return await asyncio.to_thread(_run, session, contract, history, candidates)

    async def close(self) -> None:
        self._session = None


def _run(session, contract: ModelContract, history: np.ndarray, candidates: np.ndarray) -> Scores:
    names = [PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if contract.has_return_head else [])
    outputs = session.run(names, {HISTORY_INPUT: history, CANDIDATES_INPUT: candidates})
    return Scores(purchase=outputs[0], returns=outputs[1] if len(outputs) > 1 else None)


def check_graph(path: Path, session, contract: ModelContract) -> None:
    """The graph's inputs and outputs must match config.pbtxt by name, type and rank."""
    for kind, graph_tensors, declared in (
        ("input", session.get_inputs(), contract.inputs),
        ("output", session.get_outputs(), contract.outputs),
    ):
        graph = {t.name: t for t in graph_tensors}
        if kind == "input" and set(graph) != set(declared):
            raise ModelConfigError(
                f"{path}: graph inputs {sorted(graph)} differ from config.pbtxt inputs {sorted(declared)}"
            )
        for name, spec in declared.items():
            tensor = graph.get(name)
            if tensor is None:
                raise ModelConfigError(f"{path}: config.pbtxt declares {kind} {name!r}, the graph has none")
            if _ORT_TYPES.get(tensor.type) != spec.dtype or len(tensor.shape) != len(spec.shape):
                raise ModelConfigError(
                    f"{path}: {kind} {name!r} is {tensor.type} {tensor.shape} in the graph, "
                    f"config.pbtxt says {spec.dtype.name} {list(spec.shape)}"
                )


def _warm_up(folder: Path, session, contract: ModelContract, vocabulary_size: int) -> None:
    """One real inference before serving; a model that gives wrong shapes or non-finite scores is refused."""
    rng = np.random.default_rng(0)
    history = rng.integers(0, vocabulary_size + 1, size=(2, contract.history_length), dtype=np.int64)
    candidates = rng.integers(1, vocabulary_size + 1, size=(2, 16), dtype=np.int64)
    try:
        scores = _run(session, contract, history, candidates)
    except Exception as exc:
        raise ModelConfigError(f"{folder}: warm-up inference failed: {exc}") from None
    for name, values in (("purchase", scores.purchase), ("return", scores.returns)):
        if values is None:
            continue
        if values.shape != candidates.shape:
            raise ModelConfigError(
                f"{folder}: warm-up {name} scores have shape {values.shape}, want {candidates.shape}"
            )
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ModelConfigError(f"{folder}: warm-up {name} scores are not probabilities in [0, 1]")
