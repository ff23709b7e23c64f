"""Training -> ONNX export -> the ranking backend: parity, layout, and refusal of broken models."""

from __future__ import annotations

import json
import shutil
import stat

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from services.core.paths import current_umask
from services.ranking.backends.onnxruntime import OnnxRuntimeBackend
from services.ranking.features import ItemVocabulary
from services.ranking.model_config import MODEL_FILE, ModelConfigError
from services.ranking.repository import LOCK_FILE
from services.retrieval.index import latest_version, load_index
from tests.integration.ranking.breakers import rename_input
from training.export import ExportError, export_ranker
from training.tiny_ranker import TinySequenceRanker
from training.train_tiny import TrainConfig, train_tiny_ranker


def test_the_ranker_learns_the_shops_structure(trained):
    # Full-ranking hit rate on held-out last interactions, against training popularity on the same split.
    assert trained.metrics["hr@10"] > 2 * trained.metrics["popularity_hr@10"]


def test_training_is_deterministic_under_a_seed(trained):
    config = TrainConfig(epochs=1, seed=5, eval_users=50, max_examples=2000)
    first = train_tiny_ranker(trained.sequences, len(trained.item_ids), config, progress=False)
    second = train_tiny_ranker(trained.sequences, len(trained.item_ids), config, progress=False)
    assert first.losses == second.losses


def test_export_is_complete_and_matches_torch(trained):
    version = trained.model_repository / "ranker" / "1"
    assert sorted(p.name for p in version.iterdir()) == ["item_vocabulary.txt", "metadata.json", "model.onnx"]
    metadata = json.loads((version / "metadata.json").read_text())
    assert metadata["parity_max_abs_diff"] <= 1e-4 and metadata["data"]["source"] == "synthetic"
    # No staging folder left behind (the writer lock stays, as lock files do).
    assert not [p for p in (trained.model_repository / "ranker").iterdir() if p.name.startswith(".staging")]
    assert [p.name for p in (trained.model_repository / "ranker").iterdir() if p.name.startswith(".")] == [LOCK_FILE]


def test_exported_versions_are_as_readable_as_a_plain_mkdir_makes_them(trained):
    """Staged in ``mkdtemp`` folders (mode 0700), the versions kept out a server running as another user than the
    trainer (a shared volume, a serving account)."""
    expected = 0o777 & ~current_umask()
    for folder in (trained.model_repository / "ranker" / "1", latest_version(trained.index_root)):
        assert stat.S_IMODE(folder.stat().st_mode) == expected, folder


def test_serving_tokens_are_training_tokens(trained):
    vocabulary = ItemVocabulary.read(trained.model_repository / "ranker" / "1" / "item_vocabulary.txt")
    rows = np.arange(len(trained.item_ids))
    assert vocabulary.tokens(trained.item_ids).tolist() == (rows + 1).tolist()


def test_index_holds_the_models_item_vectors(trained):
    index = load_index(latest_version(trained.index_root))
    assert index.item_ids == trained.item_ids and index.model_version == "1"
    assert index.dimension == 32 and index.popularity.sum() > 0


def test_index_holds_the_shops_co_visitation(trained):
    from training.synthetic import generate_shop, session_baskets

    table = load_index(latest_version(trained.index_root)).covisitation
    assert table is not None and table.rows.size > 0
    # Every neighbour pair was bought in one session of the shop the fixture trained on.
    shop = generate_shop(n_users=400, n_items=150, seed=3)
    together = {(a, b) for basket in session_baskets(shop.events) for a in basket.tolist() for b in basket.tolist()}
    owners = np.repeat(np.arange(table.anchors), np.diff(table.indptr))
    assert all((a, b) in together for a, b in zip(owners.tolist(), table.rows.tolist(), strict=True))


def test_versions_are_added_never_overwritten(trained, tmp_path):
    repository = tmp_path / "repo"
    shutil.copytree(trained.model_repository, repository)
    model = TinySequenceRanker(len(trained.item_ids)).eval()
    assert export_ranker(model, repository / "ranker", trained.item_ids, {}).name == "2"
    with pytest.raises(ExportError, match="immutable"):
        export_ranker(model, repository / "ranker", trained.item_ids, {}, version=2)
    with pytest.raises(ExportError, match="history length"):
        export_ranker(TinySequenceRanker(5, history_length=10), repository / "ranker", ["a"] * 5, {})


async def test_the_exported_model_loads_and_scores(trained):
    backend = OnnxRuntimeBackend(trained.model_repository, "ranker")
    await backend.load()
    assert backend.model_version == "1" and backend.providers == ["CPUExecutionProvider"]
    history = np.zeros((1, 50), dtype=np.int64)
    history[0, -3:] = [1, 2, 3]
    scores = await backend.score(history, np.array([[1, 2, 3, 4]], dtype=np.int64))
    assert scores.purchase.shape == (1, 4) and ((scores.purchase > 0) & (scores.purchase < 1)).all()


def broken_copy(trained, tmp_path, breaker) -> OnnxRuntimeBackend:
    repository = tmp_path / "repo"
    shutil.copytree(trained.model_repository, repository)
    breaker(repository / "ranker" / "1" / MODEL_FILE)
    return OnnxRuntimeBackend(repository, "ranker")


def poison_weights(path):
    model = onnx.load(str(path))
    for initializer in model.graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.dtype == np.float32 and values.size > 100:
            initializer.CopyFrom(numpy_helper.from_array(np.full_like(values, np.nan), initializer.name))
    onnx.save(model, str(path))


def truncate(path):
    path.write_bytes(path.read_bytes()[:1000])


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (rename_input, "graph inputs"),
        (poison_weights, "not probabilities"),
        (truncate, "ONNX Runtime cannot load it"),
    ],
)
async def test_a_broken_model_is_refused_with_a_clear_reason(trained, tmp_path, breaker, message):
    backend = broken_copy(trained, tmp_path, breaker)
    with pytest.raises(ModelConfigError, match=message):
        await backend.load()
    assert backend.model_version == ""
