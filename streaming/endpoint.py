"""Endpoint mode: each partition calls the KServe endpoint (v2, or v1) in batches, like the bridge does.

Batches of up to BRIDGE_MAX_BATCH images (and BRIDGE_MAX_BATCH_BYTES), at most BRIDGE_MAX_CONCURRENCY requests in
flight per executor process, the bridge's client (`bridge.inference`) and failure rules (`bridge.outcome.blame`
and `decide`): transient failures retried with backoff and jitter, a 4xx naming an image dead-letters that
image alone, "endpoint down" waits for the model's readiness before anything more is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from bridge.config import Config
from bridge.inference import EndpointError, InferenceClient
from bridge.outcome import Action, Failure, Kind, Stage, backoff, blame, decide, error_text
from streaming.process import Work, policy

log = logging.getLogger("streaming")
DOWN_LOG_INTERVAL_S = 30.0


def batches(works: Sequence[Work], max_batch: int, max_bytes: int) -> list[list[Work]]:
    """Consecutive works in requests of at most `max_batch` images and `max_bytes` bytes (a larger image alone)."""
    out: list[list[Work]] = []
    current: list[Work] = []
    size = 0
    for w in works:
        n = len(w.image)
        if current and (len(current) >= max_batch or size + n > max_bytes):
            out.append(current)
            current, size = [], 0
        current.append(w)
        size += n
    if current:
        out.append(current)
    return out


class EndpointClassifier:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.models = cfg.models
        self.client = InferenceClient(cfg.inference_url, cfg.model, cfg.protocol, cfg.timeout_s, cfg.max_concurrency,
                                      cfg.ready_path)
        self._ready = False  # checked before the first request, like the bridge before it consumes
        self._probe_lock: asyncio.Lock | None = None
        self._slots: asyncio.Semaphore | None = None

    async def classify(self, model: str, works: Sequence[Work]) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.cfg.max_concurrency)
        await asyncio.gather(*(self._send(model, b) for b in batches(works, self.cfg.max_batch,
                                                                      self.cfg.max_batch_bytes)))

    async def _send(self, model: str, batch: list[Work]) -> None:
        await self._wait_ready()
        assert self._slots is not None
        async with self._slots:
            t0 = time.perf_counter()
            try:
                preds = await self.client.infer([w.image for w in batch], batch[0].record.id, model)  # type: ignore[union-attr]
            except EndpointError as exc:
                failure = exc
            else:
                ms = (time.perf_counter() - t0) * 1000
                for w, pred in zip(batch, preds, strict=True):
                    w.predicted(pred, ms, len(batch))
                return
        await self._failed(model, batch, failure)

    async def _failed(self, model: str, batch: list[Work], exc: EndpointError) -> None:
        charged = blame(len(batch), exc.transient, exc.index)
        if charged.solo:  # the endpoint did not say which image: one by one
            await asyncio.gather(*(self._send(model, [w]) for w in batch))
            return
        if exc.transient and exc.endpoint_down:
            self._ready = False
        kind = Kind.TRANSIENT if exc.transient else Kind.PERMANENT
        again: list[Work] = []
        delay = 0.0
        for i in charged.culprits:
            w = batch[i]
            w.attempts += 1
            decision = decide(Failure(Stage.INFERENCE, kind, exc.reason, w.attempts), policy(self.cfg))
            if decision.action is Action.RETRY:
                again.append(w)
                delay = max(delay, decision.delay_s)
            else:
                w.fail(decision.reason, error_text(decision, exc.reason, exc.message), exc.status)
        tasks = []
        if charged.resend:  # innocent: at once
            tasks.append(self._send(model, [batch[i] for i in charged.resend]))
        if again:
            tasks.append(self._retry(model, again, delay))
        await asyncio.gather(*tasks)

    async def _retry(self, model: str, works: list[Work], delay: float) -> None:
        await asyncio.sleep(delay)
        await asyncio.gather(*(self._send(model, b) for b in batches(works, self.cfg.max_batch,
                                                                      self.cfg.max_batch_bytes)))

    async def _wait_ready(self) -> None:
        """Until the model's readiness answers: nothing is sent (or charged) while nobody serves."""
        if self._ready:
            return
        if self._probe_lock is None:
            self._probe_lock = asyncio.Lock()
        async with self._probe_lock:
            attempt, since, logged = 0, time.monotonic(), 0.0
            while not self._ready:
                if await self.client.ready():
                    self._ready = True
                    if attempt:
                        log.info("inference endpoint ready", extra={"url": self.client.ready_url})
                    return
                attempt += 1
                waited = time.monotonic() - since
                if waited - logged >= DOWN_LOG_INTERVAL_S or attempt == 1:
                    logged = waited
                    log.warning("inference endpoint not ready: waiting", extra={"url": self.client.ready_url,
                                                                                 "waited_s": round(waited, 1)})
                await asyncio.sleep(max(0.2, backoff(attempt, self.cfg.backoff_s, min(5.0, self.cfg.backoff_max_s))))
