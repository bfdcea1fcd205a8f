"""Adaptive server-side batching across concurrent requests.

Single-image requests are the common case, and on CPU a forward pass over 4-8 images costs far less per image
than 8 single ones. A batch opens when a worker slot is free and a request waits; it closes when it holds
`max_batch_size` images or `max_latency` after its first request, whichever comes first. While every slot is
busy requests queue up, so batches grow exactly when the server is saturated (TorchServe's batchSize /
maxBatchDelay semantics, counted in images instead of requests). A batch is processed in a worker thread
(decoding and ONNX Runtime release the GIL), so the event loop keeps accepting requests; one hand-off per request
and batch, as a TorchServe worker decodes and runs its own batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")  # one request's payload
R = TypeVar("R")  # its result


@dataclass
class _Job(Generic[T, R]):
    item: T
    size: int
    submitted: float = field(default_factory=time.perf_counter)
    future: asyncio.Future[tuple[R, float]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


class AdaptiveBatcher(Generic[T, R]):
    """Runs `process(items) -> results` (one result or exception per item) over batches of concurrent
    submissions, `workers` batches at a time."""

    def __init__(self, process: Callable[[list[T]], Sequence[R | BaseException]], max_batch_size: int,
                 max_latency_s: float, workers: int = 1) -> None:
        if max_batch_size < 1 or workers < 1 or max_latency_s < 0:
            raise ValueError("max_batch_size and workers must be >= 1, max_latency_s >= 0")
        self._process = process
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="batch")
        self._slots = asyncio.Semaphore(workers)
        self._queue: asyncio.Queue[_Job[T, R]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, item: T, size: int = 1) -> tuple[R, float]:
        """`item`'s result (or its exception raised here), and the seconds it queued before its batch started."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")
        job: _Job[T, R] = _Job(item, size)
        await self._queue.put(job)
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            size = batch[0].size
            deadline = loop.time() + self.max_latency_s
            while size < self.max_batch_size:
                try:
                    job = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    try:
                        job = await asyncio.wait_for(self._queue.get(), remaining)
                    except TimeoutError:
                        break
                batch.append(job)
                size += job.size
            task = asyncio.create_task(self._run(batch))
            task.add_done_callback(lambda _: self._slots.release())

    async def _run(self, batch: list[_Job[T, R]]) -> None:
        started = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(
                self._pool, self._process, [job.item for job in batch])
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
            results = [exc] * len(batch)
        for job, result in zip(batch, results, strict=True):
            if job.future.done():  # a cancelled client request
                continue
            if isinstance(result, BaseException):
                job.future.set_exception(result)
            else:
                job.future.set_result((result, started - job.submitted))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)


