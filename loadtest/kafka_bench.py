"""Benchmark part 4: Kafka end to end through our bridge vs the reference design's naive consumer.

Both read the same kind of records (raw 640x480 JPEG, `content-type` header, key = id; bridge/contract.py)
and publish JSON predictions. The bridge is the one `make up` runs (image_data -> image_predictions).
The naive consumer is the reference system's loop: poll one record, POST it to the inference endpoint,
wait, produce the prediction, commit, next; it runs here on private topics so the bridge never sees them.
Throughput = N records / (first produce -> last prediction); latency = produce -> prediction per id.

One point alone, against whatever bridge `make up` runs (e.g. after `BRIDGE_MAX_CONCURRENCY=8
scripts/bridge.sh restart`), for A/B runs of a bridge setting:

    python -m loadtest.kafka_bench --records 4000 [--rate 150]
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from typing import Any

import httpx
import numpy as np

from bridge.config import Config
from bridge.consume import open_consumer, rows
from handlers.stack import url
from loadtest.cpu import cores_by_role
from loadtest.loadgen import corpus

NAIVE_IN, NAIVE_OUT = "bench.naive.image_data", "bench.naive.image_predictions"


def _stats(lat: list[float], n: int, seconds: float) -> dict[str, float]:
    arr = np.array(lat) * 1000 if lat else np.array([float("nan")])
    return {"images_per_s": len(lat) / seconds if seconds else 0.0, "received": len(lat), "sent": n,
            "p50_ms": float(np.percentile(arr, 50)), "p95_ms": float(np.percentile(arr, 95)),
            "p99_ms": float(np.percentile(arr, 99))}


def produce_and_collect(cfg: Config, in_topic: str, out_topics: list[str], dlq: str, n: int, rate: float | None,
                         timeout_s: float) -> dict[str, float]:
    """Produce n images (as fast as possible, or at `rate`/s) and time each id until its prediction arrives."""
    from confluent_kafka import Producer

    images = corpus(8)
    consumer = open_consumer(cfg, out_topics, from_beginning=False)
    producer = Producer(cfg.producer_settings())
    run = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    done: dict[str, float] = {}

    def reader() -> None:
        for row in rows(consumer, dlq, timeout_s):
            if row is not None and row.id in sent and row.id not in done:
                done[row.id] = time.perf_counter()
            if len(done) >= n:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(1.0)  # consumer assigned before the first record
    t0 = time.perf_counter()
    for i in range(n):
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        key = f"bench-{run}-{i}"
        sent[key] = time.perf_counter()
        producer.produce(in_topic, key=key.encode(), value=images[i % len(images)],
                         headers=[("content-type", b"image/jpeg")])
        producer.poll(0)
    producer.flush(30)
    thread.join(timeout_s)
    consumer.close()
    end = max(done.values()) if done else time.perf_counter()
    return _stats([done[k] - sent[k] for k in done], n, end - t0)


def naive_consumer(cfg: Config, model: str, stop: threading.Event) -> None:
    """The reference design: one record at a time, synchronous HTTP, commit after each."""
    from confluent_kafka import Consumer, Producer

    consumer = Consumer({**cfg.consumer_settings(), "group.id": f"bench-naive-{uuid.uuid4().hex[:6]}",
                         "enable.auto.commit": False, "auto.offset.reset": "latest"})
    consumer.subscribe([NAIVE_IN])
    producer = Producer(cfg.producer_settings())
    endpoint = f"{url('TORCHSERVE_INFERENCE_PORT')}/v1/models/{model}:predict"  # what `make up`'s bridge calls
    with httpx.Client(timeout=60) as http:
        while not stop.is_set():
            msg = consumer.poll(0.2)
            if msg is None or msg.error():
                continue
            t0 = time.perf_counter()
            resp = http.post(endpoint, content=msg.value(), headers={"Content-Type": "image/jpeg"})
            pred = resp.json()
            pred |= {"id": msg.key().decode(), "inference_ms": (time.perf_counter() - t0) * 1000}
            producer.produce(NAIVE_OUT, key=msg.key(), value=json.dumps(pred).encode())
            producer.flush(10)
            consumer.commit(msg, asynchronous=False)
    consumer.close()


def _ensure_topics(cfg: Config) -> None:
    from confluent_kafka.admin import AdminClient

    from bridge.topics import ensure_topics

    ensure_topics(AdminClient(cfg.client_settings()), {NAIVE_IN: 1, NAIVE_OUT: 1}, cfg.max_message_bytes)


def bridge_point(cfg: Config, n: int, rate: float | None) -> dict[str, float]:
    """n records through the bridge `make up` runs (image_data -> image_predictions, or the DLQ)."""
    return produce_and_collect(cfg, cfg.input_topic, [cfg.output_topic, cfg.dlq_topic], cfg.dlq_topic, n, rate, 300)


def run(models: list[str], seconds: float, served: dict[str, Any], warmup_s: float = 40.0) -> dict[str, Any]:
    """Bridge at saturation and at half its rate, then the naive consumer; skipped when `make up` lacks Kafka.

    `make up`'s TorchServe may not have served anything yet: the bridge first runs `warmup_s` worth of
    records at saturation, unmeasured, so its JVM has compiled the inference path (as in the served runs)."""
    cfg = Config.from_env()
    try:
        if httpx.get(f"http://{cfg.host}:{cfg.port}/readyz", timeout=3).status_code != 200:
            return {"skipped": "bridge not ready (`make up` starts broker + bridge)"}
    except httpx.HTTPError:
        return {"skipped": "bridge not running (`make up` starts broker + bridge)"}
    out: dict[str, Any] = {}
    model = cfg.model
    # As many records as direct HTTP serves in `seconds`, so the ramp-up (group join, first fetches) is a
    # small part of the run and the throughputs compare.
    direct = (served.get(model) or {}).get("ours", {}).get("saturation", {}).get("images_per_s") or 20.0
    n = max(200, int(seconds * direct))
    if warmup_s > 0:
        bridge_point(cfg, int(warmup_s * direct), None)
    with cores_by_role() as cores:
        bridge = bridge_point(cfg, n, None)
    bridge["cores"] = cores
    bridge["half_rate"] = max(1.0, bridge["images_per_s"] / 2)
    bridge["half_p95_ms"] = bridge_point(cfg, max(20, n // 2), bridge["half_rate"])["p95_ms"]
    _ensure_topics(cfg)
    stop = threading.Event()
    worker = threading.Thread(target=naive_consumer, args=(cfg, model, stop), daemon=True)
    worker.start()
    time.sleep(5)  # group join
    naive = produce_and_collect(cfg, NAIVE_IN, [NAIVE_OUT], cfg.dlq_topic, max(30, n // 3), None, 300)
    stop.set()
    worker.join(30)
    out[model] = {"bridge": bridge, "naive": naive}
    print(f"kafka {model}: bridge {bridge['images_per_s']:.1f} img/s p95 {bridge['p95_ms']:.0f} ms "
          f"(half load p95 {bridge['half_p95_ms']:.0f} ms) | naive {naive['images_per_s']:.1f} img/s "
          f"p95 {naive['p95_ms']:.0f} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description="one bridge load point: produce N records, time each prediction")
    p.add_argument("--records", type=int, default=4000)
    p.add_argument("--rate", type=float, help="records/s (default: as fast as possible = saturation)")
    args = p.parse_args(argv)
    with cores_by_role() as cores:
        point = bridge_point(Config.from_env(), args.records, args.rate)
    print(json.dumps({k: round(v, 1) for k, v in point.items()}))
    print("cores by role:", json.dumps({k: round(v, 2) for k, v in cores.items()}))
    return point


if __name__ == "__main__":
    main()
