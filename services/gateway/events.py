"""The event log: exposures, clicks and conversions, behind one interface.

``JsonlEventSink`` appends JSON lines to a file (the local default; training reads it back with
:func:`read_events`). A Redis Streams or Kafka producer implements the same ``write``. Writes go through a bounded
queue: when it is full, or the file cannot be written, ``write`` raises :class:`EventLogFull` (the caller answers
RESOURCE_EXHAUSTED) rather than dropping anything silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Sequence
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


#: How long a stop waits for the event log's buffer to be written, at most (within the pod's termination grace).
CLOSE_TIMEOUT_S = 5.0


class JsonlEventSink:
    """Appends to a JSON-lines file through a queue bounded in records (``max_pending``) and in bytes
    (``max_pending_bytes``: a stalled reader of a pipe must not grow the process; one call larger than it is taken
    when nothing is pending), from one writer task.

    A failed append (disk full, permissions, a bad path) keeps its batch and is retried with a growing delay, up
    to ``max_retry_delay_s``; while it fails, and once the writer has stopped, :meth:`write` refuses
    (:class:`EventLogFull`) rather than accept events it cannot write. :meth:`close` waits ``close_timeout_s`` at
    most for the queue to drain, then logs how many events were never written.
    """

    #: Records per append.
    max_batch = 1000

    def __init__(
        self,
        path: Path,
        max_pending: int = 10_000,
        max_pending_bytes: int = 32 * 1024 * 1024,
        retry_delay_s: float = 0.1,
        max_retry_delay_s: float = 5.0,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ):
        self.path = path
        self.queue: asyncio.Queue[str] | None = None
        self.max_pending, self.max_pending_bytes = max_pending, max_pending_bytes
        self._pending_bytes = 0  # of the records accepted and not written yet
        self.retry_delay_s = retry_delay_s
        self.max_retry_delay_s = max_retry_delay_s
        self.close_timeout_s = close_timeout_s
        #: The kind of error the last append failed with (no path: callers see it), or None when it succeeded.
        self.failure: str | None = None
        self._writer: asyncio.Task | None = None
        self._held = 0  # records the writer took off the queue and has not written yet
        self._torn = False  # a write to a pipe failed part-way: the next append starts a new line

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.queue = asyncio.Queue(self.max_pending)
        self._writer = asyncio.get_running_loop().create_task(self._drain(), name="event-log")

    async def write(self, records: Sequence[dict[str, Any]]) -> None:
        if self.queue is None or self._writer is None:
            raise RuntimeError("event sink not started")
        if not records:  # nothing to write (events without consent): nothing to refuse either
            return
        if self._writer.done():
            raise EventLogFull("the event log writer has stopped")
        if self.failure is not None:
            raise EventLogFull(f"the event log cannot be written now ({self.failure})")
        pending = self.queue.qsize() + self._held
        if pending + len(records) > self.max_pending:
            raise EventLogFull(f"{pending} events pending")
        # Encoded here, so that a record that cannot be encoded fails its caller, not the writer. ASCII (json's
        # default), so a line's length is its size in bytes.
        lines = [json.dumps(record, separators=(",", ":")) + "\n" for record in records]
        size = sum(map(len, lines))
        # A call larger than the whole budget is taken when nothing is pending: refused, it would be refused again
        # on every retry, and its events lost (the budget is then passed by at most one call's message).
        if self._pending_bytes and self._pending_bytes + size > self.max_pending_bytes:
            raise EventLogFull(f"{self._pending_bytes} bytes of events pending")
        self._pending_bytes += size
        for line in lines:
            self.queue.put_nowait(line)

    async def _drain(self) -> None:
        assert self.queue is not None
        while True:
            batch = [await self.queue.get()]
            while not self.queue.empty() and len(batch) < self.max_batch:
                batch.append(self.queue.get_nowait())
            self._held = len(batch)
            data = "".join(batch).encode()
            await self._append_until_written(data, len(batch))
            self._held = 0
            self._pending_bytes -= len(data)
            for _ in batch:
                self.queue.task_done()

    async def _append_until_written(self, data: bytes, count: int) -> None:
        delay = self.retry_delay_s
        while True:
            try:
                await asyncio.to_thread(self._append, data)
            except Exception as error:  # noqa: BLE001 - any failure to write is retried; none ends the writer
                self.failure = type(error).__name__
                log.error(
                    "event log %s: %d events not written (%s); retrying in %.2f s", self.path, count, error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay_s)
                continue
            if self.failure is not None:
                log.warning("event log %s: writing again", self.path)
                self.failure = None
            return

    def _append(self, data: bytes) -> None:
        with self.path.open("ab") as handle:
            # A pipe (a container's /dev/stdout, read by the runtime's log agent) can neither seek nor truncate.
            start = handle.tell() if handle.seekable() else None
            if self._torn:  # the last write to the pipe broke off mid-line: end that line, not join the next to it
                handle.write(b"\n")
            try:
                handle.write(data)
                handle.flush()
            except BaseException:
                # A torn write would join the retried batch's first line to its tail: cut it off where possible.
                if start is None:
                    self._torn = True
                else:
                    with contextlib.suppress(OSError):
                        handle.truncate(start)
                raise
            self._torn = False

    async def flush(self) -> None:
        """Waits until every accepted event is written (or the writer has stopped)."""
        if self.queue is not None and self._writer is not None:
            await self._until_drained(timeout=None)

    async def close(self) -> None:
        if self._writer is None or self.queue is None:
            return
        await self._until_drained(self.close_timeout_s)
        self._writer.cancel()
        await asyncio.gather(self._writer, return_exceptions=True)
        unwritten = self.queue.qsize() + self._held
        if unwritten:
            cause = self.failure or f"not written within {self.close_timeout_s} s"
            log.error("event log %s: %d events could not be written (%s)", self.path, unwritten, cause)

    async def _until_drained(self, timeout: float | None) -> None:
        assert self.queue is not None and self._writer is not None
        drained = asyncio.ensure_future(self.queue.join())
        try:
            await asyncio.wait({drained, self._writer}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            drained.cancel()


def read_events(path: Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines event log back (for training), its erasures applied (:func:`without_forgotten`); a torn
    last line is skipped."""
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping an unreadable line", path)
    return without_forgotten(records)


def without_forgotten(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``records`` (oldest first) without those of a subject written before an erasure record of it
    (``{"type": "forget", "subject": ...}``, which ForgetSubject writes); the erasure records stay, so a reader
    passing the log on passes the erasure on too."""
    last_forget = {r["subject"]: i for i, r in enumerate(records) if r.get("type") == "forget" and "subject" in r}
    return [r for i, r in enumerate(records) if r.get("type") == "forget" or i > last_forget.get(r.get("subject"), -1)]
