"""``aisle demo --workdir``: the demo deletes only what it made, and says in one line what is wrong with a workdir.

Training is replaced by a stand-in that records what the workdir held when training began, so these run in
seconds; tests/e2e/test_demo.py runs the real thing."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from services.cli import main
from services.demo import run

PROJECT_ROOT = Path(__file__).resolve().parents[2]


class TrainingStarted(Exception):
    pass


@pytest.fixture
def training(monkeypatch) -> list[set[str]]:
    """Replaces the demo's training; each call records the workdir's files and stops the demo there."""
    import training.pipeline

    calls: list[set[str]] = []

    def fake_train_synthetic(workdir: Path, repository: Path, **_) -> None:
        calls.append({str(p.relative_to(workdir)) for p in workdir.rglob("*")})
        raise TrainingStarted

    monkeypatch.setattr(training.pipeline, "train_synthetic", fake_train_synthetic)
    return calls


def demo(*args: str):
    return CliRunner().invoke(main, ["demo", *args])


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(result) -> str:
    """The demo's refusals: exit code 1, one ``Error:`` line and no traceback."""
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    return lines[0]


def test_a_copy_of_the_project_root_is_refused_untouched(tmp_path, training):
    """`aisle demo --workdir .` in the project root used to delete the tracked model_repository/."""
    shutil.copytree(PROJECT_ROOT / "model_repository", tmp_path / "model_repository")
    (tmp_path / "README.md").write_text("the project\n")
    (tmp_path / "index" / "v1").mkdir(parents=True)
    (tmp_path / "index" / "v1" / "metadata.json").write_text("{}")
    before = snapshot(tmp_path)

    message = one_line_error(demo("--workdir", str(tmp_path)))

    assert "not made by `aisle demo`" in message and "new or empty folder" in message
    assert snapshot(tmp_path) == before and not training


def test_a_training_output_folder_keeps_its_index_versions(tmp_path, training):
    """`--workdir` pointed at `aisle train --out`: its trained index versions used to be deleted."""
    out = tmp_path / "trained"
    (out / "index" / "20261205T210455626813Z").mkdir(parents=True)
    (out / "index" / "20261205T210455626813Z" / "metadata.json").write_text("{}")
    (out / "catalog.json").write_text("{}")
    (out / "training_run.json").write_text("{}")
    before = snapshot(out)

    for reuse in ([], ["--reuse"]):
        one_line_error(demo("--workdir", str(out), *reuse))

    assert snapshot(out) == before and not training


def test_a_file_as_workdir_is_a_one_line_error(tmp_path, training):
    afile = tmp_path / "afile"
    afile.write_text("x\n")

    message = one_line_error(demo("--workdir", str(afile)))

    assert "is a file" in message and afile.read_text() == "x\n" and not training
    # A folder under a file: mkdir raised NotADirectoryError deep in training, a traceback.
    message = one_line_error(demo("--workdir", str(afile / "demo")))
    assert f"runs through {afile}, which is a file" in message and not training


def test_reuse_without_a_catalog_names_what_is_missing_and_the_fix(tmp_path, training):
    workdir = tmp_path / "demo"
    (workdir / "model_repository" / "ranker" / "1").mkdir(parents=True)
    (workdir / "model_repository" / "ranker" / "1" / "model.onnx").write_bytes(b"onnx")
    (workdir / "index" / "v1").mkdir(parents=True)
    (workdir / "index" / "v1" / "metadata.json").write_text("{}")
    (workdir / run.MARKER).write_text("made by aisle demo\n")
    before = snapshot(workdir)

    message = one_line_error(demo("--workdir", str(workdir), "--reuse"))

    assert "catalog.json" in message and "without --reuse" in message
    assert snapshot(workdir) == before and not training


def test_a_new_folder_is_claimed_before_training(tmp_path, training):
    workdir = tmp_path / "new" / "demo"

    with pytest.raises(TrainingStarted):
        run.run_demo(workdir)

    assert training == [
        {run.MARKER, "model_repository", "model_repository/ranker", "model_repository/ranker/config.pbtxt"}
    ]


def test_an_empty_folder_is_claimed_and_reuse_with_nothing_to_reuse_trains(tmp_path, training):
    with pytest.raises(TrainingStarted):
        run.run_demo(tmp_path, retrain=False)

    assert run.MARKER in training[0] and (tmp_path / run.MARKER).is_file()


def test_a_previous_demo_workdir_is_cleared_and_trained_again(tmp_path, training):
    """Only the demo's own workdir (its marker there) has its model repository and index replaced."""
    (tmp_path / run.MARKER).write_text("made by aisle demo\n")
    (tmp_path / "model_repository" / "ranker" / "1").mkdir(parents=True)
    (tmp_path / "model_repository" / "ranker" / "1" / "model.onnx").write_bytes(b"old")
    (tmp_path / "index" / "old").mkdir(parents=True)
    (tmp_path / "catalog.json").write_text("{}")

    with pytest.raises(TrainingStarted):
        run.run_demo(tmp_path)

    assert "model_repository/ranker/1/model.onnx" not in training[0] and "index/old" not in training[0]
    assert run.MARKER in training[0]
