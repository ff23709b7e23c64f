"""The model repository workflow behind ``aisle models``: validate, publish, roll back.

- **validate** checks a repository, one model folder or one version folder: the layout (numbered version folders
  only), every config (``config.pbtxt`` and ``configs/*.pbtxt``, parsed as Triton's ``ModelConfig``, with the same
  tensors), and each version: its files (a vocabulary of at least one item, of the size ``metadata.json`` records),
  ``onnx.checker``, the graph against the config, a warm-up over the whole token range giving probabilities, and
  parity runs (batched and padded rows score as they do alone, which the micro-batcher relies on, and which the
  service checks again at load; and, when the version carries ``parity_sample.npz``, the training framework's
  outputs on its sample input). A version that fails is reported with its reason and the others are still checked.
- **publish** copies a version into a hidden staging folder beside the versions, validates it there, renames it
  into place (atomic: a server never sees half a version) and asks Triton servers to load it (explicit model
  control). Its number is the next one; one given by hand must be new and above the newest
  (:func:`check_new_version`). Embedded servers pick it up with their repository watch. A Triton that cannot load
  it gets the version retired again, so the previous version keeps serving.
- **rollback** retires versions newer than the target (renamed to ``.retired-<version>-<time>``, kept on disk,
  never reused) and asks Triton servers to reload; embedded servers follow with their watch. A Triton that cannot
  load the target gets the retired versions put back in place (:func:`undo`) and reloaded, so disk and Triton keep
  serving what they served before.

``onnx`` comes with the ``train`` extra; it is imported only here (never by the serving code).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from services.core.paths import staging_folder
from services.ranking.backends.onnxruntime import (
    BATCH_PARITY_TOLERANCE,
    check_batch_parity,
    check_graph,
    check_probabilities,
    largest_difference,
    run_session,
    warm_up_inputs,
)
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    CONFIG_FILE,
    CONFIGS_DIR,
    METADATA_FILE,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    VOCABULARY_FILE,
    ModelConfigError,
    ModelContract,
    how_to_export,
    model_versions,
    read_model_config,
)
from services.ranking.served_model import ServedModel, read_metadata

#: Largest difference accepted against the outputs recorded in ``parity_sample.npz``.
SAMPLE_PARITY_TOLERANCE = 1e-4
#: Optional file in a version: inputs (``history_item_ids``, ``candidate_item_ids``, ...) and the training
#: framework's outputs (``purchase_probability``, ``return_probability``) on them.
PARITY_SAMPLE_FILE = "parity_sample.npz"
STAGING_PREFIX = ".staging-"
RETIRED_PREFIX = ".retired-"


@dataclass
class Report:
    """What validate found: ``checked`` lines for what passed, ``problems`` for what failed (each one sentence),
    ``notes`` for what is worth knowing but not wrong (a model folder with no versions yet)."""

    checked: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


# --- validate ---------------------------------------------------------------------------------------------------
def validate_path(path: Path) -> Report:
    """Validates a repository (every model folder in it), a model folder, or one version folder."""
    report = Report()
    path = Path(path)
    if path.name in ("", ".."):  # "." has no name, and a folder's name is its model's or version's
        path = path.resolve()
    if not path.exists():
        report.problems.append(f"{path}: does not exist")
    elif (path / CONFIG_FILE).is_file():
        validate_model_dir(path, report)
    elif path.name.isdigit() and (path.parent / CONFIG_FILE).is_file():
        contract = _contract(path.parent, report)
        if contract is not None:
            _version(path.parent, path, contract, report)
    elif path.is_dir() and any((child / CONFIG_FILE).is_file() for child in path.iterdir()):
        for child in sorted(path.iterdir()):
            if child.is_dir() and not child.name.startswith("."):
                if (child / CONFIG_FILE).is_file():
                    validate_model_dir(child, report)
                else:
                    report.problems.append(f"{child}: a model folder needs {CONFIG_FILE}")
    else:
        report.problems.append(
            f"{path}: not a model repository, a model folder (with {CONFIG_FILE}) or a version folder (a number)"
        )
    return report


def validate_model_dir(model_dir: Path, report: Report) -> None:
    contract = _contract(model_dir, report)
    if contract is None:
        return
    _alternative_configs(model_dir, report)
    versions = []
    for entry in sorted(model_dir.iterdir()):
        if entry.name.startswith(".") or entry.name in (CONFIG_FILE, CONFIGS_DIR):
            continue  # staging and retired folders, the configs
        if not entry.is_dir():
            report.problems.append(
                f"{entry}: unexpected file; a model folder holds {CONFIG_FILE}, configs/ and versions"
            )
        elif not _is_version_name(entry.name):
            report.problems.append(
                f"{entry}: not a version folder: versions are positive integers without leading zeros (1, 2, 10)"
            )
        else:
            versions.append(entry)
    if not versions:
        report.notes.append(f"{model_dir}: no versions yet ({how_to_export(model_dir.name)})")
    for folder in sorted(versions, key=lambda p: int(p.name)):
        _version(model_dir, folder, contract, report)


def validate_version(model_dir: Path, folder: Path, contract: ModelContract | None = None) -> list[str]:
    """Checks one version folder (which may be a staging folder); returns what passed, raises with what failed."""
    contract = contract if contract is not None else read_model_config(model_dir / CONFIG_FILE)
    try:
        import onnx
    except ImportError:
        raise ModelConfigError("validating a model needs the onnx package: pip install 'aisle[train]'") from None
    import onnxruntime as ort

    checked = []
    for name in (MODEL_FILE, VOCABULARY_FILE):  # the feature snapshot is checked (and named) when read
        if not (folder / name).is_file():
            raise ModelConfigError(f"{folder}: missing {name}")
    try:
        onnx.checker.check_model(str(folder / MODEL_FILE), full_check=True)
    except Exception as exc:  # onnx raises ValidationError, DecodeError, InferenceError...
        raise ModelConfigError(f"{folder / MODEL_FILE}: onnx.checker refuses it: {_first_line(exc)}") from None
    checked.append("onnx.checker passed")
    try:
        session = ort.InferenceSession(str(folder / MODEL_FILE), providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelConfigError(f"{folder / MODEL_FILE}: ONNX Runtime cannot load it: {_first_line(exc)}") from None
    check_graph(folder / MODEL_FILE, session, contract)
    checked.append("graph inputs/outputs match config.pbtxt")
    model = ServedModel.read(model_dir.name, folder.name, folder, contract)
    checked.append(
        f"{len(model.vocabulary)} items"
        + (f", feature snapshot with {len(model.features)} rows" if model.features is not None else "")
    )
    tensors = warm_up_inputs(model, rows=3, candidates=16)
    try:
        scores = run_session(session, contract, tensors)
    except Exception as exc:
        raise ModelConfigError(f"{folder}: inference on sample input failed: {_first_line(exc)}") from None
    check_probabilities(folder, scores, tensors[CANDIDATES_INPUT].shape, "sample-input")
    checked.append("sample input gives probabilities in [0, 1]")
    difference = check_batch_parity(folder, session, model)
    checked.append(
        f"batched and padded rows match rows alone (max diff {difference:.1e}, tolerance {BATCH_PARITY_TOLERANCE:.0e})"
    )
    if (folder / PARITY_SAMPLE_FILE).is_file():
        difference = sample_parity(session, contract, folder / PARITY_SAMPLE_FILE)
        checked.append(f"{PARITY_SAMPLE_FILE}: ONNX Runtime matches the recorded outputs (max diff {difference:.1e})")
    return checked


def sample_parity(session, contract: ModelContract, path: Path) -> float:
    try:
        with np.load(path, allow_pickle=False) as data:
            sample = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:  # a truncated copy, an empty one
        raise ModelConfigError(f"{path}: cannot read: {exc}") from None
    missing = sorted((set(contract.inputs) | {PURCHASE_OUTPUT}) - set(sample))
    if missing:
        raise ModelConfigError(f"{path}: lacks {missing}")
    try:
        scores = run_session(session, contract, {name: sample[name] for name in contract.inputs})
    except Exception as exc:  # ORT's own exception types: a token past the model's table, a wrong dtype or shape
        raise ModelConfigError(f"{path}: ONNX Runtime failed on the sample input: {_first_line(exc)}") from None
    worst = 0.0
    for name, got in ((PURCHASE_OUTPUT, scores.purchase), (RETURN_OUTPUT, scores.returns)):
        if got is None or name not in sample:
            continue
        if got.shape != sample[name].shape:
            raise ModelConfigError(f"{path}: {name} has shape {got.shape}, the sample recorded {sample[name].shape}")
        worst = max(worst, largest_difference(got, sample[name]))
    if worst == float("inf"):
        raise ModelConfigError(f"{path}: ONNX Runtime or the recorded outputs hold scores that are not finite (NaN)")
    if not worst <= SAMPLE_PARITY_TOLERANCE:
        raise ModelConfigError(
            f"{path}: ONNX Runtime differs from the recorded outputs by {worst:.2e} (> {SAMPLE_PARITY_TOLERANCE:.0e})"
        )
    return worst


def _contract(model_dir: Path, report: Report) -> ModelContract | None:
    try:
        contract = read_model_config(model_dir / CONFIG_FILE)
    except ModelConfigError as error:
        report.problems.append(str(error))
        return None
    if contract.name != model_dir.name:
        report.problems.append(
            f"{model_dir / CONFIG_FILE}: name {contract.name!r} differs from its folder {model_dir.name!r} "
            "(Triton requires them equal)"
        )
        return None
    problem = _warmup_problem(model_dir / CONFIG_FILE)
    if problem:
        report.problems.append(problem)
        return None
    report.checked.append(f"{model_dir / CONFIG_FILE}: parses and meets the ranking contract")
    return contract


def _warmup_problem(path: Path) -> str | None:
    """Triton refuses to load a model whose ``model_warmup`` sample lacks (or adds) an input."""
    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
    declared = sorted(t.name for t in config.input)
    for sample in config.model_warmup:
        given = sorted(sample.inputs)
        if given != declared:
            return f"{path}: model_warmup {sample.name!r} gives inputs {given}, the model declares {declared}"
    return None


def _alternative_configs(model_dir: Path, report: Report) -> None:
    """``configs/*.pbtxt`` must declare exactly the tensors of ``config.pbtxt`` (one repository, two configs)."""
    main = _tensors(model_dir / CONFIG_FILE)
    for path in sorted((model_dir / CONFIGS_DIR).glob("*.pbtxt")):
        try:
            read_model_config(path)
            config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())
        except ModelConfigError as error:
            report.problems.append(str(error))
            continue
        if _tensors(path) != main:
            report.problems.append(
                f"{path}: inputs/outputs/max_batch_size differ from {CONFIG_FILE}; both configs must declare the same "
                "tensors"
            )
            continue
        problem = _warmup_problem(path)
        if problem:
            report.problems.append(problem)
            continue
        if config.name and config.name != model_dir.name:
            report.problems.append(f"{path}: name {config.name!r} differs from the model folder {model_dir.name!r}")
            continue
        if config.backend == "python":
            script = config.default_model_filename or "model.py"
            # Triton resolves it inside each version folder; a relative path may point out of it.
            probe = Path(os.path.normpath(model_dir / "1" / script))
            if "/" in script and not probe.is_file():
                report.problems.append(f"{path}: default_model_filename {script!r} does not resolve to a file")
                continue
        report.checked.append(f"{path}: parses, same tensors as {CONFIG_FILE}")


def _tensors(path: Path) -> tuple:
    config = text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2.ModelConfig())

    def spec(tensors) -> tuple:
        return tuple(sorted((t.name, t.data_type, tuple(t.dims)) for t in tensors))

    return spec(config.input), spec(config.output), config.max_batch_size


def _version(model_dir: Path, folder: Path, contract: ModelContract, report: Report) -> None:
    try:
        checked = validate_version(model_dir, folder, contract)
    except ModelConfigError as error:
        report.problems.append(str(error))
    except OSError as error:  # a file unreadable or removed meanwhile: this version's problem, not the run's
        report.problems.append(f"{folder}: cannot read it: {error}")
    else:
        report.checked.append(f"{folder}: " + "; ".join(checked))


def _is_version_name(name: str) -> bool:
    return name.isdigit() and not name.startswith("0")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# --- publish and rollback ---------------------------------------------------------------------------------------
#: The model folder's writer lock (a file beside the versions, which servers and Triton ignore).
LOCK_FILE = ".writer.lock"


@contextlib.contextmanager
def one_writer(model_dir: Path, who: str, waiting: Callable[[str], None] | None = None) -> Iterator[None]:
    """Holds the model folder's writer lock for the block: one publish, rollback or training export at a time, so
    that none picks a version number, or decides what is newest, while another changes the folder (a rollback
    that retired the versions it listed while a publish added one left the published one serving). An exclusive
    ``flock`` on ``<model_dir>/.writer.lock``, released when the block ends or the process dies. ``waiting`` is told
    who holds it, once, when another writer does."""
    path = model_dir / LOCK_FILE
    try:
        # Writable by whoever may write the folder (0666 less the umask), as the version folders are; a lock file
        # another user made and this one may not write is locked read-only (flock needs no write access).
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except PermissionError:
        descriptor = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(descriptor, 512, 0).decode("utf-8", "replace").strip() or "another writer"
            (waiting or print)(f"{model_dir}: waiting for {holder} to finish with it")
            fcntl.flock(descriptor, fcntl.LOCK_EX)
        with contextlib.suppress(OSError):  # who holds it: for the next writer's message only
            os.ftruncate(descriptor, 0)
            os.pwrite(descriptor, f"{who} (pid {os.getpid()})\n".encode(), 0)
        yield
    finally:
        os.close(descriptor)  # releases the lock


@dataclass(frozen=True)
class Published:
    version: int
    folder: Path
    checked: list[str]


def used_versions(model_dir: Path) -> set[int]:
    """Every version number used here: version folders, retired ones and ones being (or once being) published."""
    used = set()
    for entry in model_dir.iterdir():
        name = entry.name
        if _is_version_name(name):
            used.add(int(name))
        elif name.startswith((RETIRED_PREFIX, STAGING_PREFIX)):
            number = name.split("-")[1] if name.count("-") >= 2 else ""
            if number.isdigit():
                used.add(int(number))
    return used


def next_version(model_dir: Path) -> int:
    """One more than any version ever used here, retired and incomplete ones included (numbers are never reused)."""
    return max(used_versions(model_dir), default=0) + 1


def check_new_version(model_dir: Path, version: int, fix: str = "omit --version to publish as version {next}") -> None:
    """Refuses a version number given by hand that was used before or would not be served; ``fix`` (with the next
    free number for ``{next}``) ends the message.

    A number is never reused: a Triton-backed ranking pod that last saw the retired version of that number would
    keep its item tokens for the new weights. And a number at or below the newest version would never be served
    (every server serves the newest)."""
    fix = fix.format(next=next_version(model_dir))
    if (model_dir / str(version)).exists():
        raise ModelConfigError(f"{model_dir / str(version)} already exists; versions are immutable: {fix}")
    if version in used_versions(model_dir):
        raise ModelConfigError(
            f"{model_dir}: version {version} was used before (retired, or a publish of it is or was in progress) "
            f"and numbers are never reused: {fix}"
        )
    newest = max(model_versions(model_dir), default=0)
    if version <= newest:
        raise ModelConfigError(
            f"{model_dir}: version {version} is below the newest version {newest}, which would keep serving: {fix}"
        )


def publish(source: Path, model_dir: Path, version: int | None = None) -> Published:
    """Copies ``source`` (a folder with model.onnx, item_vocabulary.txt, ...) in as a new version, atomically.
    ``version`` defaults to the next one; one given must be new and above the newest (:func:`check_new_version`)."""
    contract = read_model_config(model_dir / CONFIG_FILE)
    if not source.is_dir():
        raise ModelConfigError(f"{source}: not a folder (publish takes a version folder with {MODEL_FILE})")
    if version is None:
        version = next_version(model_dir)
    else:
        check_new_version(model_dir, version)
    final = model_dir / str(version)
    staging = staging_folder(model_dir, f"{STAGING_PREFIX}{version}-")
    try:
        for item in source.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        if not (staging / METADATA_FILE).exists():
            # Every published version has one: the artefact sync (k8s/base/config/sync-artifacts.sh) counts a
            # version as complete, uploaded whole, only when it has, and would pass over one without.
            (staging / METADATA_FILE).write_text(
                json.dumps(
                    {"model": model_dir.name, "version": version, "published_from": str(source.resolve())}, indent=2
                )
                + "\n",
                encoding="utf-8",
            )
        _sync(staging)
        try:
            checked = validate_version(model_dir, staging, contract)
        except ModelConfigError as error:  # named by the source, not by the staging folder that is gone
            raise ModelConfigError(
                str(error).replace(str(staging), str(source)) + _exported_for(source, model_dir)
            ) from None
        if final.exists():
            raise ModelConfigError(f"{final} appeared while publishing; versions are immutable")
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return Published(version, final, checked)


def _exported_for(source: Path, model_dir: Path) -> str:
    """A hint for a refused publish: the model folder the export was made for, when it is not this one."""
    try:
        metadata = read_metadata(source)
    except ModelConfigError:
        return ""
    exported = metadata.get("model") if isinstance(metadata, dict) else None
    if isinstance(exported, str) and exported and exported != model_dir.name:
        return f" (the export was made for the model {exported!r}: publish it with --model {exported})"
    return ""


def retire(model_dir: Path, version: int) -> Path:
    """Moves a version out of the serving set (kept on disk as ``.retired-<version>-<unix time>``)."""
    target = model_dir / f"{RETIRED_PREFIX}{version}-{time.time_ns()}"
    os.rename(model_dir / str(version), target)
    return target


@dataclass(frozen=True)
class RolledBack:
    """What a rollback did: the version now newest, and where each retired version went (for :func:`undo`)."""

    serving: int
    folders: dict[int, Path]

    @property
    def retired(self) -> list[int]:
        return sorted(self.folders)


def rollback(model_dir: Path, to: int | None = None) -> RolledBack:
    """Retires every version newer than ``to`` (default: the one before the newest): all of them or, when one
    cannot be moved, none."""
    versions = model_versions(model_dir)
    if not versions:
        raise ModelConfigError(f"{model_dir}: no versions to roll back")
    if to is None:
        if len(versions) < 2:
            raise ModelConfigError(f"{model_dir}: only version {versions[0]} exists; nothing to roll back to")
        to = versions[-2]
    if to not in versions:
        raise ModelConfigError(f"{model_dir}: version {to} is not available (available: {versions})")
    newer = [v for v in versions if v > to]
    if not newer:
        raise ModelConfigError(f"{model_dir}: version {to} is already the newest")
    # The target must be servable before anything is moved out of its way.
    validate_version(model_dir, model_dir / str(to))
    folders: dict[int, Path] = {}
    try:
        # Oldest first: the newest stays the newest until the last move, so a watching pod never sees a version in
        # between as the newest and loads it.
        for version in sorted(newer):
            folders[version] = retire(model_dir, version)
    except BaseException:
        undo(model_dir, RolledBack(to, folders))
        raise
    return RolledBack(to, folders)


def undo(model_dir: Path, rolled_back: RolledBack) -> None:
    """Puts the versions a rollback retired back in place (the same folders, so the same files and stamps), the
    newest first: a watching pod goes straight back to it, not through the versions in between."""
    for version, folder in sorted(rolled_back.folders.items(), reverse=True):
        os.rename(folder, model_dir / str(version))


def _sync(folder: Path) -> None:
    """Flushes the staged files, so the rename publishes complete files even after a crash."""
    for item in folder.iterdir():
        with open(item, "rb") as handle:
            os.fsync(handle.fileno())


# --- telling Triton ---------------------------------------------------------------------------------------------
class TritonLoadError(RuntimeError):
    pass


def triton_load(target: str, model_name: str, expect_version: int, timeout_s: float = 60.0) -> None:
    """Explicit model control: Triton re-reads the model folder and loads its newest version per version_policy;
    the old version serves until the new one is ready. Raises unless ``expect_version`` ends up READY."""
    from tritonclient.grpc import InferenceServerClient
    from tritonclient.utils import InferenceServerException

    client = InferenceServerClient(url=target)
    try:
        try:
            client.load_model(model_name, client_timeout=timeout_s)
        except InferenceServerException as error:
            raise TritonLoadError(f"Triton at {target} could not load {model_name!r}: {_first_line(error)}") from None
        try:
            ready = client.is_model_ready(model_name, str(expect_version), client_timeout=10)
        except InferenceServerException as error:  # it loaded, then did not answer: not known to serve it
            raise TritonLoadError(
                f"Triton at {target} did not say whether {model_name!r} version {expect_version} is ready: "
                f"{_first_line(error)}"
            ) from None
        if not ready:
            raise TritonLoadError(f"Triton at {target}: {model_name!r} version {expect_version} is not ready")
    finally:
        client.close()


def tell_triton(targets: Sequence[str], model_name: str, version: int) -> list[str]:
    """Loads the model on every target; returns one problem per target that did not end up serving ``version``."""
    problems = []
    for target in targets:
        try:
            triton_load(target, model_name, version)
        except TritonLoadError as error:
            problems.append(str(error))
    return problems
