"""``aisle models validate / publish / rollback`` on real exported models."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from services.cli import main
from services.core.paths import current_umask
from services.ranking.backends.onnxruntime import OnnxRuntimeBackend, check_batch_parity
from services.ranking.model_config import (
    CONFIG_FILE,
    VOCABULARY_FILE,
    ModelConfigError,
    model_versions,
    read_model_config,
)
from services.ranking.repository import LOCK_FILE, PARITY_SAMPLE_FILE, one_writer, sample_parity
from services.ranking.served_model import ServedModel
from tests.integration.ranking.breakers import poison_weights, rename_input, truncate
from tests.integration.ranking.conftest import FEATURES, copy_model_repository
from tests.integration.ranking.tiny_models import ITEMS, add_version, tiny_repository


def aisle(*args: str):
    return CliRunner().invoke(main, ["models", *map(str, args)])


@pytest.fixture
def repository(feature_model, tmp_path):
    return copy_model_repository(feature_model.repository, tmp_path / "repo")


def test_a_good_repository_validates(repository):
    result = aisle("validate", repository)
    assert result.exit_code == 0, result.output
    assert "configs/local.pbtxt: parses, same tensors as config.pbtxt" in result.output
    assert "onnx.checker passed" in result.output and "parity_sample.npz: ONNX Runtime matches" in result.output
    assert "batched and padded rows match rows alone" in result.output
    assert aisle("validate", repository / "ranker" / "1").exit_code == 0


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (rename_input, "graph inputs ['candidate_features', 'candidate_item_ids', 'history'] differ"),
        (poison_weights, "sample-input purchase scores are not probabilities in [0, 1]"),
        (truncate, "onnx.checker refuses it"),
        (lambda path: (path.parent / "item_features.npz").unlink(), "has no item_features.npz"),
        (
            # Cut short, as an interrupted copy leaves it: numpy raises zipfile.BadZipFile.
            lambda path: (path.parent / "item_features.npz").write_bytes(
                (path.parent / "item_features.npz").read_bytes()[:300]
            ),
            "item_features.npz: not a readable item feature snapshot",
        ),
        (lambda path: (path.parent / "item_vocabulary.txt").unlink(), "missing item_vocabulary.txt"),
    ],
    ids=[
        "wrong-input-name",
        "nan-output",
        "corrupt-file",
        "no-feature-snapshot",
        "cut-feature-snapshot",
        "no-vocabulary",
    ],
)
def test_a_broken_version_is_refused_with_a_specific_message(repository, breaker, message):
    breaker(repository / "ranker" / "1" / "model.onnx")
    result = aisle("validate", repository)
    assert result.exit_code == 1
    assert message in result.output, result.output


@pytest.mark.parametrize(
    ("breaker", "message"),
    [
        (lambda model: (model / "v2").mkdir(), "not a version folder"),
        (lambda model: (model / "01").mkdir(), "not a version folder"),
        (lambda model: (model / "notes.txt").write_text("x"), "unexpected file"),
        (
            lambda model: (model / "configs" / "local.pbtxt").write_text(
                (model / "configs" / "local.pbtxt").read_text().replace(f"dims: [ -1, {FEATURES} ]", "dims: [ -1, 6 ]")
            ),
            f"configs/local.pbtxt: 'candidate_features' must end in {FEATURES} features",
        ),
        (
            lambda model: (model / "config.pbtxt").write_text(
                (model / "config.pbtxt").read_text().replace("return_probability", "return_prob")
            ),
            "inputs/outputs/max_batch_size differ from config.pbtxt",
        ),
        (lambda model: (model / "config.pbtxt").write_text("name: 'ranker'\nbogus: 1\n"), "not a valid Triton model"),
        (
            lambda model: (model / "config.pbtxt").write_text(
                (model / "config.pbtxt").read_text().replace('name: "ranker"', 'name: "other"')
            ),
            "differs from its folder",
        ),
    ],
    ids=["named-folder", "leading-zero", "stray-file", "local-config-shape", "configs-differ", "unparsable", "name"],
)
def test_layout_and_config_problems_are_named(repository, breaker, message):
    breaker(repository / "ranker")
    result = aisle("validate", repository)
    assert result.exit_code == 1
    assert message in result.output, result.output


def test_publish_validates_then_renames_into_place_and_rollback_retires(repository, tmp_path):
    model_dir = repository / "ranker"
    source = tmp_path / "new-version"
    shutil.copytree(model_dir / "1", source)

    result = aisle("publish", source, "--repository", repository)
    assert result.exit_code == 0, result.output
    assert "published ranker version 2" in result.output and model_versions(model_dir) == [1, 2]
    # As readable as a plain mkdir makes it (its staging folder was mkdtemp's 0700): the server may be another user.
    assert stat.S_IMODE((model_dir / "2").stat().st_mode) == 0o777 & ~current_umask()

    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    poison_weights(broken / "model.onnx")
    result = aisle("publish", broken, "--repository", repository)
    assert result.exit_code == 1 and "refused:" in result.output and "not probabilities" in result.output
    assert model_versions(model_dir) == [1, 2]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".staging-")]

    result = aisle("rollback", "--repository", repository)
    assert result.exit_code == 0, result.output
    assert model_versions(model_dir) == [1]
    assert [p.name.split("-")[:2] for p in model_dir.iterdir() if p.name.startswith(".retired-")] == [[".retired", "2"]]
    # Version numbers are never reused: the next publish is 3, and a taken number is refused.
    assert "published ranker version 3" in aisle("publish", source, "--repository", repository).output
    result = aisle("publish", source, "--repository", repository, "--version", "3")
    assert result.exit_code == 1 and "immutable" in result.output
    assert aisle("rollback", "--repository", repository, "--to", "9").exit_code == 1
    assert aisle("validate", repository).exit_code == 0


def test_a_refused_publish_names_the_source_and_the_model_the_export_was_made_for(repository, tmp_path):
    """The message named the hidden staging folder, already deleted; and `aisle train` exports sequence_ranker
    while --model defaults to ranker, whose contract such an export does not meet."""
    source = tmp_path / "export"
    shutil.copytree(repository / "ranker" / "1", source)
    rename_input(source / "model.onnx")
    (source / "metadata.json").write_text('{"model": "sequence_ranker"}')
    result = aisle("publish", source, "--repository", repository)
    assert result.exit_code == 1 and f"refused: {source / 'model.onnx'}: graph inputs" in result.output, result.output
    assert ".staging-" not in result.output
    assert "the export was made for the model 'sequence_ranker': publish it with --model sequence_ranker" in (
        result.output
    )


def test_validate_reports_each_broken_version_and_goes_on(tmp_path):
    large = 1000  # the vocabulary's last token is often missed by a random sample input
    repository = tiny_repository(
        tmp_path,
        {
            1: {"items": large, "candidate_rows": large},
            2: {"items": large, "history_rows": large},
            3: {},
            4: {"softmax": True},
            5: {},
        },
    )
    model_dir = repository / "ranker"
    (model_dir / "3" / VOCABULARY_FILE).write_text("")
    # A parity sample naming a token past the model's table: ONNX Runtime fails on it.
    np.savez(
        model_dir / "5" / PARITY_SAMPLE_FILE,
        history_item_ids=np.zeros((1, 50), dtype=np.int64),
        candidate_item_ids=np.array([[1, ITEMS + 7]], dtype=np.int64),
        purchase_probability=np.zeros((1, 2), dtype=np.float32),
    )
    add_version(model_dir, 6)
    result = aisle("validate", repository)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 5, result.output
    for version, message in [
        (1, "inference on sample input failed"),
        (2, "inference on sample input failed"),
        (3, f"{VOCABULARY_FILE}: no items"),
        (4, "when other candidates share its row or batch"),
        (5, f"{PARITY_SAMPLE_FILE}: ONNX Runtime failed on the sample input"),
    ]:
        assert any(f"ranker/{version}" in line and message in line for line in failed), (version, result.output)
    assert f"ok      {model_dir / '6'}: onnx.checker passed" in result.output


async def test_unreadable_metadata_and_a_truncated_parity_sample_are_refusals_not_crashes(tmp_path, monkeypatch):
    """A hand-edited metadata.json saved as Latin-1 raised UnicodeDecodeError past every refusal handler: start-up
    failed instead of serving the version before, and validate stopped with a traceback; a truncated parity sample
    (BadZipFile) ended validate with no output."""
    repository = tiny_repository(tmp_path, {1: {}, 2: {}, 3: {}, 4: {}})
    model_dir = repository / "ranker"
    (model_dir / "3" / "metadata.json").write_bytes('{"note": "modèle"}'.encode("latin-1"))
    (model_dir / "4" / PARITY_SAMPLE_FILE).write_bytes(b"")  # an empty copy: np.load raises EOFError
    np.savez(
        model_dir / "2" / PARITY_SAMPLE_FILE,
        history_item_ids=np.zeros((1, 50), dtype=np.int64),
        candidate_item_ids=np.ones((1, 4), dtype=np.int64),
        purchase_probability=np.zeros((1, 4), dtype=np.float32),
    )
    sample = model_dir / "2" / PARITY_SAMPLE_FILE
    sample.write_bytes(sample.read_bytes()[:200])  # a copy cut short
    result = aisle("validate", repository)
    failed = [line for line in result.output.splitlines() if line.startswith("FAILED")]
    assert result.exit_code == 1 and len(failed) == 3, result.output
    assert any("ranker/3" in line and "metadata.json: not UTF-8" in line for line in failed), result.output
    for version in (2, 4):
        assert any(f"ranker/{version}" in line and f"{PARITY_SAMPLE_FILE}: cannot read" in line for line in failed)
    assert f"ok      {model_dir / '1'}: onnx.checker passed" in result.output
    shutil.rmtree(model_dir / "4")  # the load reads no parity sample: 4 would serve
    backend = OnnxRuntimeBackend(repository, "ranker")
    await backend.load()  # the newest, 3, is refused; the one before it serves
    assert backend.model_version == "2"
    monkeypatch.chdir(model_dir / "1")  # `aisle models validate .` in a version folder, then in the model's
    assert aisle("validate", ".").exit_code == 0
    monkeypatch.chdir(model_dir)
    result = aisle("validate", ".")
    assert "name 'ranker' differs from its folder" not in result.output and "ranker/3" in result.output


def test_publish_refuses_a_vocabulary_larger_than_the_item_table(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}})
    source = add_version(tmp_path, 9, items=1000, candidate_rows=1000)
    result = aisle("publish", source, "--repository", repository)
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert "refused:" in result.output and "inference on sample input failed" in result.output
    assert model_versions(repository / "ranker") == [1]
    assert not [p for p in (repository / "ranker").iterdir() if p.name.startswith(".staging-")]


class FailsBatched:
    """An ONNX Runtime session that fails on more than one row (a graph exported with a fixed batch of one)."""

    def __init__(self, session):
        self.session = session

    def run(self, names, tensors):
        if len(next(iter(tensors.values()))) > 1:
            raise RuntimeError("[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Got invalid dimensions for input")
        return self.session.run(names, tensors)


def test_a_parity_run_that_fails_is_a_model_config_error(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}})
    model_dir = repository / "ranker"
    contract = read_model_config(model_dir / CONFIG_FILE)
    model = ServedModel.read("ranker", "1", model_dir / "1", contract)
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    check_batch_parity(model_dir / "1", session, model)
    with pytest.raises(ModelConfigError, match="batch/padding parity run failed: .*invalid dimensions"):
        check_batch_parity(model_dir / "1", FailsBatched(session), model)


def test_a_version_that_scores_nan_without_history_is_refused_by_every_check(tmp_path):
    repository = tiny_repository(tmp_path, {1: {"nan_without_history": True}})
    result = aisle("validate", repository)
    assert result.exit_code == 1 and "sample-input purchase scores are not probabilities" in result.output
    source = add_version(tmp_path, 2, nan_without_history=True)
    assert "not probabilities" in aisle("publish", source, "--repository", repository).output
    assert model_versions(repository / "ranker") == [1]
    # Each parity check on its own: a NaN must not vanish into max() as "max diff 0.0".
    model_dir = repository / "ranker"
    model = ServedModel.read("ranker", "1", model_dir / "1", read_model_config(model_dir / CONFIG_FILE))
    session = ort.InferenceSession(str(model_dir / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    with pytest.raises(ModelConfigError, match="batch/padding parity run gives scores that are not finite"):
        check_batch_parity(model_dir / "1", session, model)
    history = np.zeros((1, 50), dtype=np.int64)
    np.savez(
        model_dir / "1" / PARITY_SAMPLE_FILE,
        history_item_ids=history,
        candidate_item_ids=np.array([[1, 2]], dtype=np.int64),
        purchase_probability=np.full((1, 2), 0.5, dtype=np.float32),
    )
    with pytest.raises(ModelConfigError, match="not finite"):
        sample_parity(session, model.contract, model_dir / "1" / PARITY_SAMPLE_FILE)


def refusal(result) -> str:
    """The one line a refused command wrote (and checks it is one line)."""
    lines = result.output.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1 and lines[0].startswith("refused: "), result.output
    return lines[0]


def test_publish_refuses_a_version_number_used_before_or_below_the_newest(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}, 2: {}})
    model_dir = repository / "ranker"
    source = add_version(tmp_path, 9)
    assert "published ranker version 3" in aisle("publish", source, "--repository", repository).output
    assert aisle("rollback", "--repository", repository).exit_code == 0  # 3 retired
    # A retired number: a Triton-backed pod that last saw the old 3 would send its tokens to the new 3's weights.
    line = refusal(aisle("publish", source, "--repository", repository, "--version", 3))
    assert "version 3 was used before" in line and line.endswith("omit --version to publish as version 4")
    (model_dir / ".staging-4-abc").mkdir()  # a publish of 4 in progress (or interrupted)
    line = refusal(aisle("publish", source, "--repository", repository, "--version", 4))
    assert "version 4 was used before" in line and line.endswith("omit --version to publish as version 5")
    line = refusal(aisle("publish", source, "--repository", repository, "--version", 2))
    assert "already exists; versions are immutable" in line
    assert model_versions(model_dir) == [1, 2]
    # A new number above the newest is taken as given; one below the newest would never be served.
    result = aisle("publish", source, "--repository", repository, "--version", 7)
    assert result.exit_code == 0 and "published ranker version 7" in result.output, result.output
    line = refusal(aisle("publish", source, "--repository", repository, "--version", 6))
    assert "version 6 is below the newest version 7" in line and line.endswith("publish as version 8")
    assert model_versions(model_dir) == [1, 2, 7]
    assert [p.name for p in model_dir.iterdir() if p.name.startswith(".staging-")] == [".staging-4-abc"]


HOLDER = """
import sys, time
from pathlib import Path
from services.ranking.repository import one_writer

