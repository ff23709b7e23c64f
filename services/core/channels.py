"""Client channels to other Aisle services: retries live in the gRPC service config, not in loops.

Every call still needs its own deadline (``timeout=``); the retry policy only retries UNAVAILABLE, which gRPC
guarantees is safe to retry, and only within that deadline. ``round_robin`` balances across every address a
name resolves to, which is what a Kubernetes headless Service gives.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import grpc

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
        ("grpc.keepalive_time_ms", 30_000),
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
