"""Client channels to other Aisle services: retries live in the gRPC service config, not in loops.

Every call still needs its own deadline (``timeout=``); the retry policy only retries UNAVAILABLE, and only within
that deadline. UNAVAILABLE mostly means the call never reached a handler (no connection, a server refusing new
calls), but a call cut at a server's shutdown grace is UNAVAILABLE too and may have run: Aisle's calls are reads,
or writes whose repeat is harmless (stock updates) or counted as at-least-once (events). A server whose own
downstream call failed answers with a retry pushback (services.core.interceptors), so only the channel nearest the
failure retries. ``round_robin`` balances across every address a
name resolves to, which is what a Kubernetes headless Service gives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from services.core.keepalive import KEEPALIVE_TIME_MS
from services.core.rpc_tracing import TracedChannel, tracing_enabled


def service_config(service_names: Sequence[str], *, max_attempts: int = 3) -> str:
    """The JSON gRPC service config for calls to ``service_names`` (fully qualified, e.g. aisle.ranking.v1...)."""
    config = {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [{"service": name} for name in service_names],
                "retryPolicy": {
                    "maxAttempts": max_attempts,
                    "initialBackoff": "0.005s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
    return json.dumps(config)


def create_channel(
    target: str,
    service_names: Sequence[str],
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
    max_attempts: int = 3,
) -> grpc.aio.Channel:
    """An insecure (in-cluster) ``grpc.aio`` channel with retries, keepalive and message limits set; its calls
    carry the trace context and make client spans while tracing is on."""
    options = [
        ("grpc.enable_retries", 1),
        ("grpc.service_config", service_config(service_names, max_attempts=max_attempts)),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_permit_without_calls", 1),
        # gRPC's default reconnect backoff starts at 1 s and grows to 120 s: far longer than a request budget.
        # A restarted dependency should be used again within about a second.
        ("grpc.initial_reconnect_backoff_ms", 100),
        ("grpc.min_reconnect_backoff_ms", 100),
        ("grpc.max_reconnect_backoff_ms", 1000),
    ]
    channel = grpc.aio.insecure_channel(target, options=options)
    return TracedChannel(channel) if tracing_enabled() else channel


#: How long a long-lived channel may stay unable to connect before it is made anew (:class:`RenewingChannel`).
RENEW_AFTER_S = 5.0
#: How long a replaced channel's calls may still run: they end by their own deadline or status, not cancelled
#: (a cancelled call raises ``CancelledError`` in its caller, which no caller takes for a failed call).
RETIRED_CHANNEL_GRACE_S = 30.0


class RenewingChannel:
    """A long-lived channel to one target that is made anew once it has failed to connect (TRANSIENT_FAILURE) for
    ``renew_after_s``; calls made through it, stubs' included, go to the newest channel.

    gRPC retries a failed name lookup after a growing wait, up to two minutes, and no channel option shortens it.
    A Kubernetes headless Service with no Ready pod (a cold start, every pod restarting) and a StatefulSet pod's
    own name while the pod restarts do not resolve, so a channel that met that went on failing for up to two
    minutes after the name resolved again: the gateway answered from its fallback, the shard router without the
    shard. A new channel looks the name up at once. (A target that resolves but refuses connections costs a new
    channel every ``renew_after_s`` while it does, and nothing else: its calls fail at once either way.)

    Made inside the event loop that will use it; watches its state every ``check_every_s`` until closed."""

    def __init__(
        self, make: Callable[[], grpc.aio.Channel], renew_after_s: float = RENEW_AFTER_S, check_every_s: float = 1.0
    ):
        self._make, self.renew_after_s, self.check_every_s = make, renew_after_s, check_every_s
        self.channel = make()
        #: How many times the channel was made anew.
        self.renewals = 0
        self._retiring: set[asyncio.Task] = set()  # replaced channels closing after their calls' grace
        self._watcher = asyncio.get_running_loop().create_task(self._watch(), name="channel-renewal")

    def unary_unary(self, method: str, *args: Any, **kwargs: Any) -> _OnNewestChannel:
        return _OnNewestChannel(self, lambda channel: channel.unary_unary(method, *args, **kwargs))

    def unary_stream(self, method: str, *args: Any, **kwargs: Any) -> _OnNewestChannel:
        return _OnNewestChannel(self, lambda channel: channel.unary_stream(method, *args, **kwargs))

    def stream_unary(self, method: str, *args: Any, **kwargs: Any) -> _OnNewestChannel:
        return _OnNewestChannel(self, lambda channel: channel.stream_unary(method, *args, **kwargs))

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> _OnNewestChannel:
        return _OnNewestChannel(self, lambda channel: channel.stream_stream(method, *args, **kwargs))

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.channel.get_state(try_to_connect)

    async def _watch(self) -> None:
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self.check_every_s)
            if self.channel.get_state() != grpc.ChannelConnectivity.TRANSIENT_FAILURE:
                failing_since = None
                continue
            now = time.monotonic()
            if failing_since is None:
                failing_since = now
            elif now - failing_since >= self.renew_after_s:
                old, self.channel = self.channel, self._make()
                self.renewals += 1
                failing_since = None
                # Calls already on it (waiting for a pick, between retries) end on their own: not cancelled.
                closing = asyncio.get_running_loop().create_task(old.close(RETIRED_CHANNEL_GRACE_S))
                self._retiring.add(closing)
                closing.add_done_callback(self._retiring.discard)

    async def close(self, grace: float | None = None) -> None:
        self._watcher.cancel()
        await asyncio.gather(self._watcher, return_exceptions=True)
        # Replaced channels still closing, within their grace or this one, whichever ends first.
        await asyncio.gather(self.channel.close(grace), *self._retiring, return_exceptions=True)

    async def __aenter__(self) -> RenewingChannel:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self.close()


class _OnNewestChannel:
    """A multicallable that follows its :class:`RenewingChannel` onto each new channel."""

    def __init__(self, owner: RenewingChannel, make: Callable[[grpc.aio.Channel], Any]):
        self._owner, self._make = owner, make
        self._channel, self._call = owner.channel, make(owner.channel)

    def __call__(self, request: Any = None, **kwargs: Any) -> Any:
        channel = self._owner.channel
        if channel is not self._channel:
            self._channel, self._call = channel, self._make(channel)
        return self._call(request, **kwargs)


def create_renewing_channel(
    target: str,
    service_names: Sequence[str],
    *,
    max_message_bytes: int = 4 * 1024 * 1024,
    renew_after_s: float = RENEW_AFTER_S,
) -> RenewingChannel:
    """:func:`create_channel`'s channel for a service's long-lived link to a dependency, made anew when it cannot
    connect for ``renew_after_s`` (:class:`RenewingChannel`)."""
    return RenewingChannel(
        lambda: create_channel(target, service_names, max_message_bytes=max_message_bytes), renew_after_s
    )
