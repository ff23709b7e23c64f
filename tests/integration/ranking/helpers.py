"""Helpers for the ranking integration tests: servers on port 0 and Rank calls."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc

from aisle.common.v1 import common_pb2 as common
from aisle.ranking.v1 import ranking_service_pb2 as pb
from aisle.ranking.v1 import ranking_service_pb2_grpc as pb_grpc
from services.core.server import ServiceHost
from services.ranking.app import build_application, build_backend
from services.ranking.settings import RankingSettings
from tests.integration.conftest import LOCAL, serving


def settings_for(repository, **extra) -> RankingSettings:
    return RankingSettings(**{**LOCAL, "model_repository": repository, "watch_interval_s": 0, **extra})


@contextlib.asynccontextmanager
async def ranking_server(settings: RankingSettings) -> AsyncIterator[tuple[ServiceHost, object]]:
    """A real ranking server on port 0; yields (host, backend)."""
    backend = build_backend(settings)
    async with serving(ServiceHost(settings, build_application(settings, backend=backend))) as host:
        yield host, backend


def rank_request(history: list[str], candidates: list[str], **fields) -> pb.RankRequest:
    return pb.RankRequest(
        subject=common.Subject(user_id="u-1"),
        history=[common.Interaction(item_id=i, event_type=common.EVENT_TYPE_VIEW) for i in history],
        candidate_item_ids=candidates,
        **fields,
    )


async def rank(port: int, request: pb.RankRequest, timeout: float = 5.0) -> pb.RankResponse:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        return await pb_grpc.RankingServiceStub(channel).Rank(request, timeout=timeout)


@dataclass
class Load:
    """Closed-loop Rank traffic from ``workers`` concurrent callers until stopped; counts every outcome."""

    port: int
    request: pb.RankRequest
    workers: int = 4
    timeout: float = 5.0
    versions: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task] = field(default_factory=list)

    async def __aenter__(self) -> Load:
        self._channel = grpc.aio.insecure_channel(f"127.0.0.1:{self.port}")
        stub = pb_grpc.RankingServiceStub(self._channel)
        self._tasks = [asyncio.create_task(self._worker(stub)) for _ in range(self.workers)]
        return self

    async def _worker(self, stub) -> None:
        while not self._stop.is_set():
            try:
                reply = await stub.Rank(self.request, timeout=self.timeout)
                self.versions.append(reply.model_version.version)
            except grpc.aio.AioRpcError as error:
                self.failures.append(f"{error.code().name}: {error.details()}")
            await asyncio.sleep(0.002)

    @property
    def latest(self) -> str:
        return self.versions[-1] if self.versions else ""

    async def until_version(self, version: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        count = len(self.versions)
        while time.monotonic() < deadline:
            recent = self.versions[count:]
            if recent and recent[-1] == version:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"still serving {self.latest!r} after {timeout} s, wanted {version!r}")

    async def __aexit__(self, *exc) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._channel.close()
