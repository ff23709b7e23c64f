"""Fixtures shared by every test layer: tracing into memory, and small trained artefacts made once per run."""

from __future__ import annotations

from services.core.grpc_runtime import configure_grpc_runtime

configure_grpc_runtime()  # before anything imports grpc: in-process servers run the services' gRPC runtime

import gc  # noqa: E402
import shutil  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter  # noqa: E402

from services.core.telemetry import configure_tracing  # noqa: E402

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_TEMPLATE = PROJECT_ROOT / "model_repository" / "ranker" / "config.pbtxt"


@pytest.fixture(scope="session")
def span_exporter() -> InMemorySpanExporter:
    """Every span of every in-process server, kept in memory. Installed before any server is made."""
    exporter = InMemorySpanExporter()
    configure_tracing("aisle-tests", exporter=exporter)
    return exporter


@pytest.fixture(autouse=True)
def _tracing(span_exporter: InMemorySpanExporter) -> Iterator[None]:
    """Tracing on for every test; its spans dropped after it (kept, the run's spans made every full garbage
    collection walk a larger heap)."""
    yield
    span_exporter.clear()


def pytest_collection_finish(session: pytest.Session) -> None:
    """Every test module is imported: what they built is kept out of later garbage collections, as the services do
    once loaded (``gc.freeze``). A full collection of this heap took 80-175 ms, a stall that could turn an in-process
    server's answer that arrived in time into a stage timeout."""
    gc.collect()
    gc.freeze()


@dataclass(frozen=True)
class TrainedFiles:
    root: Path
    model_repository: Path
    index_root: Path
    item_ids: list[str]
    sequences: list
    metrics: dict


def new_model_repository(root: Path) -> Path:
    """A model repository holding the project's ranker config.pbtxt and no versions."""
    repository = root / "model_repository"
    (repository / "ranker").mkdir(parents=True)
    shutil.copy(CONFIG_TEMPLATE, repository / "ranker" / "config.pbtxt")
    return repository


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> TrainedFiles:
    """A tiny synthetic shop trained and exported once: a ranker version and a retrieval index."""
    from training.pipeline import train_synthetic
    from training.synthetic import generate_shop
    from training.train_tiny import TrainConfig

    root = tmp_path_factory.mktemp("trained")
    repository = new_model_repository(root)
    config = TrainConfig(epochs=2, seed=3, eval_users=200)
    artifacts = train_synthetic(root, repository, users=400, items=150, config=config, progress=False)
    shop = generate_shop(n_users=400, n_items=150, seed=3)
    return TrainedFiles(
        root, repository, root / "index", shop.catalog.item_ids, shop.sequences(), artifacts.result.metrics
    )
