"""Triton backend: scores on Triton Inference Servers through ``tritonclient.grpc.aio``.

- Addresses: ``host:port`` targets, and ``dns:///name:port`` ones (a Kubernetes headless Service) resolved again at
  each refresh into one address per pod; each address is a server of its own, and calls take turns over them.
- The version, per server: the newest version each server reports READY (or the configured one), see
  :class:`_Routes`. Item tokens and features are built here from that version's files in the local copy of the model
  repository (callers send ids), and each call goes to one server naming the version that server serves, so tokens
  and weights always belong together. A version is known by its number and its folder (:data:`FolderKey`): a number
  whose folder was replaced is read again, never served with the old tokens. When a server stops serving its
  version (a publish or a rollback reloaded the model), the call is retried once on what the servers serve now.
  During a Triton rollout behind a headless Service, each pod is asked for its version and called with it.
  Calls that meet the old version together ask Triton once: the first asks, the others wait for its answer, each
  no longer than its own deadline allows.
- A version Triton serves but the local copy lacks (not synced yet, or retired by a rollback Triton was not told
  of) is :class:`ModelNotReady`, not a configuration error: that server gets no calls until the folder is there.
- A server that does not answer the refresh's control call while others serve (down, or hung: a frozen process
  would hold each call for its whole deadline) gets no calls until a refresh finds it serving; a call that meets
  an unavailable server is retried on the servers it has not tried yet.
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
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import grpc
import numpy as np
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from services.core.keepalive import KEEPALIVE_TIME_MS
from services.core.rpc_tracing import STATUS_CODE, mark_abandoned, rpc_attributes
from services.core.telemetry import ActiveSpan
from services.core.versions import FolderStamp, folder_stamp
from services.ranking.backends.base import (
    BackendUnavailable,
    InferenceFailed,
    InferenceServerFault,
    InferenceTimeout,
    ModelNotReady,
    Ranking,
    Scores,
    VersionNotServed,
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
#: A target naming a DNS name (a Kubernetes headless Service) rather than one address: resolved at each refresh.
DNS_PREFIX = "dns:///"
#: How long the client of an address that left the name's addresses stays open for the calls still using it:
#: longer than any call's deadline.
CLIENT_CLOSE_GRACE_S = 60.0
#: Refreshes in a row that must find no server answering before no call goes to Triton: one failed round (a dropped
#: connection, a control call slowed past its timeout on a busy machine) is not an outage.
DARK_AFTER_ROUNDS = 2
#: How long after a failed follow (Triton serves a version this pod refuses or cannot serve yet) the calls that meet
#: the gone version again go without asking Triton once more: the watch keeps asking, the calls need not.
FOLLOW_RETRY_S = 1.0


class _VersionGone(Exception):
    """Triton no longer serves the version the request was built for (reloaded meanwhile)."""


#: What tells one version folder from another under the same number: the folder's inode (a folder put in place
#: anew gets another; a retired one put back keeps its own) and its files by name, size and modification time.
FolderKey = tuple[int, FolderStamp]


def folder_key(folder: Path) -> FolderKey | None:
    """The folder's :data:`FolderKey`; None when it is missing or cannot be read."""
    try:
        inode = folder.stat().st_ino
    except OSError:
        return None
    stamp = folder_stamp(folder)
    return (inode, stamp) if stamp else None


