"""One model version as the service uses it: its contract, item tokens and item features, and the input builder.

Every backend serves a :class:`ServedModel`: the embedded backend beside its ONNX Runtime session, the Triton backend
for the version Triton reports ready (the tensors are built here from the repository's files, so callers send ids).
A request is built against one ServedModel and scored by that same version, so a version swap between the two
can never mix one version's tokens with another's weights.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.ranking.features import (
    FEATURES_FILE,
    PADDING_TOKEN,
    ItemFeatureSnapshot,
    ItemVocabulary,
    candidate_features,
    encode_history,
)
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    FEATURES_INPUT,
    HISTORY_INPUT,
    METADATA_FILE,
    VOCABULARY_FILE,
    ModelConfigError,
    ModelContract,
)


@dataclass(frozen=True)
class ModelInputs:
    """The tensors of one request (batch of one) plus which candidates the model does not know."""

    tensors: dict[str, np.ndarray]
    unknown: np.ndarray  # bool [C]: candidates not in the vocabulary (answered with the documented default)

    @property
    def candidate_count(self) -> int:
        return int(self.tensors[CANDIDATES_INPUT].shape[1])


@dataclass(frozen=True, eq=False)
class ServedModel:
    name: str
    version: str
    folder: Path
    contract: ModelContract
    vocabulary: ItemVocabulary
    #: Present exactly when the contract declares ``candidate_features``.
    features: ItemFeatureSnapshot | None = None

    @classmethod
    def read(cls, name: str, version: str, folder: Path, contract: ModelContract) -> ServedModel:
        """Reads the version's item vocabulary (and feature snapshot when the contract needs one).

        An empty vocabulary (a copy that failed half-way) would answer every candidate as unknown, and one of another
        size than ``metadata.json`` records is not the one the model was trained with: both are refused."""
        if not (folder / VOCABULARY_FILE).is_file():
            raise ModelConfigError(f"{folder}: missing {VOCABULARY_FILE} (the model's item tokens)")
        try:
            vocabulary = ItemVocabulary.read(folder / VOCABULARY_FILE)
        except ValueError as exc:
            raise ModelConfigError(f"{folder / VOCABULARY_FILE}: {exc}") from None
        if not len(vocabulary):
            raise ModelConfigError(
                f"{folder / VOCABULARY_FILE}: no items (every candidate would be unknown); an incomplete copy?"
            )
        recorded = recorded_item_count(folder)
        if recorded is not None and recorded != len(vocabulary):
            raise ModelConfigError(
                f"{folder}: {METADATA_FILE} records {recorded} items (data.items), but {VOCABULARY_FILE} has "
                f"{len(vocabulary)}; an incomplete copy, or files of different versions?"
            )
        features = None
        if contract.has_candidate_features:
            features = read_features(folder, len(vocabulary))
        return cls(name, version, folder, contract, vocabulary, features)

    @property
    def history_length(self) -> int:
        return self.contract.history_length

    def tokens(self, item_ids: Sequence[str]) -> np.ndarray:
        return self.vocabulary.tokens(item_ids)

    def inputs(self, history_ids: Sequence[str], candidate_ids: Sequence[str]) -> ModelInputs:
        """Ids to the model's tensors: history [1, L], candidates [1, C] and, when declared, features [1, C, F]."""
        history = encode_history(self.vocabulary.tokens(history_ids), self.history_length)[None, :]
        candidates = self.vocabulary.tokens(candidate_ids)[None, :]
        return ModelInputs(self.tensors(history, candidates), candidates[0] == PADDING_TOKEN)

    def tensors(self, history: np.ndarray, candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Token arrays to the model's input dict (the feature join happens here)."""
        tensors = {HISTORY_INPUT: history, CANDIDATES_INPUT: candidates}
        if self.features is not None:
            tensors[FEATURES_INPUT] = candidate_features(self.features, history, candidates)
        return tensors


def recorded_item_count(folder: Path) -> int | None:
    """The item count the export recorded in ``metadata.json`` (``data.items``); None without one."""
    metadata = read_metadata(folder)
    data = metadata.get("data") if isinstance(metadata, dict) else None
    items = data.get("items") if isinstance(data, dict) else None
    return items if isinstance(items, int) and not isinstance(items, bool) else None


def read_metadata(folder: Path) -> object:
    """A version folder's ``metadata.json`` as parsed (None without one); :class:`ModelConfigError` when it cannot
    be read as JSON."""
    path = folder / METADATA_FILE
    if not path.is_file():
        return None
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ModelConfigError(f"{path}: cannot read it: {exc}") from None
    except UnicodeDecodeError as exc:  # a ValueError, which no load's refusal handler expects
        raise ModelConfigError(f"{path}: not UTF-8 (JSON must be): {exc}") from None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise ModelConfigError(f"{path}: not valid JSON: {exc}") from None


def read_features(folder: Path, vocabulary_size: int) -> ItemFeatureSnapshot:
    path = folder / FEATURES_FILE
    if not path.is_file():
        raise ModelConfigError(
            f"{folder}: the config declares {FEATURES_INPUT!r} but the version has no {FEATURES_FILE} "
            "(the item feature snapshot the service joins candidates with)"
        )
    try:
        snapshot = ItemFeatureSnapshot.load(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a truncated copy, an empty one
        raise ModelConfigError(f"{path}: not a readable item feature snapshot: {exc}") from None
    try:
        snapshot.require_current(path)
    except ValueError as exc:
        raise ModelConfigError(str(exc)) from None
    if len(snapshot) != vocabulary_size:
        raise ModelConfigError(
            f"{path}: {len(snapshot)} item rows, but {VOCABULARY_FILE} has {vocabulary_size} items "
            "(row t must be the item with token t)"
        )
    return snapshot
