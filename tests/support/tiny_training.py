"""The smallest training run that still exercises every part: a tiny synthetic shop and a tiny fit config, shared
by the tests that train a sequence ranker (training pipeline, Triton parity)."""

from __future__ import annotations

import numpy as np

from training.data.schema import ItemCatalog
from training.fit import FitConfig

SHOP = {"format": "synthetic", "users": 300, "items": 120, "seed": 4}
TINY = FitConfig(
    seed=4,
    dim=16,
    tower_epochs=1,
    ranker_epochs=1,
    ranker_layers=1,
    tower_batch=128,
    ranker_batch=64,
    ranker_candidates=16,
    positives=6,
    retrieve=40,
    validation_users=100,
)


def plain_catalog(items: int, regions: list[tuple[str, ...]] | None = None) -> ItemCatalog:
    """Items ``i0``.. with a title, one category and brand, price 1, margin 0.3, in stock; sold everywhere unless
    ``regions`` says where."""
    return ItemCatalog(
        item_ids=[f"i{n}" for n in range(items)],
        titles=[f"item {n}" for n in range(items)],
        categories=["c"] * items,
        brands=["b"] * items,
        prices=np.ones(items),
        margins=np.full(items, 0.3),
        stock=np.ones(items, dtype=np.int64),
        regions=regions or [()] * items,
    )