class _Routes:
    """Which version each Triton server serves, with that version's item files: what a call is built from.

    Why per server: ``aisle models publish`` loads the servers one after another, and with the project's
    ``version_policy: latest 1`` a server unloads the old version as soon as the new one is ready, so while a publish
    (or rollback) goes on, some servers serve only the new version and the others only the old one; no version is
    READY on every server. Pinning one version would fail every call sent to a server on the other one (about half
    of them with two servers), and sending all calls to the servers that have the pinned version would pile the
    load of the whole fleet onto the first (or last) server to switch. So each server keeps its share of the calls
    and answers with the version it serves: a call is built with the tokens of that server's version and names that
    version, so no call mixes versions (the answer says which version scored it), and for the few seconds of a
    reload the answers come from both versions, as they would from the servers themselves.

    ``models`` has one entry per target (``None``: the server serves no version this backend can use, so it gets no
    calls); ``keys`` has, per version, its folder's :data:`FolderKey` when its files were read; ``problems`` says
    why servers get no calls; ``dark`` routes ("unavailable": no server answered the last refreshes; "not_ready":
    they answer again, with nothing this pod may serve) send no calls at all, and still say which versions were
    served."""

    __slots__ = ("targets", "clients", "models", "keys", "problems", "live", "by_version", "newest", "dark")

    def __init__(
        self,
        targets: Sequence[str],
        clients: Sequence[object],
        models: Sequence[ServedModel | None],
        keys: dict[str, FolderKey | None],
        problems: Sequence[str] = (),
        dark: str = "",
    ):
        self.targets, self.clients = tuple(targets), tuple(clients)
        self.models = tuple(models)
        self.problems = tuple(problems)
        self.dark = dark
        self.live = () if dark else tuple(index for index, model in enumerate(self.models) if model is not None)
        self.by_version = {model.version: model for model in self.models if model is not None}
        self.keys = {version: keys[version] for version in self.by_version}
        self.newest = max(self.by_version.values(), key=lambda model: int(model.version), default=None)

    def darkened(self, why: str, problem: str) -> _Routes:
        """These routes sending no calls, for ``why`` ("unavailable" or "not_ready"), saying ``problem``."""
        return _Routes(self.targets, self.clients, self.models, self.keys, [problem], dark=why)

    def same_as(self, other: _Routes) -> bool:
        return (
            self.targets == other.targets
            and self.dark == other.dark
            and all(mine is theirs for mine, theirs in zip(self.models, other.models, strict=True))
        )

    def model_of(self, target: str) -> ServedModel | None:
        return self.models[self.targets.index(target)] if target in self.targets else None

    def summary(self) -> str:
        return ", ".join(
            f"{target}: version {model.version if model is not None else 'none'}"
            for target, model in zip(self.targets, self.models, strict=True)
        )


_READY, _NONE, _UNREACHABLE = "ready", "none", "unreachable"