model_dir, released = Path(sys.argv[1]), Path(sys.argv[2])
with one_writer(model_dir, "aisle models rollback"):
    print("held", flush=True)
    time.sleep(1.0)
    released.write_text("released")
"""


def test_one_writer_at_a_time_a_publish_waits_for_a_rollback_in_progress(tmp_path):
    """A rollback lists the versions, validates its target (seconds), then retires the newer ones: a publish in
    between was left serving while the rollback said the target did. Publish, rollback and a training run's export
    hold the model folder's writer lock: the publish waits, then publishes above what the rollback left."""
    import subprocess
    import sys

    repository = tiny_repository(tmp_path, {1: {}, 2: {}})
    model_dir = repository / "ranker"
    released = tmp_path / "released"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(model_dir), str(released)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = aisle("publish", add_version(tmp_path, 9), "--repository", repository)
        # It could not publish while the other writer held the folder, and said whom it waited for.
        assert released.is_file()
        assert result.exit_code == 0 and "published ranker version 3" in result.output, result.output
        assert f"waiting for aisle models rollback (pid {holder.pid}) to finish with it" in result.output
    finally:
        holder.wait(timeout=10)
    assert model_versions(model_dir) == [1, 2, 3]


def test_a_lock_file_another_user_made_is_locked_read_only_and_an_unlockable_folder_is_refused(tmp_path, monkeypatch):
    """The first writer made the lock file 0644: another user who may write the folder could no longer publish
    (the lock was opened for writing), and a repository nobody may write gave a traceback, not "refused". (The
    other user is played by refusing the opens they would be refused: root passes every permission check.)"""
    import errno

    from services.ranking import repository as repo_module

    repository = tiny_repository(tmp_path, {1: {}, 2: {}})
    model_dir = repository / "ranker"
    with one_writer(model_dir, "the first user's publish"):
        pass
    real_open = os.open

    def as_another_user(path, flags, *mode):
        if Path(path).name == LOCK_FILE and flags & (os.O_RDWR | os.O_WRONLY):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *mode)

    monkeypatch.setattr(repo_module.os, "open", as_another_user)
    result = aisle("rollback", "--repository", repository)
    assert result.exit_code == 0 and model_versions(model_dir) == [1], result.output

    def read_only_file_system(path, flags, *mode):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(repo_module.os, "open", read_only_file_system)
    result = aisle("rollback", "--repository", repository)
    assert result.exit_code == 1 and "refused: cannot lock" in result.output and "Read-only" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_training_export_keeps_its_number_until_it_publishes(tmp_path):
    """`aisle train` picked its number early and exported under it much later: a publish (and a rollback) in
    between took the number, and the export reused a retired number or failed. The number is picked under the
    writer lock, held until the ranker is published, and an export refuses a number used before."""
    from training.export import ExportError, export_ranker, published_together

    repository = tiny_repository(tmp_path, {1: {}})
    model_dir = repository / "ranker"
    with published_together(model_dir) as publication:
        assert publication.version == 2
        assert (model_dir / ".writer.lock").read_text().startswith("aisle train (exporting)")
    (model_dir / ".retired-5-1").mkdir()
    with pytest.raises(ExportError, match="version 5 was used before"):
        export_ranker(None, model_dir, ["i1"], {}, version=5)


