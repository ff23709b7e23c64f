"""Training commands of the ``aisle`` CLI: ``aisle train``, ``aisle evaluate`` and ``aisle refresh-features``.

Imported by ``services/cli.py`` for every ``aisle`` call, so this module imports torch and the training code only
inside the commands.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import click

_FORMATS = ("auto", "online-retail", "events", "sequences")


def _data_options(without_data: str):
    """--data, --format, --catalog, --strict: which shop data a command reads (:func:`_data_spec`);
    ``without_data`` says what happens when --data is not given."""
    options = [
        click.option(
            "--data",
            type=click.Path(path_type=Path, dir_okay=False),
            default=None,
            help="Shop data: Online Retail (.parquet/.csv), an events file in the documented schema (.parquet/.csv) "
            f"or plain-text sequences (.txt). {without_data}",
        ),
        click.option("--format", "data_format", type=click.Choice(_FORMATS), default="auto", show_default=True),
        click.option(
            "--catalog",
            type=click.Path(path_type=Path, dir_okay=False, exists=True),
            default=None,
            help="Item catalog (.parquet/.csv) for an events file.",
        ),
        click.option(
            "--strict", is_flag=True, help="Stop at the first malformed row instead of skipping and counting it."
        ),
    ]

    def decorate(function):
        for option in reversed(options):
            function = option(function)
        return function

    return decorate


def _data_spec(data: Path, data_format: str, catalog: Path | None, strict: bool) -> dict:
    if not data.is_file():
        raise click.BadParameter(f"{data}: no such file", param_hint="--data")
    spec = {"format": data_format, "path": str(data.resolve()), "strict": strict}
    if catalog:
        spec["catalog"] = str(catalog.resolve())
    return spec


@click.command()
@_data_options("Default: the seeded synthetic shop.")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("artifacts"),
    show_default=True,
    help="Folder for the retrieval index (out/index/<version>), the query tower, the catalog and the run record.",
)
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path),
    default=Path("model_repository"),
    show_default=True,
    help="Triton-layout repository; a new version folder is added to the model's folder.",
)
@click.option(
    "--model-name",
    default=None,
    help="Model folder in the repository [default: sequence_ranker; ranker with --skeleton].",
)
@click.option(
    "--skeleton",
    is_flag=True,
    help="Train the walking skeleton's tiny ranker on the synthetic shop instead (what `aisle demo` uses).",
)
@click.option(
    "--users", type=click.IntRange(10, 1_000_000), default=2000, show_default=True, help="Synthetic shop: customers."
)
@click.option(
    "--items", type=click.IntRange(20, 1_000_000), default=1000, show_default=True, help="Synthetic shop: catalog size."
)
@click.option("--epochs", type=click.IntRange(1, 100), default=None, help="Epochs for each model [default: per model].")
@click.option(
    "--dim", type=click.IntRange(8, 512), default=None, help="Embedding size [default: 64; 32 with --skeleton]."
)
@click.option("--threads", type=click.IntRange(1, 64), default=2, show_default=True, help="Torch CPU threads.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for data, sampling and weights.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
def train(
    data: Path | None,
    data_format: str,
    catalog: Path | None,
    strict: bool,
    out: Path,
    model_repository: Path,
    model_name: str | None,
    skeleton: bool,
    users: int,
    items: int,
    epochs: int | None,
    dim: int | None,
    threads: int,
    seed: int,
    progress: bool,
) -> None:
    """Train the two-tower retriever and the sequence ranker, export them (ONNX, index), record the run."""
    from services.core.logs import configure_logging

    configure_logging("INFO", "train")
    model_name = model_name or ("ranker" if skeleton else "sequence_ranker")
    config_path = model_repository / model_name / "config.pbtxt"
    if not config_path.is_file():
        raise click.UsageError(
            f"{config_path} not found: point --model-repository at a repository "
            "whose model folder has its config.pbtxt (the project's model_repository/ has one)"
        )
    import torch

    from training.data.schema import DataError
    from training.export import ExportError

    torch.set_num_threads(threads)
    if skeleton:
        given = click.get_current_context().get_parameter_source
        data_options = {"data": "--data", "data_format": "--format", "catalog": "--catalog", "strict": "--strict"}
        ignored = [flag for name, flag in data_options.items() if given(name) != click.core.ParameterSource.DEFAULT]
        if ignored:
            raise click.UsageError(
                f"--skeleton trains on the synthetic shop and reads no {', '.join(ignored)}: drop --skeleton to train "
                "the sequence ranker on that data, or drop those options"
            )
        try:
            _train_skeleton(out, model_repository, model_name, users, items, epochs or 3, seed, dim, progress)
        except (ExportError, OSError) as exc:
            raise click.ClickException(_one_line(exc)) from None
        return
    from training.fit import FitConfig
    from training.run import train_and_export

    dim = dim or 64
    if data is None:
        spec = {"format": "synthetic", "users": users, "items": items, "seed": seed}
    else:
        spec = _data_spec(data, data_format, catalog, strict)
    config = FitConfig(seed=seed, dim=dim, threads=threads)
    if epochs:
        config = FitConfig(seed=seed, dim=dim, threads=threads, tower_epochs=epochs, ranker_epochs=epochs)
    try:
        run = train_and_export(spec, out, model_repository, model_name, config, progress=progress)
    except DataError as exc:
        raise click.ClickException(str(exc)) from None
    except (ExportError, OSError) as exc:  # a contract mismatch, a full disk: one line, no traceback
        raise click.ClickException(_one_line(exc)) from None
    validation = run.fitted.validation
    click.echo(f"model version: {run.ranker_dir}")
    click.echo(f"index:         {run.index_dir}")
    click.echo(f"query tower:   {run.query_tower_dir}")
    click.echo(f"run record:    {run.run_file}")
    click.echo(
        "validation:    "
        + ", ".join(f"{k}={validation[k]:.4f}" for k in ("ndcg@10", "hr@10", "recall@100") if k in validation)
    )
    click.echo(f"next:          aisle evaluate --artifacts {out} --out {out / 'evaluation.json'}")


def _one_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _train_skeleton(
    out: Path,
    model_repository: Path,
    model_name: str,
    users: int,
    items: int,
    epochs: int,
    seed: int,
    dim: int | None,
    progress: bool,
):
    from training.pipeline import train_synthetic
    from training.train_tiny import TrainConfig

    config = TrainConfig(epochs=epochs, seed=seed, **({"dim": dim} if dim else {}))
    artifacts = train_synthetic(
        out, model_repository, model_name=model_name, users=users, items=items, config=config, progress=progress
    )
    metrics = artifacts.result.metrics
    click.echo(f"model version: {artifacts.model_version_dir}")
    click.echo(f"index:         {artifacts.index_dir}")
    click.echo(f"catalog:       {artifacts.catalog_path}")
    click.echo("hold-out:      " + ", ".join(f"{k}={v:.3f}" for k, v in metrics.items()))


@click.command()
@click.option(
    "--artifacts",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("artifacts"),
    show_default=True,
    help="The --out folder of `aisle train` (holds training_run.json).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path, dir_okay=False),
    default=None,
    help="JSON report; the Markdown report and PNG plots go beside it [default: ARTIFACTS/evaluation.json].",
)
@click.option(
    "--data",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="The training data, if it moved since training (its fingerprint must match).",
)
@click.option("--bootstrap", type=click.IntRange(100, 100_000), default=2000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the bootstrap.")
@click.option("--plots/--no-plots", default=True, show_default=True)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Progress bars.")
def evaluate(
    artifacts: Path, out: Path | None, data: Path | None, bootstrap: int, seed: int, plots: bool, progress: bool
) -> None:
    """Full-ranking offline evaluation of a training run's exported models against baselines (both protocols)."""
    from services.core.logs import configure_logging
    from training.data.schema import DataError
    from training.evaluation.report import PROTOCOLS, ArtifactError, evaluate_artifacts

    configure_logging("INFO", "evaluate")
    out = out or artifacts / "evaluation.json"
    if out.suffix.lower() == ".md":
        raise click.BadParameter(
            f"{out} is where the Markdown report would go beside it: name the JSON report (say "
            f"{out.with_suffix('.json')}), and the Markdown report is written beside it",
            param_hint="--out",
        )
    try:
        report = evaluate_artifacts(artifacts, out, data, bootstrap, seed, progress=progress, plots=plots)
    except (ArtifactError, DataError) as exc:
        raise click.ClickException(str(exc)) from None
    for protocol in PROTOCOLS:
        section = report["protocols"][protocol]
        click.echo(f"{protocol} ({section['users']} customers):")
        for name, metrics in section["models"].items():
            click.echo(
                f"  {name:<13} ndcg@10={metrics['ndcg@10']:.4f} hr@10={metrics['hr@10']:.4f} "
                f"recall@100={metrics['recall@100']:.4f} coverage={metrics['coverage']:.3f}"
            )
    click.echo(f"report: {out} and {out.with_suffix('.md')}")


