"""Lean asyncio HTTP load generator for the benchmark (Locust is for `make loadtest`).

Locust's per-request Python overhead would take a big share of the 2 cores the server also needs, so
saturation is measured with aiohttp on pre-encoded bodies. Closed loop = N requests always in flight
(throughput at saturation); open loop = requests at a fixed arrival rate, latency counted from the
scheduled send time so a slow server cannot hide queueing (no coordinated omission).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import aiohttp
import numpy as np


@dataclass(frozen=True)
class Body:
    data: bytes
    content_type: str
    images: int = 1


@dataclass
class LoadResult:
    mode: str
    seconds: float
    requests: int
    errors: int
    images_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    concurrency: int = 0
    target_rps: float = 0.0

    def as_dict(self) -> dict:
        return asdict(self)


def corpus(n: int = 16, width: int = 640, height: int = 480) -> list[bytes]:
    """Photo-like JPEGs generated on the spot (no image files in git), 640x480 as in the issue's targets."""
    from tests.image_factory import jpeg

    return [jpeg(width, height, seed) for seed in range(n)]


def _summary(mode: str, lat: list[float], errors: int, images: int, seconds: float, requests: int | None = None,
             **kw: float) -> LoadResult:
    """`requests` defaults to every latency sample plus the errors (true when each success has one)."""
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    p50, p95, p99 = (float(np.percentile(arr, q)) for q in (50, 95, 99))
    requests = len(lat) + errors if requests is None else requests
    return LoadResult(mode, seconds, requests, errors, images / seconds, p50, p95, p99, **kw)


async def _post(session: aiohttp.ClientSession, url: str, body: Body) -> bool:
    async with session.post(url, data=body.data, headers={"Content-Type": body.content_type}) as resp:
        await resp.read()
        return resp.status == 200


def _session(limit: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit), timeout=aiohttp.ClientTimeout(total=120)
    )


async def closed_loop(
    url: str, bodies: Sequence[Body], concurrency: int, seconds: float, warmup: float = 3.0
) -> LoadResult:
    """`concurrency` requests always in flight for warmup + seconds; only the measured window counts.

    Counting only requests that also started in the window would drop the ~`concurrency` already in flight at
    its start: 3 % of a 3 s slice at 350 img/s."""
    lat: list[float] = []
    errors = images = done = 0
    cycle = itertools.cycle(bodies)
    async with _session(concurrency) as session:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def user() -> None:
            nonlocal errors, images, done
            while (t0 := time.perf_counter()) < stop_at:
                body = next(cycle)
                try:
                    ok = await _post(session, url, body)
                except (TimeoutError, aiohttp.ClientError):
                    ok = False
                t1 = time.perf_counter()
                if not measure_from <= t1 <= stop_at:
                    continue
                done += 1
                if ok:  # throughput = what completed in the window; latency only of what also started in it
                    images += body.images
                    if t0 >= measure_from:
                        lat.append(t1 - t0)
                else:
                    errors += 1

        await asyncio.gather(*(user() for _ in range(concurrency)))
    return _summary("closed", lat, errors, images, seconds, done, concurrency=concurrency)


async def open_loop(url: str, bodies: Sequence[Body], rate: float, seconds: float, warmup: float = 2.0) -> LoadResult:
    """Constant arrival rate `rate` req/s; latency from each request's scheduled time."""
    lat: list[float] = []
    errors = images = 0
    async with _session(1000) as session:
        start = time.perf_counter() + 0.05
        total = int((warmup + seconds) * rate)
        measure_from = start + warmup

        async def one(i: int, body: Body) -> None:
            nonlocal errors, images
            scheduled = start + i / rate
            await asyncio.sleep(max(0.0, scheduled - time.perf_counter()))
            try:
                ok = await _post(session, url, body)
            except (TimeoutError, aiohttp.ClientError):
                ok = False
            if scheduled >= measure_from:
                if ok:
                    lat.append(time.perf_counter() - scheduled)
                    images += body.images
                else:
                    errors += 1

        await asyncio.gather(*(one(i, b) for i, b in zip(range(total), itertools.cycle(bodies), strict=False)))
    return _summary("open", lat, errors, images, seconds, target_rps=rate)


def run(coro_factory: Callable[[], object]) -> LoadResult:
    return asyncio.run(coro_factory())  # type: ignore[arg-type]
