"""`export_ranker` runs the servers' own load-time checks before it publishes, and writes only ids its readers read
back as written: it never publishes a version that servers refuse, and a refused export leaves nothing behind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from services.ranking.backends.onnxruntime import BatchingOptions, OnnxRuntimeBackend
from services.ranking.features import ItemVocabulary
from services.ranking.model_config import VOCABULARY_FILE, model_versions, read_model_config
from services.ranking.repository import LOCK_FILE
from services.retrieval.index import index_versions, save_index
from tests.integration.ranking.tiny_models import item_ids, tiny_repository
from training.export import ExportError, export_ranker, published_together

ITEMS = 100


class TableRanker(torch.nn.Module):
    """P(purchase) from a per-item table; ``together`` scores a row's candidates together (a softmax over it), which
    the micro-batcher cannot serve (padding changes every score)."""

    def __init__(self, history_length: int, together: bool = False):
        super().__init__()
        self.history_length, self.num_items, self.together = history_length, ITEMS, together
        self.table = torch.nn.Embedding(ITEMS + 1, 1)

    def forward(self, history_item_ids, candidate_item_ids):
        logits = self.table(candidate_item_ids).squeeze(-1) + 0 * history_item_ids.sum(-1, keepdim=True)
        return torch.softmax(logits, dim=1) if self.together else torch.sigmoid(logits)


@pytest.fixture
def model_dir(tmp_path):
    return tiny_repository(tmp_path, {1: {}}) / "ranker"


def ranker(model_dir, together=False) -> TableRanker:
    torch.manual_seed(0)
    return TableRanker(read_model_config(model_dir / "config.pbtxt").history_length, together).eval()


def left_behind(model_dir) -> list[str]:
    return sorted(p.name for p in model_dir.iterdir() if p.name not in ("1", "config.pbtxt", LOCK_FILE))


def test_a_ranker_the_servers_would_refuse_is_not_published_and_its_run_leaves_nothing(model_dir, tmp_path):
    index_root = tmp_path / "index"
    with pytest.raises(ExportError, match=r"not published, the servers would refuse it: .*/ranker/2: a candidate's"):
        with published_together(model_dir) as publication:  # as `aisle train` publishes
            version = publication.version
            publication.wrote(
                save_index(
                    index_root,
                    item_ids=item_ids(ITEMS),
                    embeddings=np.eye(ITEMS, 8, dtype=np.float32) + 0.1,
                    popularity=np.ones(ITEMS),
                    categories=["c"] * ITEMS,
                    brands=["b"] * ITEMS,
                    model_name="ranker",
                    model_version=str(version),
                )
            )
            publication.ranker = export_ranker(
                ranker(model_dir, together=True), model_dir, item_ids(ITEMS), {"data": {"items": ITEMS}}, version
            )
    assert model_versions(model_dir) == [1] and left_behind(model_dir) == []
    assert index_versions(index_root) == []


async def test_an_exported_ranker_passes_the_servers_checks_and_serves(model_dir):
    folder = export_ranker(ranker(model_dir), model_dir, item_ids(ITEMS), {"data": {"items": ITEMS}})
    assert folder.name == "2" and left_behind(model_dir) == ["2"]
    backend = OnnxRuntimeBackend(model_dir.parent, "ranker", batching=BatchingOptions(enabled=False))
    await backend.load()
    try:
        assert backend.model_version == "2"
    finally:
        await backend.close()


def test_metadata_recording_another_item_count_is_caught_before_publishing(model_dir):
    with pytest.raises(ExportError, match=f"records {ITEMS + 1} items"):
        export_ranker(ranker(model_dir), model_dir, item_ids(ITEMS), {"data": {"items": ITEMS + 1}})
    assert left_behind(model_dir) == []


@pytest.mark.parametrize(
    ("bad", "problem"),
    [
        ("I\u2028X", "printable"),  # str.splitlines splits here
        ("I\rX", "printable"),
        ("I\x85X", "printable"),
        ("I\tX", "printable"),
        ("", "must not be empty"),  # shifts every later token by one
        ("I" * 300, "at most 256 characters"),
    ],
)
def test_ids_the_vocabulary_cannot_hold_are_refused_before_anything_is_written(model_dir, bad, problem):
    ids = item_ids(ITEMS)
    ids[3] = bad
    with pytest.raises(ExportError, match=f"item id 3 .*{problem}") as refusal:
        export_ranker(ranker(model_dir), model_dir, ids, {})
    assert "\n" not in str(refusal.value) and left_behind(model_dir) == []


def test_duplicate_ids_are_refused(model_dir):
    ids = item_ids(ITEMS)
    ids[5] = ids[4]
    with pytest.raises(ExportError, match="unique"):
        export_ranker(ranker(model_dir), model_dir, ids, {})


def test_the_vocabulary_reads_back_as_written(model_dir):
    ids = [f"sku {i}/é-{i}" for i in range(ITEMS)]  # spaces, slashes and accents are fine
    folder = export_ranker(ranker(model_dir), model_dir, ids, {})
    vocabulary = ItemVocabulary.read(folder / VOCABULARY_FILE)
    assert len(vocabulary) == ITEMS and vocabulary.tokens(ids).tolist() == list(range(1, ITEMS + 1))
