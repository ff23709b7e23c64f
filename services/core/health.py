"""Client-side health checks of other services (the standard grpc.health.v1 service)."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

log = logging.getLogger(__name__)


async def is_serving(channel: grpc.aio.Channel, service: str, timeout: float = 1.0) -> bool:
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout
        )
    except grpc.aio.AioRpcError:
        return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


async def wait_until_serving(channel: grpc.aio.Channel, service: str, log_every_s: float, what: str = "") -> None:
    """Polls until ``service`` behind ``channel`` is SERVING, logging every ``log_every_s`` while it is not."""
    logged = time.monotonic()  # each check may itself wait for its timeout: count time, not sleeps
    while not await is_serving(channel, service):
        if time.monotonic() - logged >= log_every_s:
            log.info("waiting for %s to be SERVING", what or service)
            logged = time.monotonic()
        await asyncio.sleep(0.1)
