"""The ``aisle`` command. Subcommands import their code lazily, so ``aisle --help`` and ``aisle serve`` never
import torch (only ``aisle train`` and ``aisle demo`` need the ``train`` extra)."""

from __future__ import annotations

from services.core.grpc_runtime import configure_grpc_runtime

configure_grpc_runtime()  # before any subcommand imports grpc: `aisle serve` and `aisle demo` run the services' gRPC

import importlib  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from services.core.settings import ServiceSettings  # noqa: E402

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


def _register_lazy_commands() -> None:
    """Commands owned by other packages; their modules import heavy dependencies (torch) only when run."""
    from services.ranking.models_cli import models
    from services.retrieval.index_cli import index
    from training.cli import evaluate, refresh_features, train

    main.add_command(train)
    main.add_command(evaluate)
    main.add_command(refresh_features)
    main.add_command(models)
    main.add_command(index)


_register_lazy_commands()


if __name__ == "__main__":
    main()
