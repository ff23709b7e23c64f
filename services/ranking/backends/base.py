"""The interface every ranking backend implements, and the errors they raise.

A backend turns (history ids, candidate ids) into probabilities with the model version it serves now:
:class:`~services.ranking.backends.onnxruntime.OnnxRuntimeBackend` in-process with micro-batching,
:class:`~services.ranking.backends.triton.TritonBackend` against Triton servers, and
:class:`~services.ranking.backends.fallback.FallbackBackend` (Triton first, embedded when Triton cannot answer).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from services.core.errors import DependencyUnavailable, NotFound, NotReady, ServiceError
from services.ranking.served_model import ModelInputs, ServedModel


@dataclass(frozen=True)
class Scores:
    purchase: np.ndarray  # float32 [batch, candidates]
    returns: np.ndarray | None = None  # float32 [batch, candidates], when the model has the head


@dataclass(frozen=True)
class Ranking:
    """One request's answer: probabilities per candidate, in the request's order, and who produced them."""

    model_name: str
    model_version: str
    purchase: np.ndarray  # float32 [C]; 0 for unknown candidates (the documented default)
    returns: np.ndarray | None  # float32 [C] when the model has the head (meaningless where ``unknown``)
    unknown: np.ndarray  # bool [C]
    backend: str
    #: Set when the configured backend failed and another one answered: the failure's reason
    #: ("INFERENCE_SERVER_UNAVAILABLE", "MODEL_NOT_READY", "INFERENCE_SERVER_FAULT").
    fallback_reason: str = ""

    @property
    def fallback(self) -> bool:
        return bool(self.fallback_reason)

    @classmethod
    def of(cls, model: ServedModel, inputs: ModelInputs, scores: Scores, backend: str) -> Ranking:
        purchase = np.where(inputs.unknown, np.float32(0), scores.purchase[0]).astype(np.float32, copy=False)
        returns = scores.returns[0] if scores.returns is not None else None
        return cls(model.name, model.version, purchase, returns, inputs.unknown, backend)


class ModelNotReady(NotReady):
    """No model version is loaded (or the one asked for is not ready on the inference server)."""

    reason = "MODEL_NOT_READY"


class VersionNotServed(NotFound):
    """A caller pinned a model version that no server (or copy) this backend calls serves now."""

    def __init__(self, model_name: str, version: str, serving: Sequence[str]):
        names = ", ".join(sorted(serving, key=lambda v: (len(v), v))) if serving else "nothing yet"
        super().__init__(f"version {version} of {model_name!r} is not served (serving {names})")


class BackendUnavailable(DependencyUnavailable):
    """The inference server cannot be reached or answers UNAVAILABLE: the fallback backend may answer instead."""

    reason = "INFERENCE_SERVER_UNAVAILABLE"
    retryable = False  # every ranking replica shares the inference server


class InferenceTimeout(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    reason = "INFERENCE_TIMEOUT"


class InferenceFailed(ServiceError):
    """The inference server refused or failed a request it should have answered."""

    code = grpc.StatusCode.INTERNAL
    reason = "INFERENCE_FAILED"


class NonFiniteScores(InferenceFailed):
    """The model answered with scores that are not finite (NaN, infinity) for this request: a model fault the load
    checks did not meet. The caller gets an error, which the gateway answers as ranking down (degraded), rather
    than NaN scores that would order its answer arbitrarily."""

    reason = "NON_FINITE_SCORES"
    retryable = False  # every replica serves the same version


class InferenceServerFault(InferenceFailed):
    """The inference server failed a request through a fault of its own (Triton's INTERNAL or UNKNOWN: a python
    backend stub found unhealthy, a crashed model instance): the fallback backend may answer. Not a refusal of the
    request (INVALID_ARGUMENT: the deployed config and the local contract disagree), not a full queue
    (RESOURCE_EXHAUSTED: falling back would move the load onto the ranking pods) and not a broken answer (a
    model fault): those stay :class:`InferenceFailed` and reach the caller."""

    reason = "INFERENCE_SERVER_FAULT"


class RankingBackend(Protocol):
    #: "onnxruntime" or "triton", for logs and responses.
    kind: str
    model_name: str

    @property
    def model(self) -> ServedModel | None:
        """The version being served now (None until loaded)."""

    @property
    def model_version(self) -> str:
        """The version being served now ("" until loaded)."""

    async def load(self) -> None:
        """Loads, checks and warms up the model; raises if it must not serve."""

    async def rank(
        self, history_ids: Sequence[str], candidate_ids: Sequence[str], timeout: float | None, version: str = ""
    ) -> Ranking:
        """Scores ``candidate_ids`` for a subject with ``history_ids`` (oldest first) within ``timeout`` seconds;
        with ``version`` (a caller's pinned model version), with that version only, or raises
        :class:`VersionNotServed`."""

    async def refresh(self) -> bool:
        """Serves the repository's (or server's) current version if it changed; True when it switched.

        A version that fails its checks or warm-up is not served: the previous one keeps serving.
        """

    async def close(self) -> None: ...
