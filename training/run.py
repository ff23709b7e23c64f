"""``aisle train`` end to end: data -> split -> two-tower + sequence ranker -> exports -> ``training_run.json``.

Artefacts (``out`` is ``--out``):

    <model repository>/<model name>/<version>/   model.onnx, item_vocabulary.txt, item_features.npz, metadata.json
    out/index/<index version>/                   the retrieval index (two-tower item embeddings), via save_index
    out/query_tower/<model version>-<UTC time>/  query_tower.onnx + metadata.json (the two-tower's query tower)
    out/catalog.json                             item titles and attributes, for people reading answers
    out/training_run.json                        what was trained on and where everything went (read by evaluate)
    out/training_curves.json                     losses per step, validation metrics per epoch

``--out`` and the model folder's ``config.pbtxt`` are checked before anything is trained. The ranker version is
published last: the query tower and the index version (which names the ranker version it goes with) are written
first and removed again if the ranker's export fails, and a ranker version whose run record cannot be written is
retired, so a failed run leaves no ranker version without its index.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch

from services.ranking.features import CANDIDATE_FEATURES
from services.retrieval.index import save_index
from training.data.loaders import load_dataset
from training.data.schema import Dataset
from training.export import (
    QUERY_TOWER_FILE,
    catalog_json,
    check_ranker_contract,
    export_query_tower,
    export_ranker,
    prepare_out,
    published_together,
    staged_text,
)
from training.fit import FitConfig, FittedModels, fit
from training.models.two_tower import QueryTower
from training.regions import regional_data

log = logging.getLogger(__name__)

RUN_FILE = "training_run.json"
CURVES_FILE = "training_curves.json"
CATALOG_FILE = "catalog.json"
DEFAULT_MODEL_NAME = "sequence_ranker"


@dataclass(frozen=True)
class TrainingRun:
    ranker_dir: Path
    index_dir: Path
    query_tower_dir: Path
    run_file: Path
    fitted: FittedModels


def train_and_export(
    spec: dict,
    out: Path,
    model_repository: Path,
    model_name: str = DEFAULT_MODEL_NAME,
    config: FitConfig | None = None,
    progress: bool = True,
) -> TrainingRun:
    config = config or FitConfig()
    model_dir = model_repository / model_name
    prepare_out(out)
    check_ranker_contract(model_dir, config.ranker_history_length, len(CANDIDATE_FEATURES))
    dataset = load_dataset(spec)
    fitted = fit(dataset, config, progress=progress)
    split, catalog = fitted.split, dataset.catalog
    regional = regional_data(dataset, split)
    versions = {"torch": torch.__version__, "numpy": np.__version__, "python": platform.python_version()}
    metadata = {
        "data": {**dataset.summary(), "spec": spec},
        "training": fitted.summary(),
        "regions": regional.summary(),
        "versions": versions,
    }
    item_vectors = fitted.two_tower.all_item_vectors()
    index_args = dict(
        item_ids=catalog.item_ids,
        embeddings=item_vectors,
        popularity=split.popularity(),
        categories=catalog.categories,
        brands=catalog.brands,
        model_name=model_name,
        covisitation=fitted.covisitation,
        # The trending source's counts, from the same baskets as the exported snapshot's log_trending rates.
        trending=fitted.export_sales.latest(),
        # Regions, where each item is sold (the catalog's lists) and each region's own popular items.
        **regional.index_args(),
        # No stock of its own (every item in stock): availability pushed before it still applies, regions included,
        # as the live data is newer than the training catalog's lists.
        data_as_of=0.0,
    )
    # The repository's own numbering (retired numbers are never reused), kept for this run until the ranker is
    # published last under it.
    with published_together(model_dir) as publication:
        version = publication.version
        # Keyed by time too: a version number of another repository (or of one rebuilt) must not collide here.
        query_tower_dir = out / "query_tower" / f"{version}-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        publication.wrote(
            export_query_tower(
                QueryTower(fitted.two_tower),
                query_tower_dir,
                len(catalog),
                {"model": "two_tower", "model_version": str(version), "data": metadata["data"]["fingerprint"]},
            )
        )
        # The retrieval index carries the query tower itself (checksummed with the rest of the version).
        index_dir = publication.wrote(
            save_index(
                out / "index", query_tower=query_tower_dir / QUERY_TOWER_FILE, model_version=str(version), **index_args
            )
        )
        ranker_dir = publication.ranker = export_ranker(
            fitted.ranker, model_dir, catalog.item_ids, metadata, version=version, snapshot=fitted.snapshot
        )
        run_file = _write_run(
            out, spec, dataset, fitted, model_repository, model_name, versions, ranker_dir, index_dir, query_tower_dir
        )
    log.info("exported %s, %s, %s", ranker_dir, index_dir, query_tower_dir)
    return TrainingRun(ranker_dir, index_dir, query_tower_dir, run_file, fitted)


def _write_run(
    out: Path,
    spec: dict,
    dataset: Dataset,
    fitted: FittedModels,
    model_repository: Path,
    model_name: str,
    versions: dict,
    ranker_dir: Path,
    index_dir: Path,
    query_tower_dir: Path,
) -> Path:
    """The catalog, the curves and the run record (read by ``aisle evaluate``); returns the run record's path. Each is
    written beside its file first and the three replace theirs together at the end: a run that fails while writing
    them (a full disk) leaves the previous run's files whole, not a truncated catalog.json the gateway cannot read."""
    curves = {
        "tower_loss": fitted.curves.tower_loss,
        "ranker_loss": fitted.curves.ranker_loss,
        "validation": fitted.curves.validation,
        "ranker_kept_epoch": fitted.curves.ranker_kept_epoch,
    }
    record = {
        "format": "aisle-training-run/1",
        "data": spec,
        "dataset": dataset.summary(),
        "model_repository": str(model_repository.resolve()),
        "model_name": model_name,
        "ranker_dir": str(ranker_dir.resolve()),
        "index_dir": str(index_dir.resolve()),
        "query_tower": str((query_tower_dir / QUERY_TOWER_FILE).resolve()),
        "training": fitted.summary(),
        "versions": versions,
    }
    texts = {
        out / CATALOG_FILE: catalog_json(dataset.catalog),
        out / CURVES_FILE: json.dumps(curves),
        out / RUN_FILE: json.dumps(record, indent=2) + "\n",
    }
    staged: dict[Path, Path] = {}
    try:
        for path, text in texts.items():
            staged[path] = staged_text(path, text)
    except BaseException:
        for temporary in staged.values():
            temporary.unlink(missing_ok=True)
        raise
    for path, temporary in staged.items():
        os.replace(temporary, path)
    return out / RUN_FILE
