"""Triton backend: scores on Triton Inference Servers through ``tritonclient.grpc.aio``.

- Addresses: a list of ``host:port`` used round-robin, or one ``dns:///name:port`` (a Kubernetes headless Service)
  whose addresses gRPC balances round-robin itself.
- The version: the newest version Triton reports READY (or the configured one). Item tokens and features are built
  here from that version's files in the local copy of the model repository (callers send ids), and each call names
  the version, so tokens and weights always belong together. When Triton stops serving that version (a publish or
  a rollback reloaded the model), the call is retried once on the version it serves now. Calls that meet the old
  version together ask Triton once: the first asks, the others wait for its answer, each no longer than its own
  deadline allows.
- Each call's timeout is the caller's remaining deadline; the OpenTelemetry trace context goes along as gRPC
  metadata (``traceparent``), so Triton's own tracing joins the caller's trace.
- Errors: cannot reach Triton / UNAVAILABLE -> :class:`BackendUnavailable`; model or version not ready ->
  :class:`ModelNotReady` naming the model, version and server; INTERNAL / UNKNOWN (Triton's own fault) ->
  :class:`InferenceServerFault` (for these three the fallback backend may answer); deadline ->
  :class:`InferenceTimeout`; anything else, and an answer of the wrong shape -> :class:`InferenceFailed`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from opentelemetry import propagate, trace

from services.core.telemetry import ActiveSpan
from services.ranking.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    InferenceServerFault,
    InferenceTimeout,
    ModelNotReady,
    Ranking,
    Scores,
)
from services.ranking.model_config import (
    CONFIG_FILE,
    PURCHASE_OUTPUT,
    RETURN_OUTPUT,
    ModelConfigError,
    read_model_config,
)
from services.ranking.served_model import ModelInputs, ServedModel

log = logging.getLogger(__name__)

_TRITON_TYPES = {np.dtype(np.int64): "INT64", np.dtype(np.int32): "INT32", np.dtype(np.float32): "FP32"}
#: Time kept back from the caller's deadline for building the answer after Triton replies.
DEADLINE_MARGIN_S = 0.002
#: Seconds one readiness/metadata call may take.
CONTROL_TIMEOUT_S = 2.0


class _VersionGone(Exception):
    """Triton no longer serves the version the request was built for (reloaded meanwhile)."""


def triton_client(target: str):
    """A ``tritonclient.grpc.aio`` client; ``dns:///...`` targets balance round-robin over the name's addresses."""
    from tritonclient.grpc.aio import InferenceServerClient

    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.lb_policy_name", "round_robin"),
        # A restarted Triton should be used again within about a second, not after gRPC's 1-120 s backoff.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    return InferenceServerClient(url=target, channel_args=options)


