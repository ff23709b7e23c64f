"""Embedded backend: ONNX Runtime in-process, reading the same ``config.pbtxt`` contract as Triton.

Concurrent requests are micro-batched (:mod:`services.ranking.batching`). A version is served only after it passed
every check (config contract, graph inputs/outputs, item files, a warm-up inference over the whole vocabulary's
token range giving probabilities, and the batch/padding parity the micro-batcher relies on); a refresh that finds a
newer (or, after a rollback, an older) version loads it beside the current one and swaps only when it is ready, so
requests never see a half-loaded model and a broken version never serves. A refused version is tried again only
once one of its files changed (a copy that was still in progress completed), not on every poll. At start-up the
newest version that passes serves: a bad newest one is refused (and remembered) as a refresh refuses it, so a
restarted server serves what the running ones kept serving. ``training.export`` runs the same checks
(:func:`check_version`) before it publishes a version.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.core.onnx_runtime import GPU_DISTRIBUTION, check_onnxruntime_install
from services.core.versions import FolderStamp, folder_stamp
from services.ranking.backends.base import ModelNotReady, Ranking, Scores, VersionNotServed
from services.ranking.batching import BatcherClosed, MicroBatcher, stack_rows
from services.ranking.model_config import (
    CANDIDATES_INPUT,
    CONFIG_FILE,
    FEATURES_INPUT,
    HISTORY_INPUT,
    MODEL_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    ModelConfigError,
    ModelContract,
    model_versions,
    read_model_config,
    resolve_version,
)
from services.ranking.served_model import ServedModel

log = logging.getLogger(__name__)

_ORT_TYPES = {"tensor(int64)": np.dtype(np.int64), "tensor(float)": np.dtype(np.float32)}
#: Queue delay when neither the settings nor config.pbtxt's dynamic_batching give one (Triton's usual start).
DEFAULT_QUEUE_DELAY_US = 500
CPU_PROVIDER = "CPUExecutionProvider"
#: Largest score difference accepted between a row scored alone and the same row in a padded batch.
BATCH_PARITY_TOLERANCE = 1e-5
#: The same on a GPU, whose kernels (TF32 matmuls, per-shape algorithms) differ by batch shape more than a CPU's;
#: a model that mixes candidates changes scores by far more (a softmax over its row: 1e-1 and up).
GPU_BATCH_PARITY_TOLERANCE = 1e-3


@dataclass(frozen=True)
class BatchingOptions:
    """Micro-batching of the embedded backend; ``None`` fields come from ``config.pbtxt``."""

    enabled: bool = True
    max_batch_size: int | None = None
    max_queue_delay_us: int | None = None
    max_cells: int = 65_536
    instances: int = 1
    #: With one instance on the CPU provider, a request of at most this many candidates that finds nothing queued
    #: runs on the event loop's thread (MicroBatcher.inline_max_width); 0: never.
    inline_max_candidates: int = 1000
    #: Called with each batch's size (rows), for metrics.
    on_batch: Callable[[int], None] | None = None


@dataclass(frozen=True, eq=False)
class _Loaded:
    model: ServedModel
    session: object
    providers: tuple[str, ...]
    #: The version's files when loaded: a refresh reloads a version one of whose files was replaced.
    stamp: FolderStamp


class OnnxRuntimeBackend:
    """Serves ``<repository>/<model>/<version>/model.onnx``, checked against ``config.pbtxt`` and warmed up."""

    kind = "onnxruntime"

    def __init__(
        self,
        repository: Path,
        model_name: str,
        version: str = "",
        intra_op_threads: int = 1,
        batching: BatchingOptions | None = None,
        on_refused: Callable[[], None] | None = None,
    ):
        """``on_refused`` is called once per version refused at load (a metric's count)."""
        self.repository = repository
        self._on_refused = on_refused
        self.model_name = model_name
        self.requested_version = version
        self.intra_op_threads = intra_op_threads
        self.batching = batching if batching is not None else BatchingOptions()
        self.providers: list[str] = []
        self._loaded: _Loaded | None = None
        self._refused: dict[str, FolderStamp] = {}  # version -> its files when it failed to load
        self._executor = ThreadPoolExecutor(max_workers=self.batching.instances, thread_name_prefix="ort")
        self._batcher: MicroBatcher | None = None
        #: See inline_max_candidates; set per loaded version.
        self._inline_max = 0
        self._lock = asyncio.Lock()

    # --- what is served -------------------------------------------------------------------------------------
    @property
    def model(self) -> ServedModel | None:
        loaded = self._loaded
        return loaded.model if loaded is not None else None

    @property
    def model_version(self) -> str:
        loaded = self._loaded
        return loaded.model.version if loaded is not None else ""

    @property
    def inline_max_candidates(self) -> int:
        """Up to how many candidates a request that finds nothing queued runs on the event loop's thread, for the
        version served now (0: none does; BatchingOptions.inline_max_candidates)."""
        return self._inline_max

    @property
    def history_length(self) -> int:
        loaded = self._loaded
        return loaded.model.history_length if loaded is not None else 0

    @property
    def contract(self) -> ModelContract | None:
        loaded = self._loaded
        return loaded.model.contract if loaded is not None else None

    # --- life cycle -------------------------------------------------------------------------------------------
    async def load(self) -> None:
        """Serves the requested version, or else the newest one that passes its checks (the start-up path).

        A newer version that fails is refused as :meth:`refresh` refuses it (a log line naming it and why; not tried
        again until its files change) and the next older one is tried, so a bad version in the repository does not
        stop servers from starting; raises only when none passes, or when the requested one fails."""
        async with self._lock:
            model_dir = self.repository / self.model_name
            version, folder = resolve_version(model_dir, self.requested_version)  # raises when there is none
            if self.requested_version:
                self._install(await asyncio.to_thread(self._open, version, folder))
                return
            newest, first_error = version, None
            candidates = [str(v) for v in reversed(model_versions(model_dir))]
            for version in candidates:
                folder = model_dir / version
                stamp = folder_stamp(folder)
                try:
                    loaded = await asyncio.to_thread(self._open, version, folder)
                except (ModelConfigError, OSError) as error:
                    self._refused[version] = stamp  # as refresh() records it: not retried until its files change
                    self._count_refusal()
                    first_error = first_error or error
                    log.error(
                        "version %s of %s refused at start-up (%s): %s",
                        version,
                        self.model_name,
                        "no older version left" if version == candidates[-1] else "trying the next older one",
                        error,
                    )
                    continue
                self._install(loaded)
                if version != newest:
                    log.warning(
                        "serving %s version %s, not the newest (%s): %d newer refused (logged above)",
                        self.model_name,
                        version,
                        newest,
                        candidates.index(version),
                    )
                return
            if len(candidates) == 1:
                raise first_error
            raise ModelConfigError(
                f"{model_dir}: none of the {len(candidates)} versions passes its checks; the newest, {newest}, was "
                f"refused: {first_error}"
            )

    async def refresh(self) -> bool:
        """Follows the repository: serves its newest complete version if that is not the one served now."""
        if self.requested_version or self._loaded is None:
            return False
        async with self._lock:
            model_dir = self.repository / self.model_name
            try:
                version, folder = resolve_version(model_dir)
            except ModelConfigError as error:
                log.warning("keeping version %s: %s", self.model_version, error)
                return False
            stamp = folder_stamp(folder)
            current = self._loaded
            if current is not None and version == current.model.version and stamp == current.stamp:
                return False
            if self._refused.get(version) == stamp:
                return False  # already refused with these very files; it will not pass now
            try:
                loaded = await asyncio.to_thread(self._open, version, folder)
            except (ModelConfigError, OSError) as error:
                self._refused[version] = stamp
                self._count_refusal()
                log.error(
                    "version %s of %s refused, still serving %s: %s",
                    version,
                    self.model_name,
                    self.model_version or "nothing",
                    error,
                )
                return False
            previous = self.model_version
            self._install(loaded)
            log.info("now serving %s version %s (was %s)", self.model_name, version, previous)
            return True

    async def close(self) -> None:
        if self._batcher is not None:
            await self._batcher.close()
        self._loaded = None
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _count_refusal(self) -> None:
        if self._on_refused is not None:
            self._on_refused()

    def _install(self, loaded: _Loaded) -> None:
        self._loaded = loaded
        self.providers = list(loaded.providers)
        if self.batching.enabled and self._batcher is None:
            contract = loaded.model.contract
            size = self.batching.max_batch_size or contract.max_batch_size or 1
            delay_us = self.batching.max_queue_delay_us
            if delay_us is None:
                delay_us = (
                    contract.max_queue_delay_us if contract.max_queue_delay_us is not None else DEFAULT_QUEUE_DELAY_US
                )
            self._batcher = MicroBatcher(
                _run_loaded,
                self._executor,
                padded=(CANDIDATES_INPUT, FEATURES_INPUT),
                max_batch_size=size,
                max_delay_s=delay_us / 1e6,
                max_cells=self.batching.max_cells,
                instances=self.batching.instances,
                on_batch=self.batching.on_batch,
            )
            log.info(
                "micro-batching up to %d requests, %d us queue delay, %d instance(s)",
                size,
                delay_us,
                self.batching.instances,
            )
        # Inline only where the loop has nothing better to do meanwhile: one instance on the CPU, and no queue delay
        # (with one, a request waits for others to join its batch).
        inline = self.batching.instances == 1 and loaded.providers[0] == CPU_PROVIDER
        if self._batcher is not None and self._batcher.max_delay_s > 0:
            inline = False
        self._inline_max = self.batching.inline_max_candidates if inline else 0
        if self._batcher is not None:
            self._batcher.inline_max_width = self._inline_max

    def _open(self, version: str, folder: Path) -> _Loaded:
        """Loads and checks one version; raises :class:`ModelConfigError` with the reason if it must not serve."""
        distribution = check_onnxruntime_install()
        import onnxruntime as ort

        stamp = folder_stamp(folder)
        contract = read_model_config(self.repository / self.model_name / CONFIG_FILE)
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.intra_op_threads
        options.inter_op_num_threads = 1
        wanted = [CPU_PROVIDER]
        if distribution == GPU_DISTRIBUTION:
            wanted.insert(0, "CUDAExecutionProvider")
        try:
            session = ort.InferenceSession(str(folder / MODEL_FILE), options, providers=wanted)
        except Exception as exc:  # ORT raises its own exception types for corrupt or invalid files
            raise ModelConfigError(f"{folder / MODEL_FILE}: ONNX Runtime cannot load it: {exc}") from None
        # get_available_providers() lists CUDA even where it cannot load; the session knows what it got.
        providers = tuple(session.get_providers())
        gpu = providers[0] != CPU_PROVIDER
        tolerance = GPU_BATCH_PARITY_TOLERANCE if gpu else BATCH_PARITY_TOLERANCE
        model = check_version(folder, session, self.model_name, version, contract, tolerance)
        log.info(
            "loaded %s version %s from %s with %s (%s), %d items%s",
            self.model_name,
            version,
            folder,
            providers[0],
            distribution,
            len(model.vocabulary),
            ", candidate features joined from the item feature snapshot" if model.features is not None else "",
        )
        return _Loaded(model, session, providers, stamp)

    # --- scoring ----------------------------------------------------------------------------------------------
    async def rank(
        self, history_ids: Sequence[str], candidate_ids: Sequence[str], timeout: float | None, version: str = ""
    ) -> Ranking:
        loaded = self._current()
        if version and version != loaded.model.version:
            raise VersionNotServed(self.model_name, version, [loaded.model.version])
        inputs = loaded.model.inputs(history_ids, candidate_ids)
        scores = await self._infer(loaded, inputs.tensors, inputs.candidate_count)
        return Ranking.of(loaded.model, inputs, scores, self.kind)

    async def score(self, history: np.ndarray, candidates: np.ndarray) -> Scores:
        """Scores token arrays with the current version (features joined when the model declares them)."""
        loaded = self._current()
        tensors = loaded.model.tensors(history, candidates)
        if history.shape[0] == 1:
            return await self._infer(loaded, tensors, candidates.shape[1])
        return await asyncio.get_running_loop().run_in_executor(self._executor, _scores, loaded, tensors)

    def tokens(self, item_ids: Sequence[str]) -> np.ndarray:
        return self._current().model.tokens(item_ids)

    def _current(self) -> _Loaded:
        loaded = self._loaded
        if loaded is None:
            raise ModelNotReady(f"model {self.model_name!r} is not loaded yet")
        return loaded

    async def _infer(self, loaded: _Loaded, tensors: dict[str, np.ndarray], width: int) -> Scores:
        if self._batcher is None:
            if width <= self._inline_max:  # without batching, nothing would queue behind it anyway
                return _scores(loaded, tensors)
            return await asyncio.get_running_loop().run_in_executor(self._executor, _scores, loaded, tensors)
        try:
            purchase, returns = await self._batcher.submit(loaded, tensors, width)
        except BatcherClosed as error:
            raise ModelNotReady(str(error)) from None
        return Scores(purchase=purchase, returns=returns)


def _run_loaded(key: object, tensors: dict[str, np.ndarray]) -> list[np.ndarray | None]:
    assert isinstance(key, _Loaded)
    scores = run_session(key.session, key.model.contract, tensors)
    return [scores.purchase, scores.returns]


def _scores(loaded: _Loaded, tensors: dict[str, np.ndarray]) -> Scores:
    return run_session(loaded.session, loaded.model.contract, tensors)


def run_session(session, contract: ModelContract, tensors: dict[str, np.ndarray]) -> Scores:
    names = [PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if contract.has_return_head else [])
    outputs = session.run(names, tensors)
    return Scores(purchase=outputs[0], returns=outputs[1] if len(outputs) > 1 else None)


def check_version(
    folder: Path,
    session,
    model_name: str,
    version: str,
    contract: ModelContract,
    tolerance: float = BATCH_PARITY_TOLERANCE,
) -> ServedModel:
    """Every check a version folder passes before it serves, on an ONNX Runtime ``session`` of its ``model.onnx``:
    the graph against ``config.pbtxt``, its item files, a warm-up inference over the vocabulary's token range that
    gives probabilities, and the batch/padding parity the micro-batcher relies on. Returns the model to serve, or
    raises :class:`ModelConfigError` naming the failed check. The export runs it too, so it never publishes a
    version that servers would refuse."""
    check_graph(folder / MODEL_FILE, session, contract)
    model = ServedModel.read(model_name, version, folder, contract)
    _warm_up(folder, session, model)
    check_batch_parity(folder, session, model, tolerance)
    return model


def check_graph(path: Path, session, contract: ModelContract) -> None:
    """The graph's inputs and outputs must match config.pbtxt by name, type and rank."""
    for kind, graph_tensors, declared in (
        ("input", session.get_inputs(), contract.inputs),
        ("output", session.get_outputs(), contract.outputs),
    ):
        graph = {t.name: t for t in graph_tensors}
        if kind == "input" and set(graph) != set(declared):
            raise ModelConfigError(
                f"{path}: graph inputs {sorted(graph)} differ from config.pbtxt inputs {sorted(declared)}"
            )
        for name, spec in declared.items():
            tensor = graph.get(name)
            if tensor is None:
                raise ModelConfigError(f"{path}: config.pbtxt declares {kind} {name!r}, the graph has none")
            if _ORT_TYPES.get(tensor.type) != spec.dtype or len(tensor.shape) != len(spec.shape):
                raise ModelConfigError(
                    f"{path}: {kind} {name!r} is {tensor.type} {tensor.shape} in the graph, "
                    f"config.pbtxt says {spec.dtype.name} {list(spec.shape)}"
                )


def warm_up_inputs(model: ServedModel, rows: int = 2, candidates: int = 16, seed: int = 0) -> dict[str, np.ndarray]:
    """A small random request batch over the model's vocabulary (history and candidates), features joined.

    The first row holds the largest token (the vocabulary's last item) as its first candidate and newest history
    item, so a model whose item table is shorter than the vocabulary fails here, whatever the random draw. With
    more than one row, the last has an empty history (a new shopper's), which a model may fail alone (a mean over
    no items: NaN)."""
    rng = np.random.default_rng(seed)
    size = len(model.vocabulary)
    history = rng.integers(0, size + 1, size=(rows, model.history_length), dtype=np.int64)
    if rows > 1:
        history[-1, :] = 0
    tokens = (
        rng.integers(1, size + 1, size=(rows, candidates), dtype=np.int64)
        if size
        else np.zeros((rows, candidates), dtype=np.int64)
    )
    if size:
        tokens[0, 0] = size
        history[0, -1] = size
    return model.tensors(history, tokens)


def check_probabilities(folder: Path, scores: Scores, shape: tuple[int, ...], what: str = "warm-up") -> None:
    """Scores of the right shape that are finite probabilities, or :class:`ModelConfigError`."""
    for name, values in (("purchase", scores.purchase), ("return", scores.returns)):
        if values is None:
            continue
        if values.shape != shape:
            raise ModelConfigError(f"{folder}: {what} {name} scores have shape {values.shape}, want {shape}")
        if not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
            raise ModelConfigError(f"{folder}: {what} {name} scores are not probabilities in [0, 1]")


def batch_parity(session, model: ServedModel) -> float:
    """Largest change of a score between a row alone and the same row inside a padded batch of mixed widths.

    Raises what the session raises (ONNX Runtime's own errors); :func:`check_batch_parity` names them."""
    widths = [11, 3, 7, 1]
    full = warm_up_inputs(model, rows=len(widths), candidates=max(widths), seed=7)
    history, candidates = full[HISTORY_INPUT], full[CANDIDATES_INPUT]
    history[1, :] = 0  # an empty history too
    rows = [model.tensors(history[i : i + 1], candidates[i : i + 1, :w]) for i, w in enumerate(widths)]
    padded = (CANDIDATES_INPUT, FEATURES_INPUT)
    merged = {
        name: stack_rows([row[name] for row in rows], max(widths) if name in padded else None) for name in rows[0]
    }
    together = run_session(session, model.contract, merged)
    worst = 0.0
    for i, (row, width) in enumerate(zip(rows, widths, strict=True)):
        alone = run_session(session, model.contract, row)
        for mine, batched in ((alone.purchase, together.purchase), (alone.returns, together.returns)):
            if mine is not None and batched is not None:
                worst = max(worst, largest_difference(mine[0], batched[i, :width]))
    return worst


def largest_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``max |a - b|``, or infinity where either holds a value that is not finite: a NaN would otherwise vanish in
    ``max()`` (``max(0.0, nan)`` is 0.0) and a model that scores NaN would pass a parity check."""
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return float("inf")
    return float(np.abs(a - b).max()) if a.size else 0.0


def check_batch_parity(folder: Path, session, model: ServedModel, tolerance: float = BATCH_PARITY_TOLERANCE) -> float:
    """The micro-batcher pads requests of different widths into one batch, which is sound only when each candidate
    is scored independently of the others in its row and batch; returns the largest difference, or raises
    :class:`ModelConfigError` when the run fails or a score changes by more than ``tolerance``."""
    try:
        difference = batch_parity(session, model)
    except Exception as exc:  # ORT raises its own exception types (a fixed batch size, an out-of-range token)
        raise ModelConfigError(f"{folder}: batch/padding parity run failed: {_first_line(exc)}") from None
    if difference == float("inf"):
        raise ModelConfigError(f"{folder}: the batch/padding parity run gives scores that are not finite (NaN)")
    if not difference <= tolerance:
        raise ModelConfigError(
            f"{folder}: a candidate's score changes by {difference:.2e} when other candidates share its row or batch "
            "(padding); the micro-batcher needs each candidate scored independently"
        )
    return difference


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _warm_up(folder: Path, session, model: ServedModel) -> None:
    """One real inference before serving; a model that gives wrong shapes or non-finite scores is refused."""
    tensors = warm_up_inputs(model)
    try:
        scores = run_session(session, model.contract, tensors)
    except Exception as exc:
        raise ModelConfigError(f"{folder}: warm-up inference failed: {exc}") from None
    check_probabilities(folder, scores, tensors[CANDIDATES_INPUT].shape)