@click.command("refresh-features")
@_data_options("Required: the shop's data up to today.")
@click.option(
    "--model-repository",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=Path("model_repository"),
    show_default=True,
)
@click.option("--model-name", default="sequence_ranker", show_default=True, help="Model folder in the repository.")
@click.option("--version", type=click.IntRange(min=1), default=None, help="Version to refresh [default: the newest].")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="New version folder to write (must not exist); publish it with `aisle models publish`.",
)
@click.option(
    "--index",
    "index_root",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    default=None,
    help="Also add a version with the data's recent sales (the trending source) to this exported index root "
    "(e.g. artifacts/index); the retrieval service picks it up like any new version.",
)
def refresh_features(
    data: Path | None,
    data_format: str,
    catalog: Path | None,
    strict: bool,
    model_repository: Path,
    model_name: str,
    version: int | None,
    out: Path,
    index_root: Path | None,
) -> None:
    """Rebuild a ranker version's item features (popularity, return rates, recent sales) from newer shop data.

    Writes OUT: the same model with a fresh item_features.npz. Recent sales age by the day, so run this daily
    (after the day's events are exported) and publish the folder; see model_repository/README.md.
    """
    from services.core.logs import configure_logging
    from services.ranking.model_config import ModelConfigError, resolve_version
    from training.data.loaders import load_dataset
    from training.data.schema import DataError
    from training.refresh import RefreshError, index_to_refresh, refresh_index, version_trending_days
    from training.refresh import refresh_features as refresh

    configure_logging("INFO", "refresh-features")
    if data is None:
        raise click.UsageError("--data is required: the shop's events up to today (the same formats as `aisle train`)")
    spec = _data_spec(data, data_format, catalog, strict)
    try:
        _, source = resolve_version(model_repository / model_name, str(version) if version else "")
        index = index_to_refresh(index_root) if index_root else None  # a wrong --index fails before OUT is written
        dataset = load_dataset(spec)
        refreshed = refresh(dataset, source, out)
        try:
            index_version = (
                refresh_index(dataset, index_root, version_trending_days(source), index) if index_root else None
            )
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)  # written just now: the corrected retry must not find it
            raise
    except (ModelConfigError, RefreshError, DataError) as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(_one_line(exc)) from None
    click.echo(f"refreshed:     {source} -> {refreshed.folder}")
    click.echo(
        f"items:         {refreshed.matched} matched, {refreshed.missing} no longer in the catalog; "
        f"recent sales up to {refreshed.newest_day}"
    )
    if index_version is not None:
        click.echo(
            f"index:         {index_version} (recent sales renewed; build shards from it with `aisle index build`)"
        )
    click.echo(f"next:          aisle models publish {out} --repository {model_repository} --model {model_name}")
