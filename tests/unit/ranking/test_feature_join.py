"""The feature join: callers send ids, the service builds the model's tensors from the version's files."""

from __future__ import annotations

import numpy as np
import pytest

from services.ranking.features import (
    CANDIDATE_FEATURES,
    FEATURES_FILE,
    STATIC_FEATURES,
    ItemFeatureSnapshot,
    ItemVocabulary,
)
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    FEATURES_INPUT,
    HISTORY_INPUT,
    VOCABULARY_FILE,
    ModelConfigError,
    ModelContract,
    TensorSpec,
)
from services.ranking.served_model import ServedModel

ITEMS = ["shoe", "sock", "hat"]
IN_STOCK = STATIC_FEATURES.index("in_stock")
LOG_PRICE = STATIC_FEATURES.index("log_price")
TRENDING = STATIC_FEATURES.index("log_trending")
STATIC = len(STATIC_FEATURES)


def contract(features: bool, history_length: int = 5) -> ModelContract:
    inputs = {
        HISTORY_INPUT: TensorSpec(HISTORY_INPUT, np.dtype(np.int64), (-1, history_length)),
        CANDIDATES_INPUT: TensorSpec(CANDIDATES_INPUT, np.dtype(np.int64), (-1, -1)),
    }
    if features:
        inputs[FEATURES_INPUT] = TensorSpec(FEATURES_INPUT, np.dtype(np.float32), (-1, -1, len(CANDIDATE_FEATURES)))
    outputs = {"purchase_probability": TensorSpec("purchase_probability", np.dtype(np.float32), (-1, -1))}
    return ModelContract("ranker", 64, inputs, outputs)


def snapshot() -> ItemFeatureSnapshot:
    return ItemFeatureSnapshot.from_catalog(
        prices=np.array([50.0, 5.0, 20.0]),
        margins=np.array([0.3, 0.5, 0.4]),
        popularity=np.array([100, 10, 0]),
        return_rates=np.array([0.2, 0.0, 0.1]),
        in_stock=np.array([1, 1, 0]),  # the hat is out of stock
        trending=np.array([7, 0, 3]),  # baskets in the recent window
    )


def served(features: bool = True) -> ServedModel:
    return ServedModel("ranker", "3", None, contract(features), ItemVocabulary(ITEMS), snapshot() if features else None)


def test_known_unknown_and_out_of_stock_candidates():
    model = served()
    inputs = model.inputs(["sock", "shoe", "sock"], ["shoe", "NOT-IN-CATALOG", "hat", "sock"])
    features = inputs.tensors[FEATURES_INPUT]
    assert features.shape == (1, 4, len(CANDIDATE_FEATURES)) and features.dtype == np.float32
    assert inputs.tensors[CANDIDATES_INPUT].tolist() == [[1, 0, 3, 2]]
    assert inputs.unknown.tolist() == [False, True, False, False]
    values = snapshot().values
    # Known ids get their own row; the unknown id gets row 0, the documented defaults (median price, in stock).
    assert np.allclose(features[0, 0, :STATIC], values[1]) and np.isclose(features[0, 0, LOG_PRICE], np.log1p(50))
    assert np.allclose(features[0, 1, :STATIC], values[0]) and features[0, 1, IN_STOCK] == 1.0
    assert np.isclose(features[0, 1, LOG_PRICE], np.log1p(20.0))  # median of 5, 20, 50
    assert features[0, 2, IN_STOCK] == 0.0 and features[0, 0, IN_STOCK] == 1.0
    # Recent sales: the shoe's 7 baskets, none for an unknown id.
    assert np.allclose(features[0, :, TRENDING], np.log1p([7, 0, 3, 0]))
    # Request features: the sock is twice in the history, the newest item; the hat not at all; unknown never.
    assert np.allclose(features[0, :, STATIC], np.log1p([1, 0, 0, 2]))
    assert np.allclose(features[0, :, STATIC + 1], [0.8, 0.0, 0.0, 1.0])


def test_history_is_encoded_to_the_contract_length():
    model = served()
    inputs = model.inputs(["sock", "???", "hat"], ["shoe"])
    assert inputs.tensors[HISTORY_INPUT].tolist() == [[0, 0, 0, 2, 3]]


def test_a_model_without_candidate_features_gets_ids_only():
    inputs = served(features=False).inputs(["sock"], ["shoe", "hat"])
    assert set(inputs.tensors) == {HISTORY_INPUT, CANDIDATES_INPUT}


def version_folder(tmp_path, rows: int | None = None):
    (tmp_path / VOCABULARY_FILE).write_text("\n".join(ITEMS) + "\n")
    if rows is not None:
        ItemFeatureSnapshot(STATIC_FEATURES, np.ones((rows, len(STATIC_FEATURES)))).save(tmp_path / FEATURES_FILE)
    return tmp_path


def test_the_snapshot_is_read_from_the_version(tmp_path):
    model = ServedModel.read("ranker", "1", version_folder(tmp_path, rows=4), contract(True))
    assert model.features is not None and len(model.features) == 3


def test_a_missing_snapshot_is_refused_by_name(tmp_path):
    with pytest.raises(ModelConfigError, match="no item_features.npz"):
        ServedModel.read("ranker", "1", version_folder(tmp_path), contract(True))


def test_a_snapshot_that_does_not_follow_the_vocabulary_is_refused(tmp_path):
    with pytest.raises(ModelConfigError, match="3 items"):
        ServedModel.read("ranker", "1", version_folder(tmp_path, rows=10), contract(True))


@pytest.mark.parametrize("keep", [0, 100])  # an empty copy (np.load: EOFError) and a cut one (BadZipFile)
def test_a_snapshot_cut_short_is_a_refusal_not_an_error_past_the_handlers(tmp_path, keep):
    folder = version_folder(tmp_path, rows=4)
    snapshot = folder / "item_features.npz"
    snapshot.write_bytes(snapshot.read_bytes()[:keep])
    with pytest.raises(ModelConfigError, match="not a readable item feature snapshot"):
        ServedModel.read("ranker", "1", folder, contract(True))