def test_a_version_published_without_metadata_gets_one_the_artefact_sync_counts_it_complete_by(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}})
    source = add_version(tmp_path, 9)
    (source / "metadata.json").unlink(missing_ok=True)
    assert aisle("publish", source, "--repository", repository).exit_code == 0
    metadata = json.loads((repository / "ranker" / "2" / "metadata.json").read_text())
    assert metadata == {"model": "ranker", "version": 2, "published_from": str(source.resolve())}


def test_which_model_folder_publish_and_rollback_act_on_is_said_not_guessed(tmp_path):
    """`--model` defaulted to `ranker` where `aisle train` writes `sequence_ranker`: in a repository holding both, a
    rollback rolled back the skeleton and said it had; in one holding only the other, the refusal blamed
    --repository. The only model folder is the default; with more, --model is required, and a wrong one is named."""
    repository = tiny_repository(tmp_path, {1: {}, 2: {}})
    assert aisle("rollback", "--repository", repository).exit_code == 0  # the only model: ranker
    shutil.copytree(repository / "ranker", repository / "sequence_ranker")
    result = aisle("rollback", "--repository", repository)
    assert result.exit_code == 2 and "holds the models ranker, sequence_ranker: pass --model" in result.output
    result = aisle("rollback", "--repository", repository, "--model", "two_tower")
    assert result.exit_code == 2 and "holds no model 'two_tower' (it holds ranker, sequence_ranker)" in result.output
    assert model_versions(repository / "sequence_ranker") == [1]  # copied after the first rollback
    result = aisle("publish", add_version(tmp_path, 9), "--repository", repository, "--model", "sequence_ranker")
    assert result.exit_code == 0 and "published sequence_ranker version 3" in result.output, result.output


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_rollback_triton_cannot_load_is_undone(tmp_path):
    repository = tiny_repository(tmp_path, {1: {}, 2: {}, 3: {}})
    model_dir = repository / "ranker"
    target = f"127.0.0.1:{closed_port()}"
    result = aisle("rollback", "--repository", repository, "--to", 1, "--triton", target)
    assert result.exit_code == 1, result.output
    assert model_versions(model_dir) == [1, 2, 3]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".retired-")]
    lines = result.output.strip().splitlines()
    assert lines[0].startswith(f"FAILED  Triton at {target} could not load 'ranker'"), result.output
    assert lines[-1].startswith("rollback undone on disk (ranker version 3 is the newest again), but the Triton")
    assert "retired" not in result.output


