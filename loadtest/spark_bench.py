"""Benchmark: the Spark consumer (both modes) vs the bridge vs direct HTTP, and the backfill vs the in-process
ceiling, side by side in one run on the `make up` serving stack (TorchServe on :TORCHSERVE_INFERENCE_PORT) and
broker.

    python -m loadtest.spark_bench [--records 600] [--rate 10] [--backfill-images 400]

Each consumer runs alone on private topics, started here as `make up` would start it (the bridge, then
`python -m streaming` with STREAMING_INFERENCE=endpoint, then inprocess), on raw 640x480 JPEGs:
- saturation: `--records` produced as fast as possible; throughput = records / (first produce -> last output);
- paced: the same input rate for every consumer and for direct HTTP (`--rate` records/s, open loop), end-to-end
  p50/p95 from each record's produce to its prediction (direct HTTP: from its scheduled send to its answer).
A warm-up batch per consumer is not measured (Spark's first micro-batch starts its Python workers).
Backfill: `--backfill-images` JPEGs in a folder through `python -m streaming.backfill`, against the ceiling of
the same scoring code in one process (`streaming.inprocess.score_images`, batches of 32) on the same images.
Results: loadtest/results/spark-bench.json and the Spark section of loadtest/BENCHMARKS.md (printed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from bridge.config import Config
from handlers.stack import url
from loadtest import loadgen
from loadtest.cpu import cores_by_role
from loadtest.kafka_bench import produce_and_collect
from tests.kafka_support import BOOTSTRAP, BridgeProcess, Topics
from tests.spark_support import SparkProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results" / "spark-bench.json"
MODEL = "mobilenet_v2"


def stack_missing() -> str | None:
    """Why the stack this bench needs (TorchServe, the broker) is not there, or None."""
    from confluent_kafka.admin import AdminClient

    try:
        if httpx.get(f"{url('TORCHSERVE_INFERENCE_PORT')}/ping", timeout=3).status_code != 200:
            return "TorchServe is not ready"
    except httpx.HTTPError:
        return "TorchServe is not running"
    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=5)
    except Exception:
        return "the Kafka broker is not running"
    return None


def consumer_runs(records: int, rate: float, warmup: int) -> dict[str, Any]:
    endpoint = url("TORCHSERVE_INFERENCE_PORT")  # what `make up`'s bridge and Spark call: TorchServe itself
    cfg = Config.from_env()
    out: dict[str, Any] = {}
    for name in ("bridge", "spark-endpoint", "spark-inprocess"):
        topics = Topics.create(BOOTSTRAP)
        with tempfile.TemporaryDirectory() as tmp:
            if name == "bridge":
                consumer: BridgeProcess | SparkProcess = BridgeProcess(topics, BOOTSTRAP, endpoint,
                                                                       INFERENCE_READY_PATH="/ping")
            else:
                consumer = SparkProcess(topics, BOOTSTRAP, endpoint, Path(tmp) / "checkpoint",
                                        name.removeprefix("spark-"), INFERENCE_READY_PATH="/ping",
                                        STREAMING_STARTING_OFFSETS="latest")
            t0 = time.perf_counter()
            consumer.start()
            started_s = time.perf_counter() - t0
            try:
                io = (cfg, topics.input, [topics.output, topics.dlq], topics.dlq)
                produce_and_collect(*io, warmup, None, 300)
                with cores_by_role() as cores:
                    sat = produce_and_collect(*io, records, None, 600)
                paced = produce_and_collect(*io, max(50, int(rate * 30)), rate, 300)
            finally:
                consumer.stop_quietly()
        out[name] = {"start_s": round(started_s, 1), "saturation": sat, "paced": paced, "cores": cores}
        print(f"{name:16s} start {started_s:5.1f} s | saturation {sat['images_per_s']:6.1f} img/s "
              f"p95 {sat['p95_ms']:6.0f} ms | at {rate:g}/s: p50 {paced['p50_ms']:5.0f} ms p95 "
              f"{paced['p95_ms']:5.0f} ms ({paced['received']}/{paced['sent']})", flush=True)
    bodies = [loadgen.Body(b, "image/jpeg") for b in loadgen.corpus(8)]
    direct_url = f"{endpoint}/predictions/{MODEL}"
    loadgen.run(lambda: loadgen.closed_loop(direct_url, bodies, 8, 5))  # warm
    sat = loadgen.run(lambda: loadgen.closed_loop(direct_url, bodies, 8, 20))
    paced = loadgen.run(lambda: loadgen.open_loop(direct_url, bodies, rate, 30))
    out["direct-http"] = {"saturation": sat.as_dict(), "paced": paced.as_dict()}
    print(f"{'direct HTTP':16s} saturation (8 in flight) {sat.images_per_s:6.1f} img/s | at {rate:g}/s: "
          f"p50 {paced.p50_ms:5.0f} ms p95 {paced.p95_ms:5.0f} ms", flush=True)
    return out


def backfill_run(n: int) -> dict[str, Any]:
    """The backfill over n generated 640x480 JPEGs vs the same scoring code in this process."""
    from streaming.inprocess import InProcessClassifier, score_images

    images = loadgen.corpus(16)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i in range(n):
            (folder / f"img-{i:05d}.jpg").write_bytes(images[i % len(images)])
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "streaming.backfill", "--images", str(folder), "--out",
                               str(Path(tmp) / "out")], cwd=ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        line = next(x for x in proc.stdout.splitlines() + proc.stderr.splitlines() if "images/s" in x)
        job_rate = float(line.split("│")[2].split("images/s")[0])
        scorer = InProcessClassifier(ROOT / "model-archive" / "build" / "model-store").scorer(MODEL)
        data = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        score_images(scorer, data[:32])  # warm
        t1 = time.perf_counter()
        for i in range(0, len(data), 32):
            score_images(scorer, data[i:i + 32])
        ceiling = len(data) / (time.perf_counter() - t1)
    out = {"images": n, "job_images_per_s": job_rate, "wall_s": round(wall, 1),
           "wall_images_per_s": round(n / wall, 2), "ceiling_images_per_s": round(ceiling, 2)}
    print(f"backfill         {n} images: job {job_rate:.1f} img/s, {wall:.0f} s wall with Spark start "
          f"({n / wall:.1f} img/s) | in-process ceiling (1 process) {ceiling:.1f} img/s", flush=True)
    return out


def markdown(res: dict[str, Any]) -> str:
    rate = res["rate"]
    rows = ["| path | start (s) | saturation img/s | saturation p95 (ms) | p50 at "
            f"{rate:g}/s (ms) | p95 at {rate:g}/s (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in res["consumers"].items():
        sat, paced = r["saturation"], r["paced"]
        rows.append(f"| {name} | {r.get('start_s', '')} | {sat['images_per_s']:.1f} | {sat['p95_ms']:.0f} | "
                    f"{paced['p50_ms']:.0f} | {paced['p95_ms']:.0f} |")
    b = res["backfill"]
    rows += ["", f"Backfill of {b['images']} 640x480 JPEGs: {b['job_images_per_s']:.1f} img/s in the Spark job "
                 f"({b['wall_images_per_s']:.1f} img/s counting the {b['wall_s']:.0f} s with Spark's start), "
                 f"in-process ceiling of the same code in one process {b['ceiling_images_per_s']:.1f} img/s."]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=600, help="records of the saturation run, per consumer")
    p.add_argument("--rate", type=float, default=10.0, help="input rate of the paced run (records/s), for all")
    p.add_argument("--warmup", type=int, default=60, help="records per consumer before measuring")
    p.add_argument("--backfill-images", type=int, default=400)
    p.add_argument("--if-running", action="store_true", help="skip (exit 0) unless `make up` runs (make bench)")
    args = p.parse_args(argv)
    why = stack_missing()
    if why:
        print(f"spark bench skipped: {why} (`make up` starts it; `make bench-spark` does both)")
        if args.if_running:
            return {"skipped": why}
        raise SystemExit(1)
    res = {"rate": args.rate, "records": args.records,
           "consumers": consumer_runs(args.records, args.rate, args.warmup),
           "backfill": backfill_run(args.backfill_images)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    return res


if __name__ == "__main__":
    main()