def triton_client(target: str):
    """A ``tritonclient.grpc.aio`` client for one address (:class:`TritonBackend` resolves ``dns:///`` names)."""
    from tritonclient.grpc.aio import InferenceServerClient

    options = [
        ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ("grpc.max_receive_message_length", 64 * 1024 * 1024),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
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


def dns_name(target: str) -> tuple[str, str]:
    """(host, port) of a ``dns:///host:port`` target (``dns:///[::1]:8001`` too); ValueError without a port."""
    rest = target.removeprefix(DNS_PREFIX)
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not port.isdigit():
        raise ValueError(f"{target!r} is not dns:///host:port")
    return host.removeprefix("[").removesuffix("]"), port


async def resolve_addresses(host: str, port: str) -> list[str]:
    """Every address ``host`` resolves to, as ``ip:port`` (``[ip]:port`` for IPv6), sorted: a Kubernetes headless
    Service's name resolves to one address per ready pod."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    # One family: on a dual-stack Service each pod has an IPv4 and an IPv6 address, and listed under both it would
    # get two shares of the calls. IPv4 where there is any.
    families = {info[0] for info in infos}
    family = socket.AF_INET if socket.AF_INET in families else socket.AF_INET6
    addresses = {info[4][0] for info in infos if info[0] == family}
    return sorted(f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in addresses)


class TritonBackend:
    """Scores on Triton (see the module's docstring). ``targets``: ``host:port`` addresses, or ``dns:///name:port``
    names resolved again at each refresh into one address per pod, each then a server of its own (its version, its
    share of the calls); through one name, gRPC would spread calls over pods that serve different versions during a
    rollout, and a call naming one version would meet a pod serving the other."""

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
        resolver: Callable[[str, str], Awaitable[list[str]]] = resolve_addresses,
        on_refused: Callable[[], None] | None = None,
    ):
        """``on_refused`` is called once per version whose files are refused (a metric's count), again only when
        the refused folder's files change and are refused anew."""
        if not targets:
            raise ValueError("the triton backend needs at least one address")
        self.declared = list(targets)
        self._resolver = resolver
        self._resolved: dict[str, list[str]] = {}  # dns:/// target -> its addresses when last resolved
        self.repository = repository
        self.model_name = model_name
        self.requested_version = version
        self.default_timeout_s = default_timeout_s
        self.ready_timeout_s = ready_timeout_s
        self._client_factory = client_factory
        self._clients: dict[str, object] = {}
        #: A task per address that left: closes its client after a grace (the value), or close() does.
        self._closing: dict[asyncio.Task, object] = {}
        #: version -> (its folder's key, why its files were refused): not read again until the folder changes.
        self._refused: dict[str, tuple[FolderKey | None, ModelConfigError]] = {}
        self._on_refused = on_refused
        self._turn = itertools.count()
        self._routes: _Routes | None = None
        self._lock = asyncio.Lock()
        #: The switch the calls that met a gone version wait for (one at a time, not cancelled by their deadlines).
        self._following: asyncio.Task | None = None
        #: The routes a follow last failed to move on from, and when (see FOLLOW_RETRY_S).
        self._follow_failed: tuple[_Routes | None, float] = (None, 0.0)
        #: Refreshes in a row that found no server answering (see DARK_AFTER_ROUNDS).
        self._unanswered_rounds = 0
        #: The last "keeping version" warning: logged again only when it says something else.
        self._kept_because = ""
        # Got after the tracer provider is set, not at import (the API's proxy costs a context manager per span).
        self._tracer = trace.get_tracer(__name__)

    @property
    def targets(self) -> list[str]:
        """The addresses in use: those of the routes serving now (a ``dns:///`` name's as it resolved last), the
        declared ``host:port`` ones before any serve."""
        routes = self._routes
        if routes is not None:
            return list(routes.targets)
        return [target for target in self.declared if not target.startswith(DNS_PREFIX)]

    @property
    def model(self) -> ServedModel | None:
        """The newest version a server serves now (while a reload goes on, some servers may serve an older one)."""
        routes = self._routes
        return routes.newest if routes is not None else None

    @property
    def model_version(self) -> str:
        model = self.model
        return model.version if model is not None else ""

    @property
    def history_length(self) -> int:
        model = self.model
        return model.history_length if model is not None else 0

    # --- life cycle -------------------------------------------------------------------------------------------
    async def _addresses(self) -> list[str]:
        """The declared ``host:port`` targets and what each ``dns:///`` one resolves to now (what it resolved to
        last when the name does not resolve); clients for new addresses are made (those of gone ones are closed
        once routes without them serve: :meth:`_publish`)."""
        addresses: list[str] = []
        for target in self.declared:
            if not target.startswith(DNS_PREFIX):
                addresses.append(target)
                continue
            host, port = dns_name(target)
            try:
                self._resolved[target] = await self._resolver(host, port)
            except OSError as error:
                log.warning("cannot resolve %s (%s): using its last addresses", target, error)
            addresses.extend(self._resolved.get(target, []))
        addresses = list(dict.fromkeys(addresses))
        for address in addresses:
            if address not in self._clients:
                self._clients[address] = self._client_factory(address)
        return addresses

    def _publish(self, routes: _Routes) -> None:
        """Serves ``routes`` from now on; the clients of addresses they no longer hold are closed once the calls
        that may still use them (each within its deadline) are over."""
        self._routes = routes
        for gone in set(self._clients) - set(routes.targets):
            client = self._clients.pop(gone)
            task = asyncio.get_running_loop().create_task(self._close_later(client), name=f"close-{gone}")
            self._closing[task] = client
            task.add_done_callback(self._closing.pop)

    @staticmethod
    async def _close_later(client) -> None:
        await asyncio.sleep(CLIENT_CLOSE_GRACE_S)
        await client.close()

    async def load(self) -> None:
        """Waits (up to ``ready_timeout_s``) for Triton to serve the model, then takes the version it serves."""
        deadline = time.monotonic() + self.ready_timeout_s
        while True:
            try:
                async with self._lock:
                    self._publish(await self._route(None, CONTROL_TIMEOUT_S))
                break
            except (ModelNotReady, BackendUnavailable) as error:
                if time.monotonic() >= deadline:
                    raise ModelNotReady(f"{error.message} (waited {self.ready_timeout_s:.0f} s)") from None
                log.info("waiting for Triton: %s", error.message)
                await asyncio.sleep(0.5)
        log.info("serving %s from Triton: %s", self.model_name, self._routes.summary())
        for problem in self._routes.problems:
            log.warning("a Triton server gets no calls for now: %s", problem)

    async def refresh(self) -> bool:
        """Follows the versions Triton serves (after a publish or rollback reloaded the model); after
        :data:`DARK_AFTER_ROUNDS` refreshes in a row with no server answering, sends no calls until one answers."""
        async with self._lock:
            return await self._switch(CONTROL_TIMEOUT_S, may_go_dark=True)

    async def _follow(self, seen: _Routes, timeout: float) -> None:
        """What a call that met a version Triton no longer serves does: waits, no longer than ``timeout`` seconds,
        for one switch that the calls share (single flight). The switch runs to its end whatever the callers'
        deadlines: reading a large catalog's item files outlasts any call's, and a switch cancelled with its caller
        left the next caller to read them all again."""
        failed_on, failed_at = self._follow_failed
        if failed_on is seen and time.monotonic() - failed_at < FOLLOW_RETRY_S:
            return  # asked a moment ago for these routes, in vain: the watch asks again, not every call
        if self._following is None or self._following.done():
            self._following = asyncio.get_running_loop().create_task(self._switch_from(seen), name="triton-switch")
        try:
            await asyncio.wait_for(asyncio.shield(self._following), timeout)
        except TimeoutError:
            pass  # the caller finds the versions unchanged and its time spent; the switch goes on

    async def _switch_from(self, seen: _Routes) -> None:
        try:
            async with self._lock:
                if self._routes is seen:  # no other switch (a refresh) moved on since
                    # Never dark from here: only the watch lights routes again, and it may be off.
                    if not await self._switch(CONTROL_TIMEOUT_S, may_go_dark=False):
                        self._follow_failed = (seen, time.monotonic())
        except Exception:  # noqa: BLE001 - no caller may be waiting to be told; the watch tries again
            log.exception("following Triton's version switch failed")

    async def _switch(self, control_timeout: float, may_go_dark: bool) -> bool:
        """Under the lock: takes the versions Triton serves now if they are others; True when it switched."""
        current = self._routes
        try:
            routes = await self._route(current, control_timeout)
        except BackendUnavailable as error:
            self._unanswered_rounds += may_go_dark
            if current is None or not may_go_dark or self._unanswered_rounds < DARK_AFTER_ROUNDS:
                self._keeping(error)
                return False
            if current.dark == "unavailable":
                return False
            # No server answered (all hung, or none left in DNS), round after round: a call sent to one would wait
            # out its whole budget. None gets calls until a refresh finds one serving: calls fail at once, or fall
            # back to the embedded backend.
            self._publish(current.darkened("unavailable", str(error)))
            log.warning("no calls to Triton until a server answers: %s", error)
            return True
        except (ModelNotReady, ModelConfigError) as error:
            self._unanswered_rounds = 0
            self._keeping(error)
            if current is not None and current.dark and current.problems != (str(error),):
                # Triton answers again, with a version not to be served from here: say that, not "no answer".
                self._publish(current.darkened("not_ready", str(error)))
            return False
        self._unanswered_rounds = 0
        self._kept_because = ""  # a server answered with something to serve: the next failure is a new episode
        if current is not None and routes.same_as(current):
            return False  # the same versions with the same files (a folder may be retired by now)
        self._publish(routes)
        log.info(
            "now serving %s from Triton: %s (was %s)",
            self.model_name,
            routes.summary(),
            current.summary() if current is not None else "none",
        )
        for problem in routes.problems:
            log.warning("a Triton server gets no calls for now: %s", problem)
        return True

    def _keeping(self, error: Exception) -> None:
        said = str(error)
        if said != self._kept_because:  # once per cause, not once per call that meets it
            log.warning("keeping version %s: %s", self.model_version or "none", said)
            self._kept_because = said

    async def close(self) -> None:
        if self._following is not None:
            self._following.cancel()
            await asyncio.gather(self._following, return_exceptions=True)
        async with self._lock:  # a refresh under way finishes first, so it makes no client after this
            waiting = list(self._closing.values())  # the clients of departed addresses, within their grace
            for task in list(self._closing):
                task.cancel()
            clients, self._clients = [*self._clients.values(), *waiting], {}
            for client in clients:
                await client.close()
            self._routes = None

    async def _route(self, current: _Routes | None, control_timeout: float) -> _Routes:
        """Asks every server which version it serves and reads the item files of the versions not read yet (or whose
        folder changed since). A server that does not answer (within ``control_timeout``), or whose version cannot
        be served from here (not ready, folder missing locally, refused), gets no calls until the next refresh
        finds it serving. Raises when no server is left to call: the caller keeps
        ``current``, and at start-up the pod does not start, with :class:`ModelConfigError` when a server's model
        disagrees with the repository (a deployment error, not a state to wait out). While another server serves a
        version that passes, a restarted pod starts on it, as the running pods keep serving from it."""
        targets = await self._addresses()
        if not targets:
            raise BackendUnavailable(f"no Triton address: {', '.join(self.declared)} resolved to none")
        clients = [self._clients[target] for target in targets]
        answers = await asyncio.gather(
            *(self._ready_on(target, client, control_timeout) for target, client in zip(targets, clients, strict=True))
        )
        models: list[ServedModel | None] = [None] * len(targets)
        keys: dict[str, FolderKey | None] = {}
        found: dict[str, ServedModel | None] = {}
        problems: list[str] = []  # why a server gets no calls
        unreachable: list[tuple[int, str]] = []
        refused: ModelConfigError | None = None
        serving: dict[str, list[int]] = {}  # version -> the servers that serve it
        for index, (state, value) in enumerate(answers):
            if state == _UNREACHABLE:
                unreachable.append((index, value))
            elif state == _NONE:
                problems.append(value)
            else:
                serving.setdefault(value, []).append(index)
        for version, indexes in serving.items():
            # Described by the first of its servers that answers: one server's failed metadata call (a transient
            # error, a reload under way there) does not bench the others serving the version. A model that
            # disagrees with the repository is the version's, not one server's: no use asking the others.
            found[version], failures = None, []
            for index in indexes:
                try:
                    found[version] = await self._model_for(
                        version, targets[index], clients[index], current, control_timeout, keys
                    )
                    break
                except ModelNotReady as error:
                    failures.append(str(error))
                except ModelConfigError as error:
                    failures.append(str(error))
                    refused = refused or error
                    break
            if found[version] is None:
                problems.extend(failures)
            for index in indexes:
                models[index] = found[version]
        if all(model is None for model in models):
            if refused is not None:
                raise refused
            if len(unreachable) == len(targets):
                raise BackendUnavailable(f"no Triton server answered: {'; '.join(why for _, why in unreachable)}")
            raise ModelNotReady("; ".join(problems))
        # Another server serves: one that did not answer gets no calls until it answers again. Hung (a frozen
        # process, a stuck node), it would hold each call sent to it for the call's whole deadline.
        problems.extend(f"{why} (no calls until it answers)" for _, why in unreachable)
        return _Routes(targets, clients, models, keys, problems)

    async def _ready_on(self, target: str, client, control_timeout: float) -> tuple[str, str]:
        """(_READY, version) for the version ``target`` serves (the newest READY, or the configured one);
        (_NONE, why) when it serves none of those; (_UNREACHABLE, why) when it did not answer."""
        from tritonclient.utils import InferenceServerException

        try:
            index = await client.get_model_repository_index(as_json=True, client_timeout=control_timeout)
        except InferenceServerException as error:
            return _UNREACHABLE, f"{target}: {error}"
        ready = sorted(
            int(m["version"])
            for m in index.get("models", [])
            if m.get("name") == self.model_name and m.get("state") == "READY" and m.get("version", "").isdigit()
        )
        if self.requested_version:
            if int(self.requested_version) not in ready:
                return _NONE, (
                    f"model {self.model_name!r} version {self.requested_version} is not ready on Triton at "
                    f"{target} (ready: {ready or 'none'})"
                )
            return _READY, self.requested_version
        if ready:
            return _READY, str(ready[-1])
        return _NONE, f"model {self.model_name!r} has no ready version on Triton at {target}"

    async def _model_for(
        self,
        version: str,
        target: str,
        client,
        current: _Routes | None,
        control_timeout: float,
        keys: dict[str, FolderKey | None],
    ) -> ServedModel:
        """The version's model: the one in memory while its folder is unchanged (or gone: retired after Triton
        loaded it), else read again. The number alone is not enough: a folder replaced under the same number holds
        other tokens."""
        known = current.by_version.get(version) if current is not None else None
        if known is not None:
            key = folder_key(self.repository / self.model_name / version)
            if key is None or key == current.keys[version]:
                keys[version] = current.keys[version]
                return known
            log.warning(
                "version %s of %s changed on disk under the same number: reading it again", version, self.model_name
            )
        model, keys[version] = await self._describe(version, target, client, control_timeout)
        return model

    async def _describe(
        self, version: str, target: str, client, control_timeout: float = CONTROL_TIMEOUT_S
    ) -> tuple[ServedModel, FolderKey | None]:
        """Checks Triton's view of the version against the local config and reads its item files."""
        from tritonclient.utils import InferenceServerException

        try:
            metadata = await client.get_model_metadata(
                self.model_name, version, as_json=True, client_timeout=control_timeout
            )
        except InferenceServerException as error:  # e.g. unloaded between the two calls
            raise ModelNotReady(f"model {self.model_name!r} version {version} on Triton at {target}: {error}") from None
        # The item files (a catalog-sized vocabulary, an id table, a feature snapshot) are read in a thread: on the
        # event loop the read stalled every call in flight (about 1 s for a million items).
        return await asyncio.to_thread(self._local_model, version, metadata, target)

    def _local_model(self, version: str, metadata: dict, target: str) -> tuple[ServedModel, FolderKey | None]:
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
        # Shapes too: a history length changed in one copy of config.pbtxt and not the other (a release, a sync that
        # drifted) passed, and every call then failed INVALID_ARGUMENT, which the fallback does not cover.
        specs = {**contract.inputs, **contract.outputs}
        for tensor in (*metadata.get("inputs", []), *metadata.get("outputs", [])):
            spec = specs.get(tensor["name"])
            if spec is not None and "shape" in tensor and not _shapes_agree(tensor["shape"], spec.shape):
                raise ModelConfigError(
                    f"Triton at {target} serves {self.model_name!r} version {version} with {tensor['name']} of "
                    f"shape {[int(d) for d in tensor['shape']]}, the repository's {CONFIG_FILE} declares "
                    f"{list(spec.shape)}"
                )
        folder = model_dir / version
        if not folder.is_dir():
            # Not a configuration error: the local copy is behind (not synced yet) or the version was retired by
            # a rollback Triton was not told of. Not ready from here until the folder is there.
            raise ModelNotReady(
                f"Triton at {target} serves {self.model_name!r} version {version}, which {model_dir} lacks "
                "(not synced yet, or retired without telling Triton)"
            )
        key = folder_key(folder)  # before reading: files changing meanwhile make the next key differ
        refused = self._refused.get(version)
        if refused is not None and refused[0] == key and key is not None:
            raise refused[1]  # the same files as last time: not read again at every refresh
        try:
            return ServedModel.read(self.model_name, version, folder, contract), key
        except ModelConfigError as error:
            self._refused[version] = (key, error)
            if self._on_refused is not None:
                self._on_refused()
            raise

    # --- scoring ----------------------------------------------------------------------------------------------
    async def rank(
        self, history_ids: Sequence[str], candidate_ids: Sequence[str], timeout: float | None, version: str = ""
    ) -> Ranking:
        """Each call goes to the next server in turn (see :class:`_Routes`); a pinned ``version`` goes to the
        servers that serve it only, and is not found while none does."""
        started = time.monotonic()
        budget = timeout if timeout is not None else self.default_timeout_s
        first = next(self._turn)  # this call's turn; a retry takes the next server from it, not another call's turn
        unavailable = 0
        version_retried = False
        while True:
            routes = self._routes
            if routes is None:
                raise ModelNotReady(f"model {self.model_name!r} is not ready on Triton yet")
            if routes.dark:  # the last refreshes found no server answering, or nothing to serve from here
                unserved = BackendUnavailable if routes.dark == "unavailable" else ModelNotReady
                raise unserved(f"no call goes to Triton now: {'; '.join(routes.problems)}")
            live = routes.live
            if version:
                live = tuple(index for index in live if routes.models[index].version == version)
                if not live:
                    raise VersionNotServed(self.model_name, version, list(routes.by_version))
            # One server and the version it serves: the tokens are that version's.
            index = live[(first + unavailable) % len(live)]
            model = routes.models[index]
            inputs = model.inputs(history_ids, candidate_ids)
            remaining = budget - (time.monotonic() - started) - DEADLINE_MARGIN_S
            if remaining <= 0:
                raise InferenceTimeout(f"no time left for the Triton call (budget {budget * 1000:.1f} ms)")
            try:
                scores = await self._infer(routes, index, model, inputs, remaining)
            except _VersionGone as gone:
                # Ask Triton what it serves now (unless another request already switched): retry once on it.
                if not version_retried:
                    version_retried = True
                    left = budget - (time.monotonic() - started) - DEADLINE_MARGIN_S
                    if left > 0 and self._routes is routes:
                        await self._follow(routes, left)
                    if self._routes is not routes:
                        continue
                    if budget - (time.monotonic() - started) - DEADLINE_MARGIN_S <= 0:
                        raise InferenceTimeout(
                            f"{gone}; no time left to follow Triton's version switch (budget {budget * 1000:.1f} ms)"
                        ) from None
                raise ModelNotReady(str(gone)) from None
            except BackendUnavailable:
                unavailable += 1
                if unavailable < len(live):
                    continue  # the next server this call has not tried
                raise
            return Ranking.of(model, inputs, scores, self.kind)

    async def _infer(
        self, routes: _Routes, index: int, model: ServedModel, inputs: ModelInputs, timeout: float
    ) -> Scores:
        from tritonclient.grpc import InferInput, InferRequestedOutput
        from tritonclient.utils import InferenceServerException

        target, client = routes.targets[index], routes.clients[index]
        tensors = []
        for name, values in inputs.tensors.items():
            tensor = InferInput(name, list(values.shape), _TRITON_TYPES[values.dtype])
            tensor.set_data_from_numpy(values)
            tensors.append(tensor)
        names = [PURCHASE_OUTPUT] + ([RETURN_OUTPUT] if model.contract.has_return_head else [])
        span = self._tracer.start_span("TritonInfer", kind=SpanKind.CLIENT, attributes=_INFER_ATTRIBUTES)
        with ActiveSpan(span):
            span.set_attribute("aisle.triton.target", target)
            span.set_attribute("aisle.model.version", model.version)
            headers: dict[str, str] = {}
            if span.get_span_context().trace_flags.sampled:
                # Triton traces every request that carries a context, whatever its own rate says: an unsampled
                # trace's context would have it trace (and export) a request whose parents nobody keeps.
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
                span.set_attribute(STATUS_CODE, _status_number(error))
                raise _mapped(error, target, model) from None
            except asyncio.CancelledError:  # the ranking call was abandoned (its caller's deadline) mid-inference
                mark_abandoned(span)
                raise
            span.set_attribute(STATUS_CODE, 0)
        purchase = result.as_numpy(PURCHASE_OUTPUT)
        returns = result.as_numpy(RETURN_OUTPUT) if len(names) > 1 else None
        expected = inputs.tensors[next(iter(inputs.tensors))].shape[:1] + (inputs.candidate_count,)
        if purchase is None or purchase.shape != expected:
            raise InferenceFailed(
                f"Triton at {target} returned {PURCHASE_OUTPUT} of shape "
                f"{None if purchase is None else purchase.shape}, want {expected}"
            )
        return Scores(purchase=purchase, returns=returns)


#: The ``TritonInfer`` span's RPC attributes: Triton's gRPC inference call, so tracing backends draw ranking -> Triton.
_INFER_ATTRIBUTES = rpc_attributes("/inference.GRPCInferenceService/ModelInfer")


def _shapes_agree(served: Sequence, declared: Sequence[int]) -> bool:
    """Whether Triton's shape of a tensor (numbers, as text in its JSON) is the contract's; -1 (a variable size) on
    either side matches any size."""
    served = [int(d) for d in served]
    return len(served) == len(declared) and all(s == d or -1 in (s, d) for s, d in zip(served, declared, strict=True))


def _status_number(error) -> int:
    """The gRPC code number of a Triton client error (its status reads "StatusCode.UNAVAILABLE"); UNKNOWN's (2)
    when it has none."""
    name = str(error.status() or "").rpartition(".")[2]
    return next((code.value[0] for code in grpc.StatusCode if code.name == name), grpc.StatusCode.UNKNOWN.value[0])


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
