"""``aisle train --skeleton``: synthetic shop -> trained ranker -> model repository version + retrieval index + catalog.

As in training/run.py: ``--out`` and the model's ``config.pbtxt`` are checked before training, and the ranker
version is published last (the index version written for it is removed again if that fails)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.retrieval.covisitation import CoVisitationTable
from training.export import (
    check_ranker_contract,
    export_index,
    export_ranker,
    prepare_out,
    published_together,
    write_catalog,
)
from training.synthetic import generate_shop, session_baskets
from training.train_tiny import TrainConfig, TrainResult, train_tiny_ranker

log = logging.getLogger(__name__)

CATALOG_FILE = "catalog.json"
#: Neighbours kept per item in the exported co-visitation table (as training/fit.py's FitConfig does).
COVISITATION_NEIGHBOURS = 100


@dataclass(frozen=True)
class TrainedArtifacts:
    model_version_dir: Path
    index_dir: Path
    catalog_path: Path
    result: TrainResult


def train_synthetic(
    out_dir: Path,
    model_repository: Path,
    *,
    model_name: str = "ranker",
    users: int = 2000,
    items: int = 1000,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
) -> TrainedArtifacts:
    model_dir = model_repository / model_name
    prepare_out(out_dir)
    check_ranker_contract(model_dir, config.history_length, None)
    shop = generate_shop(n_users=users, n_items=items, seed=config.seed)
    log.info("synthetic shop: %d users, %d items, %d events", users, items, len(shop.events.user))
    result = train_tiny_ranker(shop.sequences(), len(shop.catalog), config, progress=progress)
    catalog = shop.catalog
    metadata = {
        "data": {
            "source": "synthetic",
            "users": users,
            "items": items,
            "seed": config.seed,
            "events": int(len(shop.events.user)),
        },
        **result.summary(),
    }
    # Items bought in the same session, for the co-visitation source ("often bought with ...").
    baskets = session_baskets(shop.events)
    holding = np.bincount(np.concatenate(baskets), minlength=len(catalog)) if baskets else np.zeros(len(catalog))
    covisitation = CoVisitationTable.from_baskets(baskets, holding, COVISITATION_NEIGHBOURS)
    with published_together(model_dir) as publication:  # the ranker's number, kept until it is published
        version = publication.version
        index_dir = publication.wrote(
            export_index(
                result.model,
                out_dir / "index",
                catalog.item_ids,
                result.popularity,
                catalog.categories,
                catalog.brands,
                model_name,
                str(version),
                covisitation=covisitation,
            )
        )
        version_dir = publication.ranker = export_ranker(
            result.model, model_dir, catalog.item_ids, metadata, version=version
        )
        catalog_path = out_dir / CATALOG_FILE
        write_catalog(shop.catalog, catalog_path)
    return TrainedArtifacts(version_dir, index_dir, catalog_path, result)
