"""The smallest training run that still exercises every part: a tiny synthetic shop and a tiny fit config, shared
by the tests that train a sequence ranker (training pipeline, Triton parity)."""

from __future__ import annotations

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
