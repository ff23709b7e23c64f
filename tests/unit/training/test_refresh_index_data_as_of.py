"""`aisle refresh` rewrites an index's trending column and keeps its stock: the new version's stock data is the
source version's, so it keeps the source's ``data_as_of`` (replicas keep the availability updates pushed since)."""

from __future__ import annotations

import time

import numpy as np

from services.retrieval.index import load_index, save_index
from tests.support.tiny_training import SHOP
from training.data.loaders import load_dataset
from training.refresh import refresh_index


def test_a_refreshed_index_keeps_the_stock_data_and_its_data_as_of(tmp_path):
    dataset = load_dataset(SHOP)
    ids = dataset.catalog.item_ids
    count = len(ids)
    source = load_index(
        save_index(
            tmp_path,
            item_ids=ids,
            embeddings=np.eye(count, 8, dtype=np.float32) + 0.1,
            popularity=np.ones(count),
            categories=["c"] * count,
            brands=["b"] * count,
            model_name="two_tower",
            model_version="1",
            stock=np.arange(count) % 3,
        )
    )
    time.sleep(0.01)
    refreshed = load_index(refresh_index(dataset, tmp_path))
    assert refreshed.created_at > source.created_at
    assert refreshed.data_as_of == source.data_as_of
    assert np.array_equal(refreshed.stock, source.stock)