def test_a_rollback_undone_tells_triton_to_serve_the_newest_again(tmp_path, monkeypatch):
    repository = tiny_repository(tmp_path, {1: {}, 2: {}, 3: {}})
    told: list[int] = []

    def tell_triton(targets, model, version):
        told.append(version)
        return ["Triton at t:1 could not load 'ranker': out of memory"] if version == 1 else []

    monkeypatch.setattr("services.ranking.repository.tell_triton", tell_triton)
    result = aisle("rollback", "--repository", repository, "--to", 1, "--triton", "t:1")
    assert result.exit_code == 1 and told == [1, 3], result.output
    assert model_versions(repository / "ranker") == [1, 2, 3]
    assert result.output.strip().splitlines()[-1] == (
        "rollback undone: Triton could not serve version 1; ranker version 3 serves as before"
    )


def test_a_rollback_that_cannot_retire_every_version_retires_none(tmp_path, monkeypatch):
    repository = tiny_repository(tmp_path, {1: {}, 2: {}, 3: {}})
    model_dir = repository / "ranker"
    real_rename = os.rename

    def rename(source, target):
        if Path(source) == model_dir / "2":
            raise PermissionError(13, "Permission denied", str(source))
        real_rename(source, target)

    monkeypatch.setattr("services.ranking.repository.os.rename", rename)
    line = refusal(aisle("rollback", "--repository", repository, "--to", 1))
    assert "Permission denied" in line
    assert model_versions(model_dir) == [1, 2, 3]
    assert not [p for p in model_dir.iterdir() if p.name.startswith(".retired-")]


