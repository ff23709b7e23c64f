"""The exported query tower runs inside the retrieval service: callers send history, the service encodes it."""

from __future__ import annotations

import warnings

import pytest
import torch

from services.retrieval.index import InvalidIndex
from services.retrieval.query_encoder import OnnxQueryTower
from services.retrieval.search import ExactSearcher
from services.retrieval.sources import TwoTowerSource
from services.retrieval.state import open_index
from tests.support.retrieval import write_index
from tests.unit.retrieval.test_sources_and_state import query

ITEMS, DIMENSION, LENGTH = 3000, 16, 20


class TinyQueryTower(torch.nn.Module):
    """Mean of the history's item embeddings (padding ignored), then a linear map."""

    def __init__(self, dimension: int = DIMENSION):
        super().__init__()
        torch.manual_seed(0)
        self.items = torch.nn.Embedding(ITEMS + 1, dimension, padding_idx=0)
        self.project = torch.nn.Linear(dimension, DIMENSION)

    def forward(self, history_item_ids: torch.Tensor) -> torch.Tensor:
        mask = (history_item_ids > 0).float().unsqueeze(-1)
        mean = (self.items(history_item_ids) * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        return self.project(mean)


def export(model: torch.nn.Module, path, dynamic_length: bool = False) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.ones(2, LENGTH, dtype=torch.int64),),
            str(path),
            input_names=["history_item_ids"],
            output_names=["query_embedding"],
            dynamic_shapes={
                "history_item_ids": {
                    0: torch.export.Dim("batch"),
                    **({1: torch.export.Dim("length")} if dynamic_length else {}),
                }
            },
            dynamo=True,
            opset_version=18,
            verbose=False,
            external_data=False,
        )


@pytest.fixture(scope="module")
def tower_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tower") / "query_tower.onnx"
    export(TinyQueryTower(), path)
    return path


def test_the_service_encodes_history_with_the_exported_tower(tmp_path, tower_file):
    index = open_index(write_index(tmp_path, count=ITEMS, query_tower=tower_file), 20_000, 0.8)
    assert isinstance(index.encoder, OnnxQueryTower) and index.encoder.length == LENGTH
    history = [5, 17, 2999]
    found = TwoTowerSource().retrieve(index, query(index, k=20, history=history))
    with torch.no_grad():
        tokens = torch.zeros(1, LENGTH, dtype=torch.int64)
        tokens[0, -3:] = torch.tensor(history) + 1
        expected_query = TinyQueryTower()(tokens)[0].numpy()
    expected, _ = ExactSearcher(index.artifact.embeddings).search(expected_query, 20)
    assert found.rows.tolist() == expected.tolist()


def test_a_tower_that_does_not_fit_the_index_is_refused(tmp_path):
    path = tmp_path / "wrong.onnx"
    wrong = TinyQueryTower()
    wrong.project = torch.nn.Linear(DIMENSION, 4)  # 4-dim queries for a 16-dim index
    export(wrong, path)
    with pytest.raises(InvalidIndex, match="4,\\) vectors, the index has 16 dims"):
        open_index(write_index(tmp_path / "idx", count=ITEMS, query_tower=path), 20_000, 0.8)


def test_a_tower_with_a_dynamic_history_length_takes_the_history_as_it_is(tmp_path):
    path = tmp_path / "dynamic.onnx"
    export(TinyQueryTower(), path, dynamic_length=True)
    index = open_index(write_index(tmp_path / "idx", count=ITEMS, query_tower=path), 20_000, 0.8)
    assert index.encoder.length is None
    history = [5, 17, 2999]
    with torch.no_grad():
        expected = TinyQueryTower()(torch.tensor([history]) + 1)[0].numpy()
    assert abs(index.encoder.encode(history) - expected).max() < 1e-4