class TritonBackend:
    kind = "triton"

    def __init__(
        self,
        targets: Sequence[str],
        repository: Path,
        model_name: str,
        version: str = "",
        *,
        default_timeout_s: float = 1.0,
        ready_timeout_s: float = 30.0,
        client_factory: Callable[[str], object] = triton_client,
    ):
        if not targets:
            raise ValueError("the triton backend needs at least one address")
        self.targets = list(targets)
        self.repository = repository
        self.model_name = model_name
        self.requested_version = version
        self.default_timeout_s = default_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._client_factory = client_factory
        self._clients: list | None = None
        self._turn = itertools.count()
        self._model: ServedModel | None = None
        self._lock = asyncio.Lock()
        # Got after the tracer provider is set, not at import (the API's proxy costs a context manager per span).
        self._tracer = trace.get_tracer(__name__)

    @property
    def model(self) -> ServedModel | None:
        return self._model

    @property
    def model_version(self) -> str:
        model = self._model
        return model.version if model is not None else ""

    @property
    def history_length(self) -> int:
        model = self._model
        return model.history_length if model is not None else 0

    # --- life cycle -------------------------------------------------------------------------------------------
    def _all_clients(self) -> list:
        if self._clients is None:
            self._clients = [self._client_factory(target) for target in self.targets]
        return self._clients

    async def load(self) -> None:
        """Waits (up to ``ready_timeout_s``) for Triton to serve the model, then takes the version it serves."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                async with self._lock:
                    version, target, client = await self._ready_version()
                    self._model = await self._describe(version, target, client)
                break
            except (ModelNotReady, BackendUnavailable) as error:
                if time.monotonic() >= deadline:
                    raise ModelNotReady(f"{error.message} (waited {self.ready_timeout_s:.0f} s)") from None
                log.info("waiting for Triton: %s", error.message)
                await asyncio.sleep(0.5)
        log.info(
            "serving %s version %s from Triton at %s", self.model_name, self.model_version, ", ".join(self.targets)
        )

    async def refresh(self) -> bool:
        """Follows the version Triton serves (after a publish or rollback reloaded the model)."""
        async with self._lock:
            return await self._switch(CONTROL_TIMEOUT_S)

    async def _follow(self, seen: ServedModel, timeout: float) -> None:
        """What a call that met a version Triton no longer serves does: switches unless another call already did
        since the call read ``seen`` (single flight), waiting and asking no longer than ``timeout`` seconds."""
        try:
            async with asyncio.timeout(timeout):
                async with self._lock:
                    if self._model is seen:
                        await self._switch(min(timeout, CONTROL_TIMEOUT_S))
        except TimeoutError:
            pass  # the caller finds the version unchanged and its time spent

    async def _switch(self, control_timeout: float) -> bool:
        """Under the lock: takes the version Triton serves now if it is another; True when it switched."""
        current = self._model
        try:
            version, target, client = await self._ready_version(control_timeout)
            if current is not None and current.version == version:
                return False  # still the one whose tokens are in memory (its folder may be retired by now)
            model = await self._describe(version, target, client, control_timeout)
        except (ModelNotReady, BackendUnavailable, ModelConfigError) as error:
            log.warning("keeping version %s: %s", self.model_version or "none", error)
            return False
        self._model = model
        log.info(
            "now serving %s version %s from Triton (was %s)",
            self.model_name,
            model.version,
            current.version if current else "none",
        )
        return True

    async def close(self) -> None:
        clients, self._clients = self._clients or [], None
        for client in clients:
            await client.close()
        self._model = None

    async def _ready_version(self, control_timeout: float = CONTROL_TIMEOUT_S) -> tuple[str, str, object]:
        """(version, target, client): the newest version READY on the first Triton that answers (or the
        configured version, which must be READY there)."""
        from tritonclient.utils import InferenceServerException

        errors = []
        for target, client in zip(self.targets, self._all_clients(), strict=True):
            try:
                index = await client.get_model_repository_index(as_json=True, client_timeout=control_timeout)
            except InferenceServerException as error:
                errors.append(f"{target}: {error}")
                continue
            ready = sorted(
                int(m["version"])
                for m in index.get("models", [])
                if m.get("name") == self.model_name and m.get("state") == "READY" and m.get("version", "").isdigit()
            )
            if self.requested_version:
                if int(self.requested_version) not in ready:
                    raise ModelNotReady(
                        f"model {self.model_name!r} version {self.requested_version} is not ready on Triton at "
                        f"{target} (ready: {ready or 'none'})"
                    )
                return self.requested_version, target, client
            if ready:
                return str(ready[-1]), target, client
            raise ModelNotReady(f"model {self.model_name!r} has no ready version on Triton at {target}")
        raise BackendUnavailable(f"no Triton server answered: {'; '.join(errors)}")

    async def _describe(
        self, version: str, target: str, client, control_timeout: float = CONTROL_TIMEOUT_S
    ) -> ServedModel:
        """Checks Triton's view of the version against the local config and reads its item files."""
        from tritonclient.utils import InferenceServerException

        try:
            metadata = await client.get_model_metadata(
                self.model_name, version, as_json=True, client_timeout=control_timeout
            )
        except InferenceServerException as error:  # e.g. unloaded between the two calls
            raise ModelNotReady(f"model {self.model_name!r} version {version} on Triton at {target}: {error}") from None
        return self._local_model(version, metadata, target)

    def _local_model(self, version: str, metadata: dict, target: str) -> ServedModel:
        model_dir = self.repository / self.model_name
        contract = read_model_config(model_dir / CONFIG_FILE)
        served = {t["name"]: t["datatype"] for t in metadata.get("inputs", [])}
        declared = {name: _TRITON_TYPES[spec.dtype] for name, spec in contract.inputs.items()}
        if served != declared:
            raise ModelConfigError(
                f"Triton at {target} serves {self.model_name!r} version {version} with inputs {served}, "
                f"the repository's {CONFIG_FILE} declares {declared}"
            )
        outputs = {t["name"] for t in metadata.get("outputs", [])}
        if not set(contract.outputs) <= outputs:
            raise ModelConfigError(
                f"Triton at {target} serves outputs {sorted(outputs)}, "
                f"{CONFIG_FILE} declares {sorted(contract.outputs)}"
            )
        return ServedModel.read(self.model_name, version, model_dir / version, contract)

    # --- scoring ----------------------------------------------------------------------------------------------
    async def rank(self, history_ids: Sequence[str], candidate_ids: Sequence[str], timeout: float | None) -> Ranking:
        started = time.monotonic()
        budget = timeout if timeout is not None else self.default_timeout_s
        unavailable = 0
        version_retried = False
        while True:
            model = self._model
            if model is None:
                raise ModelNotReady(f"model {self.model_name!r} is not ready on Triton yet")
            inputs = model.inputs(history_ids, candidate_ids)
            remaining = budget - (time.monotonic() - started) - DEADLINE_MARGIN_S
            if remaining <= 0:
                raise InferenceTimeout(f"no time left for the Triton call (budget {budget * 1000:.1f} ms)")
            try:
                scores = await self._infer(model, inputs, remaining)
            except _VersionGone as gone:
                # Ask Triton what it serves now (unless another request already switched): retry once on it.
                if not version_retried:
                    version_retried = True
                    left = budget - (time.monotonic() - started) - DEADLINE_MARGIN_S
                    if left > 0 and self._model is model:
                        await self._follow(model, left)
                    if self._model is not model:
                        continue
                    if budget - (time.monotonic() - started) - DEADLINE_MARGIN_S <= 0:
                        raise InferenceTimeout(
                            f"{gone}; no time left to follow Triton's version switch (budget {budget * 1000:.1f} ms)"
                        ) from None
                raise ModelNotReady(str(gone)) from None
            except BackendUnavailable:
                unavailable += 1
                if unavailable < len(self.targets):
                    continue  # round-robin: the next call goes to the next address
                raise
            return Ranking.of(model, inputs, scores, self.kind)

    async def _infer(self, model: ServedModel, inputs: ModelInputs, timeout: float) -> Scores:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        clients = self._all_clients()
        index = next(self._turn) % len(clients)
        target, client = self.targets[index], clients[index]
        tensors = []
        for name, values in inputs.tensors.items():
            tensor = InferInput(name, list(values.shape), _TRITON_TYPES[values.dtype])
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        names = [PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if model.contract.has_return_head else [])
        with ActiveSpan(self._tracer.start_span("TritonInfer")) as span:
            span.set_attribute("aisle.triton.target", target)
            span.set_attribute("aisle.model.version", model.version)
            headers: dict[str, str] = {}
            propagate.inject(headers)
            try:
                result = await client.infer(
                    model.name,
                    tensors,
                    model_version=model.version,
                    outputs=[InferRequestedOutput(name) for name in names],
                    client_timeout=timeout,
                    headers=headers,
                )
            except InferenceServerException as error:
                raise _mapped(error, target, model) from None
        purchase = result.as_numpy(PURCHASE_OUTPUT)
        returns = result.as_numpy(RETURN_OUTPUT) if len(names) > 1 else None
        expected = inputs.tensors[next(iter(inputs.tensors))].shape[:1] + (inputs.candidate_count,)
        if purchase is None or purchase.shape != expected:
            raise InferenceFailed(
                f"Triton at {target} returned {PURCHASE_OUTPUT} of shape "
                f"{None if purchase is None else purchase.shape}, want {expected}"
            )
        return Scores(purchase=purchase, returns=returns)


def _mapped(error, target: str, model: ServedModel) -> Exception:
    status = str(error.status() or "")
    message = error.message() or str(error)
    where = f"model {model.name!r} version {model.version} on Triton at {target}"
    if "unknown model" in message or status.endswith("NOT_FOUND"):
        # "Request for unknown model: 'ranker' version 2 is not at ready state / is not found"
        return _VersionGone(f"{where} is not ready: {message}")
    if status.endswith("UNAVAILABLE"):
        return BackendUnavailable(f"Triton at {target} is unavailable: {message}")
    if status.endswith("DEADLINE_EXCEEDED"):
        return InferenceTimeout(f"{where} did not answer within the deadline")
    if status.endswith(("INTERNAL", "UNKNOWN")):
        return InferenceServerFault(f"{where} failed the request ({status}): {message}")
    return InferenceFailed(f"{where} failed the request ({status or 'no status'}): {message}")
