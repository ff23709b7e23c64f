"""Wires the ranking service's parts into an :class:`~services.core.server.Application`."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from prometheus_client import CollectorRegistry, Counter, Histogram

from aisle.ranking.v1 import ranking_service_pb2 as pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from services.core.metrics import ArtifactMetrics
from services.core.server import Application
from services.ranking.backends.base import RankingBackend
from services.ranking.backends.fallback import FallbackBackend
from services.ranking.backends.onnxruntime import BatchingOptions, OnnxRuntimeBackend
from services.ranking.backends.triton import TritonBackend
from services.ranking.servicer import RankingServicer
from services.ranking.settings import RankingSettings

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RankingService"].full_name

log = logging.getLogger(__name__)


class RankingMetrics:
    """The ranking service's own metrics, in the server's registry."""

    def __init__(self, registry: CollectorRegistry):
        self.batch_size = Histogram(
            "aisle_ranking_batch_size",
            "Requests per embedded inference batch.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
            registry=registry,
        )
        self.fallbacks = Counter(
            "aisle_ranking_fallback",
            "Requests answered by the embedded backend because Triton could not, by Triton's failure reason.",
            ["reason"],
            registry=registry,
        )
        self.candidates = Counter(
            "aisle_ranking_candidates",
            "Candidates scored, by whether the model knows them (an unknown one scores 0).",
            ["known"],
            registry=registry,
        )
        #: The model version served (the primary backend's) and the versions each backend refused.
        self.artifacts = ArtifactMetrics(registry, "ranking")

    def scored(self, known: int, unknown: int) -> None:
        self.candidates.labels("true").inc(known)
        self.candidates.labels("false").inc(unknown)

    def show_serving(self, backend: RankingBackend) -> None:
        self.artifacts.serving("model", backend.model_version)

    def model_refused(self) -> None:
        """What a backend calls for each model version it refuses."""
        self.artifacts.refused("model")


def build_embedded(settings: RankingSettings, metrics: RankingMetrics | None = None) -> OnnxRuntimeBackend:
    batching = BatchingOptions(
        enabled=settings.batching,
        max_batch_size=settings.max_batch_size or None,
        max_queue_delay_us=settings.max_queue_delay_us,
        max_cells=settings.max_batch_cells,
        instances=settings.inference_instances,
        inline_max_candidates=settings.inline_max_candidates,
        on_batch=metrics.batch_size.observe if metrics is not None else None,
    )
    return OnnxRuntimeBackend(
        settings.model_repository,
        settings.model_name,
        settings.model_version,
        settings.intra_op_threads,
        batching,
        on_refused=metrics.model_refused if metrics is not None else None,
    )


def build_backend(settings: RankingSettings, metrics: RankingMetrics | None = None) -> RankingBackend:
    if settings.backend == "onnxruntime":
        return build_embedded(settings, metrics)
    triton = TritonBackend(
        settings.triton_target_list,
        settings.model_repository,
        settings.model_name,
        settings.model_version,
        default_timeout_s=settings.triton_timeout_s,
        # With a fallback the service starts at once on the embedded backend; the watch keeps trying Triton.
        ready_timeout_s=0 if settings.fallback_to_embedded else settings.triton_ready_timeout_s,
        # With the fallback, a version both backends refuse counts once for each: two loads refused it.
        on_refused=metrics.model_refused if metrics is not None else None,
    )
    if settings.fallback_to_embedded:
        on_fallback = (lambda reason: metrics.fallbacks.labels(reason).inc()) if metrics is not None else None
        return FallbackBackend(triton, build_embedded(settings, metrics), on_fallback)
    return triton


class ModelWatch:
    """Calls ``backend.refresh()`` every ``interval`` seconds: how a running server picks up a version published
    (or rolled back) with ``aisle models publish`` / ``rollback``. A refused version is logged and not served."""

    def __init__(self, backend: RankingBackend, interval: float, metrics: RankingMetrics | None = None):
        self.backend = backend
        self.interval = interval
        self.metrics = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self.interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="model-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.backend.refresh()
            except Exception:  # the watch must outlive any one bad refresh
                log.exception("model refresh failed; still serving version %s", self.backend.model_version)
            if self.metrics is not None:
                self.metrics.show_serving(self.backend)


def build_application(
    settings: RankingSettings, registry: CollectorRegistry | None = None, backend: RankingBackend | None = None
) -> Application:
    metrics = RankingMetrics(registry) if registry is not None else None
    backend = backend if backend is not None else build_backend(settings, metrics)
    servicer = RankingServicer(settings, backend, metrics.scored if metrics is not None else None)
    watch = ModelWatch(backend, settings.watch_interval_s, metrics)

    async def load() -> None:
        await backend.load()
        if metrics is not None:
            metrics.show_serving(backend)
        watch.start()

    async def close() -> None:
        await watch.stop()
        await backend.close()

    return Application(
        service_names=[SERVICE_NAME],
        register=lambda server: pb_grpc.add_RankingServiceServicer_to_server(servicer, server),
        load=load,
        close=close,
    )
