"""`python -m bridge.bench [--n N]`: is the bridge the bottleneck? Kafka path vs direct HTTP, same images.

1. direct: N small JPEGs straight to the endpoint (v2, BRIDGE_MAX_CONCURRENCY requests of
   BRIDGE_MAX_BATCH images) -> images/s the endpoint serves;
2. kafka: the same N into `image_data`, timed until every prediction is on `image_predictions`
   (needs the running bridge: `make up`) -> images/s end to end, and the ratio of the two.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time

import numpy as np
from confluent_kafka import Producer
from PIL import Image

from bridge.config import Config
from bridge.consume import open_consumer, rows
from bridge.inference import InferenceClient


def small_jpegs(n: int, side: int = 64) -> list[bytes]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=80)
        out.append(buf.getvalue())
    return out


async def direct(cfg: Config, images: list[bytes]) -> float:
    client = InferenceClient(cfg.inference_url, cfg.model, "v2", cfg.timeout_s, cfg.max_concurrency)
    batches = [images[i:i + cfg.max_batch] for i in range(0, len(images), cfg.max_batch)]
    sem = asyncio.Semaphore(cfg.max_concurrency)

    async def one(batch: list[bytes]) -> None:
        async with sem:
            await client.infer(batch)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(b) for b in batches))
    elapsed = time.perf_counter() - t0
    await client.close()
    return len(images) / elapsed


def through_kafka(cfg: Config, images: list[bytes], timeout_s: float) -> float:
    consumer = open_consumer(cfg, [cfg.output_topic, cfg.dlq_topic], from_beginning=False)
    run = time.strftime("bench-%H%M%S-")
    ids = {f"{run}{i}" for i in range(len(images))}
    producer = Producer(cfg.producer_settings())
    t0 = time.perf_counter()
    for i, img in enumerate(images):
        headers = [("content-type", b"image/jpeg")]
        producer.produce(cfg.input_topic, key=f"{run}{i}".encode(), value=img, headers=headers)
        producer.poll(0)
    producer.flush(60)
    seen: set[str] = set()
    for row in rows(consumer, cfg.dlq_topic, timeout_s):
        if row is not None and row.id in ids:
            seen.add(row.id)
        if seen == ids:
            break
    elapsed = time.perf_counter() - t0
    consumer.close()
    if seen != ids:
        raise SystemExit(f"only {len(seen)}/{len(ids)} predictions within {timeout_s}s: is the bridge up?")
    return len(images) / elapsed


def main(argv: list[str] | None = None) -> None:
    cfg = Config.from_env()
    ap = argparse.ArgumentParser(prog="python -m bridge.bench", description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args(argv)
    images = small_jpegs(args.n)
    http = asyncio.run(direct(cfg, images))
    print(f"direct HTTP ({cfg.model}, v2, {cfg.max_concurrency}x{cfg.max_batch}): {http:.1f} img/s")
    kafka = through_kafka(cfg, images, args.timeout)
    print(f"through Kafka + bridge: {kafka:.1f} img/s ({kafka / http:.0%} of direct)")


if __name__ == "__main__":
    main()
