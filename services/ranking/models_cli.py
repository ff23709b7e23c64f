"""``aisle models``: the model repository workflow for ML engineers (validate, publish, roll back).

Imported by ``services/cli.py`` for every ``aisle`` call: keep imports light at module level.
Exit codes: 0 done, 1 refused (the message says why; nothing changed), 2 usage error.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import click

_TRITON_HELP = (
    "Triton gRPC address (host:port) to tell to load the change (explicit model control); repeat for each server. "
    "Embedded servers pick changes up with their repository watch (AISLE_RANKING_WATCH_INTERVAL_S)."
)


@click.group()
def models() -> None:
    """Validate, publish and roll back ranking model versions in a Triton-layout model repository."""


@models.command()
@click.argument("path", type=click.Path(path_type=Path))
def validate(path: Path) -> None:
    """Check PATH (a repository, a model folder or one version folder) before anything serves it.

    Layout (numbered versions), configs (config.pbtxt and configs/*.pbtxt parse as Triton ModelConfig and declare
    the same tensors), and per version: files, onnx.checker, graph against config, sample-input probabilities,
    batch/padding parity and, when present, parity_sample.npz.
    """
    from services.ranking.repository import validate_path

    report = validate_path(path)
    for line in report.checked:
        click.echo(f"ok      {line}")
    for line in report.notes:
        click.echo(f"note    {line}")
    for line in report.problems:
        click.echo(f"FAILED  {line}", err=True)
    if not report.ok:
        click.echo(f"{len(report.problems)} problem(s): nothing under {path} may be served as it is", err=True)
        sys.exit(1)
    click.echo(f"{path}: valid")


def _model_dir(repository: Path, model: str | None) -> Path:
    """The model folder: ``--model``, or the repository's only one; a usage error naming the folders there."""
    folders = (
        sorted(p.name for p in repository.iterdir() if (p / "config.pbtxt").is_file()) if repository.is_dir() else []
    )
    if not folders:
        raise click.UsageError(
            f"{repository} holds no model folder (one with a config.pbtxt): is --repository the model repository?"
        )
    if model is None:
        if len(folders) > 1:
            raise click.UsageError(f"{repository} holds the models {', '.join(folders)}: pass --model")
        model = folders[0]
    if model not in folders:
        raise click.UsageError(f"{repository} holds no model {model!r} (it holds {', '.join(folders)}): pass --model")
    return repository / model


@models.command()
@click.argument("source", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True)
@click.option(
    "--model",
    default=None,
    help="Model folder in the repository [default: the only one; required when there are more].",
)
@click.option(
    "--version",
    type=click.IntRange(min=1),
    default=None,
    help="Version number (default: the next one); one given must never have been used (retired ones included) and "
    "must be above the newest.",
)
@click.option("--triton", "triton_targets", multiple=True, metavar="HOST:PORT", help=_TRITON_HELP)
def publish(
    source: Path, repository: Path, model: str | None, version: int | None, triton_targets: tuple[str, ...]
) -> None:
    """Add SOURCE (a folder with model.onnx, item_vocabulary.txt, ...) as a new version.

    Copied into a hidden staging folder, validated there, renamed into place (atomic), then loaded by the given
    Triton servers. A version that fails validation is never renamed in; one a Triton server cannot load is
    retired again, so the previous version keeps serving.
    """
    model_dir = _model_dir(repository, model)
    with _writing(model_dir, f"aisle models publish {source}"):
        _publish(source, model_dir, model_dir.name, version, triton_targets)


@contextlib.contextmanager
def _writing(model_dir: Path, who: str) -> Iterator[None]:
    """The model folder's writer lock (:func:`services.ranking.repository.one_writer`), or exit 1 saying why it
    cannot be taken (a read-only repository, say)."""
    from services.ranking.repository import one_writer

    held = contextlib.ExitStack()
    try:
        held.enter_context(one_writer(model_dir, who, lambda message: click.echo(message, err=True)))
    except OSError as error:
        click.echo(f"refused: cannot lock {model_dir} for writing: {error}", err=True)
        sys.exit(1)
    with held:
        yield


def _publish(source: Path, model_dir: Path, model: str, version: int | None, triton_targets: tuple[str, ...]) -> None:
    from services.ranking.model_config import ModelConfigError
    from services.ranking.repository import publish as publish_version
    from services.ranking.repository import retire, tell_triton

    try:
        published = publish_version(source, model_dir, version)
    except (ModelConfigError, OSError) as error:
        click.echo(f"refused: {error}", err=True)
        sys.exit(1)
    for line in published.checked:
        click.echo(f"ok      {line}")
    click.echo(f"published {model} version {published.version} at {published.folder}")
    problems = tell_triton(triton_targets, model, published.version)
    if problems:
        retired = retire(model_dir, published.version)
        for line in problems:
            click.echo(f"FAILED  {line}", err=True)
        click.echo(f"version {published.version} retired to {retired}; reloading the previous version", err=True)
        previous = _newest(model_dir)
        for line in tell_triton(triton_targets, model, previous) if previous else []:
            click.echo(f"FAILED  {line}", err=True)
        sys.exit(1)
    for target in triton_targets:
        click.echo(f"Triton at {target} serves version {published.version}")


@models.command()
@click.option("--repository", type=click.Path(path_type=Path), default=Path("model_repository"), show_default=True)
@click.option(
    "--model",
    default=None,
    help="Model folder in the repository [default: the only one; required when there are more].",
)
@click.option("--to", "to", type=click.IntRange(min=1), default=None, help="Version to serve (default: the previous).")
@click.option("--triton", "triton_targets", multiple=True, metavar="HOST:PORT", help=_TRITON_HELP)
def rollback(repository: Path, model: str | None, to: int | None, triton_targets: tuple[str, ...]) -> None:
    """Serve an earlier version again: newer versions are retired (kept on disk as .retired-*), never deleted.

    Triton loads what the model folder holds, so the versions are retired first and the servers told then; when a
    server cannot load the earlier version, the retired versions are put back and the servers reloaded, so the
    repository and Triton both keep serving what they served before.
    """
    model_dir = _model_dir(repository, model)
    with _writing(model_dir, "aisle models rollback"):
        _rollback(model_dir, model_dir.name, to, triton_targets)


def _rollback(model_dir: Path, model: str, to: int | None, triton_targets: tuple[str, ...]) -> None:
    from services.ranking.model_config import ModelConfigError
    from services.ranking.repository import rollback as roll_back
    from services.ranking.repository import tell_triton, undo

    try:
        rolled = roll_back(model_dir, to)
    except (ModelConfigError, OSError) as error:
        click.echo(f"refused: {error}", err=True)
        sys.exit(1)
    problems = tell_triton(triton_targets, model, rolled.serving)
    if problems:
        for line in problems:
            click.echo(f"FAILED  {line}", err=True)
        newest = rolled.retired[-1]
        try:
            undo(model_dir, rolled)
        except OSError as error:
            click.echo(
                f"rollback failed and the retired versions could not be put back ({error}): move "
                f"{', '.join(str(folder) for folder in rolled.folders.values())} back by hand and rerun the rollback",
                err=True,
            )
            sys.exit(1)
        again = tell_triton(triton_targets, model, newest)
        for line in again:
            click.echo(f"FAILED  {line}", err=True)
        if again:
            click.echo(
                f"rollback undone on disk ({model} version {newest} is the newest again), but the Triton servers above "
                f"did not reload it: load {model!r} on them again (Triton's repository load API) once they answer",
                err=True,
            )
        else:
            click.echo(
                f"rollback undone: Triton could not serve version {rolled.serving}; {model} version {newest} "
                "serves as before",
                err=True,
            )
        sys.exit(1)
    click.echo(f"retired {', '.join(map(str, rolled.retired))}; {model} version {rolled.serving} is now the newest")
    for target in triton_targets:
        click.echo(f"Triton at {target} serves version {rolled.serving}")


def _newest(model_dir: Path) -> int:
    from services.ranking.model_config import model_versions

    versions = model_versions(model_dir)
    return versions[-1] if versions else 0
