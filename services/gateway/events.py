"""The event log: exposures, clicks and conversions, behind one interface.

``JsonlEventSink`` appends JSON lines to a file (the local default; training reads it back with
:func:`read_events`). A Redis Streams or Kafka producer implements the same ``write``. Writes go through a bounded
queue: when it is full, ``write`` raises :class:`EventLogFull` (the caller answers RESOURCE_EXHAUSTED) rather than
dropping anything silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class EventLogFull(Exception):
    """The sink cannot take more events now; retry later."""


class EventSink(Protocol):
    async def write(self, records: Sequence[dict[str, Any]]) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class NullEventSink:
    """Keeps nothing (the log is off)."""

    async def write(self, records: Sequence[dict[str, Any]]) -> None:
        return None

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None


class JsonlEventSink:
    def __init__(self, path: Path, max_pending: int = 10_000):
        self.path = path
        self.queue: asyncio.Queue[dict[str, Any]] | None = None
        self.max_pending = max_pending
        self._writer: asyncio.Task | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.queue = asyncio.Queue(self.max_pending)
        self._writer = asyncio.get_running_loop().create_task(self._drain(), name="event-log")

    async def write(self, records: Sequence[dict[str, Any]]) -> None:
        if self.queue is None:
            raise RuntimeError("event sink not started")
        if self.queue.qsize() + len(records) > self.max_pending:
            raise EventLogFull(f"{self.queue.qsize()} events pending")
        for record in records:
            self.queue.put_nowait(record)

    async def _drain(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < 1000:
                batch.append(self.queue.get_nowait())
            lines = "".join(json.dumps(record, separators=(",", ":")) + "\n" for record in batch)
            await asyncio.to_thread(self._append, lines)
            for _ in batch:
                self.queue.task_done()

    def _append(self, lines: str) -> None:
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(lines)

    async def flush(self) -> None:
        if self.queue is not None:
            await self.queue.join()

    async def close(self) -> None:
        if self._writer is not None:
            await self.flush()
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass


def read_events(path: Path) -> Iterator[dict[str, Any]]:
    """Reads a JSON-lines event log back (for training); a torn last line is skipped."""
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line", path)
