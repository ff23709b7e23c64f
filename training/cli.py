"""Training commands of the ``aisle`` CLI: ``aisle train`` and ``aisle evaluate``.

Imported by ``services/cli.py`` for every ``aisle`` call, so this module imports torch and the training code only
inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Folder for the retrieval index (out/index/<version>) and the item catalog.",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path),
    default=Path("model_repository"),
    show_default=True,
    help="Triton-layout repository; a new version folder is added to its ranker.",
)
@click.option("--model-name", default="ranker", show_default=True, help="Model folder in the repository.")
@click.option(
    "--users", type=click.IntRange(10, 1_000_000), default=2000, show_default=True, help="Synthetic shop: customers."
)
@click.option(
    "--items", type=click.IntRange(20, 1_000_000), default=1000, show_default=True, help="Synthetic shop: catalog size."
)
@click.option("--epochs", type=click.IntRange(1, 100), default=3, show_default=True, help="Training epochs.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, sampling and weights.")
def train(out: Path, model_repository: Path, model_name: str, users: int, items: int, epochs: int, seed: int) -> None:
    """Train the ranker on a synthetic shop and export it (ONNX) and its item index."""
    from services.core.logs import configure_logging
    from training.pipeline import train_synthetic
    from training.train_tiny import TrainConfig

    configure_logging("INFO", "train")
    if not (model_repository / model_name / "config.pbtxt").is_file():
        raise click.UsageError(
            f"{model_repository / model_name / 'config.pbtxt'} not found: point --model-repository at a repository "
            "whose model folder has its config.pbtxt (the project's model_repository/ has one)"
        )
    artifacts = train_synthetic(
        out,
        model_repository,
        model_name=model_name,
        users=users,
        items=items,
        config=TrainConfig(epochs=epochs, seed=seed),
    )
    metrics = artifacts.result.metrics
    click.echo(f"model version: {artifacts.model_version_dir}")
    click.echo(f"index:         {artifacts.index_dir}")
    click.echo(f"catalog:       {artifacts.catalog_path}")
    click.echo("hold-out:      " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))


@click.command()
def evaluate() -> None:
    """Offline evaluation (full-ranking NDCG@K, HR@K, coverage) against baselines. Not written yet."""
    raise click.ClickException("offline evaluation arrives with the training issue; nothing to run yet")
