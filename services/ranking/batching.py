"""In-process micro-batching: concurrent requests share one inference call, like Triton's dynamic batcher.

Single-request inference wastes the CPU: one ``session.run`` for 32 users costs far less than 32 runs for one user.
:class:`MicroBatcher` queues requests (one row each), and a dispatcher forms a batch when an inference slot is free:
it waits at most ``max_delay_s`` after the oldest queued request for more to arrive, and stops at ``max_batch_size``
rows or ``max_cells`` candidate slots. Requests with different candidate counts share a batch: their candidate
tensors are right-padded with 0 (the padding token) to the widest row, and each caller gets back only its own
columns. That is sound because a candidate's score depends on the history and on that candidate alone (the model
contract in model_repository/README.md); ``aisle models validate`` checks it on every version.

Requests for different model versions (``key``) never share a batch. When a batch fails, its requests are run one
by one so the error reaches only the request that caused it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

#: ``run(key, tensors) -> outputs``: tensors have a batch axis 0; outputs are [batch, candidates] arrays (or None).
RunBatch = Callable[[object, dict[str, np.ndarray]], Sequence[np.ndarray | None]]


@dataclass
class _Request:
    key: object
    tensors: dict[str, np.ndarray]
    width: int
    enqueued: float
    future: asyncio.Future | None = field(repr=False)  # None: run inline, never queued


class BatcherClosed(RuntimeError):
    pass


class MicroBatcher:
    """Batches single-row requests for ``run``, which executes in ``executor`` (a thread pool).

    ``padded`` names the tensors whose axis 1 is the candidate axis (padded with zeros to the widest row).
    ``instances`` batches may run at once (like Triton's ``instance_group`` count); while all are busy, requests
    queue and the next batch forms as soon as one frees. With ``max_delay_s`` 0 a request that finds an instance idle
    and nobody queued runs at once (batches form only under load, from what queued while the instances were busy).

    ``inline_max_width`` (settable while serving; 0: never): such a lone request of at most that many candidates
    runs on the event loop's own thread instead of the executor's. The hand-off to a thread and back costs more CPU
    than a small CPU inference (docs/benchmarks.md), but the loop does nothing else meanwhile, so nothing queues and
    no batch forms while it runs: for small CPU inference with one instance, never for a GPU, whose work the loop
    should overlap with taking the next requests.
    """

    def __init__(
        self,
        run: RunBatch,
        executor: Executor,
        *,
        padded: Collection[str],
        max_batch_size: int,
        max_delay_s: float,
        max_cells: int,
        instances: int = 1,
        on_batch: Callable[[int], None] | None = None,
        inline_max_width: int = 0,
    ):
        if max_batch_size < 1 or max_cells < 1 or instances < 1 or max_delay_s < 0:
            raise ValueError("max_batch_size, max_cells and instances must be >= 1 and max_delay_s >= 0")
        self._run = run
        self._executor = executor
        self._padded = frozenset(padded)
        self.max_batch_size = max_batch_size
        self.max_delay_s = max_delay_s
        self.max_cells = max_cells
        self._slots = asyncio.Semaphore(instances)
        self._queue: deque[_Request] = deque()
        self._wake = asyncio.Event()
        self._dispatcher: asyncio.Task | None = None
        self._running: set[asyncio.Task] = set()
        self._closed = False
        #: Sizes (rows) of the latest batches, for tests and logs; ``on_batch`` sees every one (metrics).
        self.batch_sizes: deque[int] = deque(maxlen=10_000)
        self._on_batch = on_batch
        self.inline_max_width = inline_max_width

    async def submit(self, key: object, tensors: dict[str, np.ndarray], width: int) -> list[np.ndarray | None]:
        """Queues one request (every tensor has batch size 1) and returns its outputs, each [1, width]."""
        if self._closed:
            raise BatcherClosed("the model is shutting down")
        loop = asyncio.get_running_loop()
        idle = self.max_delay_s == 0 and not self._queue and not self._slots.locked()
        if idle and width <= self.inline_max_width:
            # Nothing else runs on the loop until this returns: no slot to hold, nobody can queue behind it.
            self._record(1)
            return self._run_padded([_Request(key, tensors, width, loop.time(), None)])[0]
        if self._dispatcher is None:
            self._dispatcher = loop.create_task(self._dispatch(), name="micro-batcher")
        request = _Request(key, tensors, width, loop.time(), loop.create_future())
        if idle:
            # An idle instance and nobody waiting: run at once, without the hop through the dispatcher. Requests
            # arriving meanwhile queue up and leave together as the next batch when this one is done.
            await self._slots.acquire()  # free, so this does not wait
            self._record(1)
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_padded, [request])
            finally:
                self._slots.release()
            return outputs[0]
        self._queue.append(request)
        self._wake.set()
        return await request.future

    async def close(self) -> None:
        self._closed = True
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            await asyncio.gather(self._dispatcher, return_exceptions=True)
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        while self._queue:
            request = self._queue.popleft()
            if not request.future.done():
                request.future.set_exception(BatcherClosed("the model is shutting down"))

    async def _dispatch(self) -> None:
        while True:
            while not self._queue:  # hold no inference slot while there is nothing to run
                self._wake.clear()
                await self._wake.wait()
            await self._slots.acquire()
            try:
                batch = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _next_batch(self) -> list[_Request]:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._wake.clear()
                await self._wake.wait()
            # The delay counts from the oldest request's arrival: one that waited for a busy slot goes at once.
            deadline = self._queue[0].enqueued + self.max_delay_s
            while len(self._queue) < self.max_batch_size:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                return batch

    def _take(self) -> list[_Request]:
        """The oldest live request and the queued ones that may join it; the rest stay queued, in order."""
        batch: list[_Request] = []
        kept: deque[_Request] = deque()
        widest = 0
        while self._queue:
            request = self._queue.popleft()
            if request.future.done():  # the caller gave up (deadline, cancellation): nothing to compute
                continue
            if not batch:
                batch.append(request)
                widest = request.width
                continue
            wider = max(widest, request.width)
            fits = (
                request.key == batch[0].key
                and len(batch) < self.max_batch_size
                and (len(batch) + 1) * max(wider, 1) <= self.max_cells
            )
            if fits:
                batch.append(request)
                widest = wider
            else:
                kept.append(request)
        self._queue = kept
        return batch

    async def _run_batch(self, batch: list[_Request]) -> None:
        loop = asyncio.get_running_loop()
        try:
            self._record(len(batch))
            try:
                outputs = await loop.run_in_executor(self._executor, self._run_padded, batch)
            except Exception as error:
                if len(batch) == 1:
                    _fail(batch[0], error)
                    return
                log.warning("a batch of %d failed (%s); running its requests one by one", len(batch), error)
                for request in batch:
                    if request.future.done():
                        continue
                    try:
                        alone = await loop.run_in_executor(self._executor, self._run_padded, [request])
                    except Exception as own_error:
                        _fail(request, own_error)
                    else:
                        _succeed(request, alone[0])
                return
            for request, result in zip(batch, outputs, strict=True):
                _succeed(request, result)
        finally:
            self._slots.release()

    def _record(self, size: int) -> None:
        self.batch_sizes.append(size)
        if self._on_batch is not None:
            self._on_batch(size)

    def _run_padded(self, batch: list[_Request]) -> list[list[np.ndarray | None]]:
        widest = max(request.width for request in batch)
        names = batch[0].tensors.keys()
        merged = {
            name: stack_rows([r.tensors[name] for r in batch], widest if name in self._padded else None)
            for name in names
        }
        outputs = self._run(batch[0].key, merged)
        return [
            [None if out is None else out[i : i + 1, : request.width] for out in outputs]
            for i, request in enumerate(batch)
        ]


def stack_rows(rows: list[np.ndarray], width: int | None) -> np.ndarray:
    """Rows (each with batch size 1) as one batch; with ``width``, axis 1 right-padded with zeros to it."""
    if len(rows) == 1 and (width is None or rows[0].shape[1] == width):
        return rows[0]
    if width is None:
        return np.concatenate(rows, axis=0)
    out = np.zeros((len(rows), width, *rows[0].shape[2:]), dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.shape[1]] = row[0]
    return out


def _succeed(request: _Request, result: list[np.ndarray | None]) -> None:
    if not request.future.done():
        request.future.set_result(result)


def _fail(request: _Request, error: BaseException) -> None:
    if not request.future.done():
        request.future.set_exception(error)
