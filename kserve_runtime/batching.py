"""Adaptive server-side batching across concurrent requests.

Single-image requests are the common case, and on CPU a forward pass over 4-8 images costs far less per image
than 8 single ones. A batch opens when a worker slot is free and a request waits; it closes when it holds
`max_batch_size` images or `max_latency` after its first request, whichever comes first. While every slot is
busy requests queue up, so batches grow exactly when the server is saturated (TorchServe's batchSize /
maxBatchDelay semantics, counted in images instead of requests). The forward pass runs in a thread (ONNX
Runtime releases the GIL), so the event loop keeps accepting requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class _Job:
    pixels: Sequence[Any]
    future: asyncio.Future[np.ndarray] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


class AdaptiveBatcher:
    """Runs `score(pixels) -> scores` over batches of concurrent submissions, `workers` batches at a time."""

    def __init__(self, score: Callable[[list[Any]], np.ndarray], max_batch_size: int, max_latency_s: float,
                 workers: int = 1, on_batch: Callable[[int, float], None] | None = None) -> None:
        if max_batch_size < 1 or workers < 1 or max_latency_s < 0:
            raise ValueError("max_batch_size and workers must be >= 1, max_latency_s >= 0")
        self._score = score
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._on_batch = on_batch  # (images, seconds) per forward call: metrics
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="forward")
        self._slots = asyncio.Semaphore(workers)
        self._queue: asyncio.Queue[_Job] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def submit(self, pixels: Sequence[Any]) -> np.ndarray:
        """Scores for `pixels` (one request's images), computed in whichever batch they land in."""
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="batcher")
        job = _Job(pixels)
        await self._queue.put(job)
        return await job.future

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._slots.acquire()
            batch = [await self._queue.get()]
            size = len(batch[0].pixels)
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
                size += len(job.pixels)
            task = asyncio.create_task(self._run(batch))
            task.add_done_callback(lambda _: self._slots.release())

    async def _run(self, batch: list[_Job]) -> None:
        pixels = [p for job in batch for p in job.pixels]
        t0 = time.perf_counter()
        try:
            scores = await asyncio.get_running_loop().run_in_executor(self._pool, self._score, pixels)
        except Exception as exc:  # noqa: BLE001 - every request of the batch learns why
            for job in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
            return
        if self._on_batch is not None:
            self._on_batch(len(pixels), time.perf_counter() - t0)
        start = 0
        for job in batch:
            if not job.future.done():  # a cancelled client request leaves its future done
                job.future.set_result(scores[start:start + len(job.pixels)])
            start += len(job.pixels)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=True)
