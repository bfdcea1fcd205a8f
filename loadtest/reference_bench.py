"""Bytes in the message vs a reference (s3:// key) through Kafka: what the claim-check pattern costs and saves.

For 640x480 JPEGs (the load tests' corpus) and for 8 MB photos (4000x3000 JPEGs of fine detail, made here), the
same images go through the `make up` bridge twice: once as raw bytes in the record, once uploaded to the local
object store (demo/s3.py's bucket) with only an `{"s3": ...}` envelope in the record, which the bridge fetches
(handlers/fetch.py). Reported per case: Kafka bytes moved (input record values; the predictions are the same
size either way, plus about 150 B of `reference` echo), bridge
throughput (N records produced at once / first produce -> last prediction; its p95 is mostly queueing) over
`--rounds` bursts per mode in ABBA order (the median round, and reference/bytes round by round), and end-to-end
p50/p95 (produce -> prediction) of a paced run below saturation. A warm-up precedes each case.

    scripts/s3.sh run python -m loadtest.reference_bench [--small 1200] [--large 60] [--rounds 3] [--json out.json]

(`scripts/s3.sh run` gives it the local store's endpoint and credentials, as `make up` gives the bridge.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from bridge.config import Config
from bridge.consume import open_consumer, rows
from demo.s3 import bucket
from handlers.fetch import FetchSettings, s3_client
from loadtest import stack_up
from loadtest.cpu import cores_by_role, cpu_limit, process_group
from loadtest.loadgen import corpus
from loadtest.runtimes import write_section

ROOT = Path(__file__).resolve().parent.parent
# one BENCHMARKS.md section per way of sharing the machine (the two answer different questions)
SECTIONS = {False: ("<!-- references:begin -->", "<!-- references:end -->"),
            True: ("<!-- references-serving-limited:begin -->", "<!-- references-serving-limited:end -->")}


def large_photos(n: int = 2, target_bytes: int = 8 * 1024 * 1024) -> list[bytes]:
    """JPEGs of about `target_bytes` (4000x3000 of fine detail at quality 95): what a phone upload weighs."""
    rng = np.random.default_rng(16)
    out = []
    for _ in range(n):
        base = rng.integers(0, 255, (3000 // 8, 4000 // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
        noise = rng.integers(-40, 40, base.shape, dtype=np.int16)
        img = Image.fromarray(np.clip(base.astype(np.int16) + noise, 0, 255).astype(np.uint8))
        for quality in (95, 90, 85, 80):
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=quality)
            if buf.tell() <= target_bytes * 1.15:
                break
        out.append(buf.getvalue())
    return out


def _run(cfg: Config, values: list[tuple[bytes, list[tuple[str, bytes]]]], n: int, timeout_s: float,
         rate: float | None = None) -> dict[str, Any]:
    """Produce n records (as fast as possible, or `rate`/s) and time each id until its prediction arrives."""
    from confluent_kafka import Producer

    consumer = open_consumer(cfg, [cfg.output_topic, cfg.dlq_topic], from_beginning=False)
    producer = Producer(cfg.producer_settings())
    run = uuid.uuid4().hex[:8]
    sent: dict[str, float] = {}
    done: dict[str, float] = {}
    failed = [0]

    def reader() -> None:
        for row in rows(consumer, cfg.dlq_topic, timeout_s):
            if row is not None and row.id in sent and row.id not in done:
                done[row.id] = time.perf_counter()
                failed[0] += 1 if row.dlq else 0
            if len(done) >= n:
                return

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    time.sleep(1.0)
    in_bytes = 0
    t0 = time.perf_counter()
    for i in range(n):
        if rate:
            time.sleep(max(0.0, t0 + i / rate - time.perf_counter()))
        key = f"refbench-{run}-{i}"
        value, headers = values[i % len(values)]
        if value.startswith(b"{"):  # an envelope: its own id
            value = value.replace(b'"id": "x"', f'"id": "{key}"'.encode())
        sent[key] = time.perf_counter()
        while True:
            try:
                producer.produce(cfg.input_topic, key=key.encode(), value=value, headers=headers)
                break
            except BufferError:
                producer.poll(0.05)
        in_bytes += len(value)
        producer.poll(0)
    producer.flush(60)
    thread.join(timeout_s)
    consumer.close()
    end = max(done.values()) if done else time.perf_counter()
    lat = np.array([done[k] - sent[k] for k in done]) * 1000 if done else np.array([float("nan")])
    return {"records": n, "received": len(done), "dead_lettered": failed[0],
            "kafka_input_bytes": in_bytes, "kafka_bytes_per_record": in_bytes / n,
            "images_per_s": len(done) / (end - t0), "p50_ms": float(np.percentile(lat, 50)),
            "p95_ms": float(np.percentile(lat, 95))}


def _case(cfg: Config, client: Any, case: str, images: list[bytes], n: int, rate: float, seconds: float,
          args: argparse.Namespace, results: dict[str, dict[str, Any]]) -> None:
    """Both modes of one case: warm-up, `--rounds` bursts in ABBA order, then a paced run per mode."""
    keys = []
    for i, data in enumerate(images):
        key = f"bench/{case}/{i}.jpg"
        client.put_object(Bucket=bucket(), Key=key, Body=data, ContentType="image/jpeg")
        keys.append(f"s3://{bucket()}/{key}")
    as_bytes = [(img, [("content-type", b"image/jpeg")]) for img in images]
    as_refs = [(json.dumps({"id": "x", "s3": k}).encode(), [("content-type", b"application/json")]) for k in keys]
    # Warm-up of both paths: JIT compilers, connections, model caches, and the bridge's S3 client and fetch
    # connections (built on the first reference). Warming only the bytes path put that one-time cost into the
    # reference burst.
    for values in (as_bytes, as_refs):
        _run(cfg, values, min(n, args.warmup), args.timeout)
    modes = {"bytes": as_bytes, "reference": as_refs}
    bursts: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for round_ in range(args.rounds):  # ABBA order: neither mode always runs first or on a warmer machine
        for mode in (list(modes) if round_ % 2 == 0 else list(modes)[::-1]):
            with cores_by_role() as cores:  # where the CPU goes: serving, broker, bridge, object store
                r = _run(cfg, modes[mode], n, args.timeout)
            bursts[mode].append(r | {"cores": cores})
            print(f"{case:8} {mode:9} round {round_ + 1}: {r['received']}/{r['records']} records, "
                  f"{r['images_per_s']:.1f} img/s; cores: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in sorted(cores.items()) if v >= 0.005), flush=True)
    for mode, values in modes.items():
        paced = _run(cfg, values, max(1, int(rate * seconds)), args.timeout, rate)
        runs = bursts[mode]
        r = dict(sorted(runs, key=lambda b: b["images_per_s"])[len(runs) // 2])  # the median round
        r |= {"images_per_s_rounds": [b["images_per_s"] for b in runs],
              "received": sum(b["received"] for b in runs), "records": sum(b["records"] for b in runs),
              "cores": {k: float(np.mean([b["cores"].get(k, 0.0) for b in runs]))
                        for k in set().union(*(b["cores"] for b in runs))},
              "image_bytes": int(np.mean([len(i) for i in images])), "paced_rate": rate,
              "paced_p50_ms": paced["p50_ms"], "paced_p95_ms": paced["p95_ms"],
              "paced_received": paced["received"], "paced_records": paced["records"]}
        results[f"{case} {mode}"] = r
        print(f"{case:8} {mode:9} {r['received']}/{r['records']} records, median {r['images_per_s']:.1f} img/s "
              f"(burst p95 {r['p95_ms']:.0f} ms); at {rate:g}/s p50 {paced['p50_ms']:.0f} ms, p95 "
              f"{paced['p95_ms']:.0f} ms; Kafka input {r['kafka_bytes_per_record']:,.0f} B/record", flush=True)
    ratios = [ref / b for ref, b in zip(results[f"{case} reference"]["images_per_s_rounds"],
                                        results[f"{case} bytes"]["images_per_s_rounds"], strict=True)]
    results[f"{case} reference"]["vs_bytes_by_round"] = ratios
    print(f"{case:8} reference / bytes by round: " + ", ".join(f"{x:.2f}" for x in ratios)
          + f" (median {float(np.median(ratios)):.2f})", flush=True)


def markdown(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| case | mode | Kafka input bytes / record | images/s (burst, median round) | reference / bytes by round "
             "| burst e2e p95 ms | paced rate /s | paced e2e p50 ms | paced e2e p95 ms |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        case, mode = name.split(" ")
        ratios = ", ".join(f"{x:.2f}" for x in r.get("vs_bytes_by_round", []))
        lines.append(f"| {case} | {mode} | {r['kafka_bytes_per_record']:,.0f} | {r['images_per_s']:.1f} | {ratios} "
                     f"| {r['p95_ms']:.0f} | {r['paced_rate']:g} | {r['paced_p50_ms']:.0f} | {r['paced_p95_ms']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.reference_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--small", type=int, default=1200,
                    help="records of 640x480 JPEGs per mode (a burst of a few seconds measures the pipeline filling "
                         "up more than its throughput)")
    ap.add_argument("--large", type=int, default=60, help="records of 8 MB photos per mode and round")
    ap.add_argument("--paced", type=float, nargs=2, default=(20.0, 0.5), metavar=("SMALL_RATE", "LARGE_RATE"),
                    help="records/s of the paced runs (latency below saturation), 5 s / 20 s of them per mode")
    ap.add_argument("--rounds", type=int, default=3,
                    help="bursts per mode, in ABBA order (bytes first, then reference first, ...); the table gives the "
                         "median round: one burst per mode on a shared machine is mostly noise")
    ap.add_argument("--serving-cores", type=float,
                    help="run the model server (TorchServe frontend and workers) under a CPU limit of this many cores "
                         "(a CFS quota, as a pod's limit; root, cgroup v1): the fetch's CPU then comes out of what the "
                         "pods beside it have, as on a cluster, instead of out of the model's")
    ap.add_argument("--warmup", type=int, default=600,
                    help="unmeasured records per mode before each case: a fresh stack's JVMs (TorchServe's frontend, "
                         "the broker) spend their first ~30 s under load compiling, which skewed the first round")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--if-running", action="store_true",
                    help="skip (exit 0) unless `make up` runs: TorchServe, the broker, the bridge, the object store "
                         "(make bench)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave loadtest/BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    why = stack_up.missing(bridge=True, object_store=True)
    if why:
        print(f"reference bench skipped: {why} (`make up` starts it)")
        return 0 if args.if_running else 1
    cfg = Config.from_env()
    client = s3_client(FetchSettings.from_env())
    results: dict[str, dict[str, Any]] = {}
    cases = (("640x480", corpus(8), args.small, args.paced[0], 5.0), ("8MB", large_photos(), args.large, args.paced[1],
                                                                        20.0))
    limit = contextlib.nullcontext() if not args.serving_cores else cpu_limit(
        process_group(int((ROOT / ".run" / "torchserve.pid").read_text())), args.serving_cores)
    with limit:
        for case, images, n, rate, seconds in cases:
            if n > 0:
                _case(cfg, client, case, images, n, rate, seconds, args, results)
    table = markdown(results)
    print("\n" + table)
    if not args.no_write and results:
        sharing, command = ((f"TorchServe under a CPU limit of {args.serving_cores:g} cores, as a pod's",
                             f'make bench-references REFERENCES_BENCH_ARGS="--serving-cores {args.serving_cores:g}"')
                            if args.serving_cores else
                            ("everything on the machine's shared cores", "make bench-references"))
        begin, end = SECTIONS[bool(args.serving_cores)]
        write_section(f"{begin}\n## Images by reference vs bytes in the record, through the bridge "
                      f"({time.strftime('%Y-%m-%d')}; {sharing})\n\n"
                      f"`{command}` (how to read it: [README.md](README.md#images-by-reference-make-bench-"
                      f"references)).\n\n{table}{end}", begin, end)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