def test_a_rollback_and_its_undo_never_make_a_version_in_between_the_newest(tmp_path, monkeypatch):
    """A pod watching the repository loads whatever is newest when it looks: rolling 4 back to 1 must go 4 -> 1,
    and undoing it 1 -> 4, never through 3 or 2."""
    repository = tiny_repository(tmp_path, {1: {}, 2: {}, 3: {}, 4: {}})
    model_dir = repository / "ranker"
    newest_seen: list[int] = []
    real_rename = os.rename

    def rename(source, target):
        real_rename(source, target)
        newest_seen.append(model_versions(model_dir)[-1])

    monkeypatch.setattr("services.ranking.repository.os.rename", rename)
    monkeypatch.setattr("services.ranking.repository.tell_triton", lambda targets, model, version: ["down"])
    result = aisle("rollback", "--repository", repository, "--to", 1, "--triton", "t:1")
    assert result.exit_code == 1 and model_versions(model_dir) == [1, 2, 3, 4], result.output
    assert newest_seen == [4, 4, 1, 4, 4, 4], newest_seen


def test_triton_load_that_cannot_say_whether_the_version_is_ready_is_a_load_error(monkeypatch):
    from tritonclient.utils import InferenceServerException

    from services.ranking.repository import TritonLoadError, triton_load

    class Client:
        def __init__(self, url):
            pass

        def load_model(self, name, client_timeout=None):
            pass

        def is_model_ready(self, name, version, client_timeout=None):
            raise InferenceServerException("Deadline Exceeded")

        def close(self):
            pass

    monkeypatch.setattr("tritonclient.grpc.InferenceServerClient", Client)
    with pytest.raises(TritonLoadError, match="did not say whether 'ranker' version 3 is ready: Deadline Exceeded"):
        triton_load("t:1", "ranker", 3)
