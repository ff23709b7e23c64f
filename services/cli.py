"""The ``aisle`` command. Subcommands import their code lazily, so ``aisle --help`` and ``aisle serve`` never
import torch (only ``aisle train`` and ``aisle demo`` need the ``train`` extra)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click

from services.core.settings import ServiceSettings

#: service -> (settings class path, main module)
SERVICES = {
    "retrieval": ("services.retrieval.settings:RetrievalSettings", "services.retrieval.__main__"),
    "ranking": ("services.ranking.settings:RankingSettings", "services.ranking.__main__"),
    "gateway": ("services.gateway.settings:GatewaySettings", "services.gateway.__main__"),
}


def _load(path: str):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def settings_options(settings_cls: type[ServiceSettings]):
    """One ``--flag`` per setting; unset flags fall back to the environment, then the default."""

    def decorate(command):
        for name, field in reversed(list(settings_cls.model_fields.items())):
            default = "" if field.is_required() else f" [default: {field.default}]"
            command = click.option(
                settings_cls.flag_name(name),
                name,
                default=None,
                help=f"{field.description} (env {settings_cls.env_name(name)}){default}",
            )(command)
        return command

    return decorate


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="aisle")
def main() -> None:
    """Aisle: recommendation serving for online shops."""


@main.group()
def serve() -> None:
    """Run one service (retrieval, ranking or gateway) in the foreground until SIGTERM."""


def _serve_command(service: str) -> click.Command:
    settings_path, main_module = SERVICES[service]
    settings_cls = _load(settings_path)

    @settings_options(settings_cls)
    def run(**overrides) -> None:
        sys.exit(importlib.import_module(main_module).main(overrides))

    run.__doc__ = f"Run the {service} service. Flags override AISLE_{service.upper()}_* environment variables."
    return click.command(name=service)(run)


for _service in SERVICES:
    serve.add_command(_serve_command(_service))


@main.command()
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


@main.command()
@click.option(
    "--workdir",
    type=click.Path(path_type=Path),
    default=Path("artifacts/demo"),
    show_default=True,
    help="Where the demo keeps its model repository, index and service logs.",
)
@click.option(
    "--retrain/--reuse",
    default=True,
    show_default=True,
    help="Train fresh models, or reuse the ones a previous demo left in --workdir.",
)
def demo(workdir: Path, retrain: bool) -> None:
    """The main job end to end: train small models, start the three services, send requests, print answers."""
    from services.demo.run import run_demo

    sys.exit(run_demo(workdir, retrain=retrain))


if __name__ == "__main__":
    main()
