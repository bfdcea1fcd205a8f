"""Benchmark: the Spark consumer (both modes) vs the bridge vs direct HTTP, and the backfill vs the in-process
ceiling, side by side in one run on the `make up` serving stack (TorchServe on :TORCHSERVE_INFERENCE_PORT) and
broker.

    python -m loadtest.spark_bench [--records 600] [--rate 10] [--backfill-images 1600]

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

from bridge.config import Config
from handlers.stack import url
from loadtest import loadgen, stack_up
from loadtest.cpu import cores_by_role
from loadtest.kafka_bench import produce_and_collect
from loadtest.runtimes import write_section
from tests.kafka_support import BOOTSTRAP, BridgeProcess, Topics
from tests.spark_support import SparkProcess

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "loadtest" / "results" / "spark-bench.json"
MODEL = "mobilenet_v2"


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
    """The backfill over n generated 640x480 JPEGs vs the same scoring code in this process. The CLI's wall time
    (a fresh JVM: Spark's start, JIT warm-up, a model load per Python worker) and, in one session warmed by a
    small run first, the job's steady rate: what a large backlog sees."""
    from streaming.backfill import backfill
    from streaming.config import StreamingSettings
    from streaming.inprocess import InProcessClassifier, score_images
    from streaming.session import session

    images = loadgen.corpus(16)
    with tempfile.TemporaryDirectory() as tmp:
        folder, warm = Path(tmp) / "images", Path(tmp) / "warm"
        folder.mkdir()
        warm.mkdir()
        for i in range(n):
            (folder / f"img-{i:05d}.jpg").write_bytes(images[i % len(images)])
        for i in range(64):
            (warm / f"warm-{i:03d}.jpg").write_bytes(images[i % len(images)])
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "streaming.backfill", "--images", str(folder), "--out",
                        str(Path(tmp) / "cli")], cwd=ROOT, capture_output=True, text=True, check=True)
        wall = time.perf_counter() - t0
        settings = StreamingSettings.from_env()
        spark = session(settings, "spark-bench-backfill", kafka=False)
        try:
            backfill(spark, [str(warm)], Path(tmp) / "warm-out", MODEL, settings.model_store)
            job = backfill(spark, [str(folder)], Path(tmp) / "out", MODEL, settings.model_store)
        finally:
            spark.stop()
        scorer = InProcessClassifier(settings.model_store).scorer(MODEL)
        data = [p.read_bytes() for p in sorted(folder.glob("*.jpg"))]
        score_images(scorer, data[:32])  # warm
        t1 = time.perf_counter()
        for i in range(0, len(data), 32):
            score_images(scorer, data[i:i + 32])
        ceiling = len(data) / (time.perf_counter() - t1)
    out = {"images": n, "job_images_per_s": job["images_per_s"], "wall_s": round(wall, 1),
           "wall_images_per_s": round(n / wall, 2), "ceiling_images_per_s": round(ceiling, 2)}
    print(f"backfill         {n} images: warm job {job['images_per_s']:.1f} img/s | CLI {wall:.0f} s wall with "
          f"Spark's start ({n / wall:.1f} img/s) | in-process ceiling (1 process, 1 thread) {ceiling:.1f} img/s",
          flush=True)
    return out


BEGIN, END = "<!-- spark:begin -->", "<!-- spark:end -->"


def markdown(res: dict[str, Any]) -> str:
    if "consumers" not in res or "backfill" not in res:
        return ""
    rate = res["rate"]
    rows = [BEGIN, f"## Spark consumer and backfill vs the bridge and direct HTTP ({time.strftime('%Y-%m-%d')})", "",
            f"`make bench-spark` (`python -m loadtest.spark_bench`): raw 640x480 JPEGs, MobileNetV2, each consumer "
            f"alone on private topics against `make up`'s TorchServe; saturation = {res['records']} records "
            f"produced at once, then the same input rate ({rate:g}/s) for every path. Latency is produce -> "
            "prediction (direct HTTP: scheduled send -> answer). Reading: streaming/README.md.", "",
            "| path | start (s) | saturation img/s | saturation p95 (ms) | p50 at "
            f"{rate:g}/s (ms) | p95 at {rate:g}/s (ms) |", "|---|---:|---:|---:|---:|---:|"]
    for name, r in res["consumers"].items():
        sat, paced = r["saturation"], r["paced"]
        rows.append(f"| {name} | {r.get('start_s', '')} | {sat['images_per_s']:.1f} | {sat['p95_ms']:.0f} | "
                    f"{paced['p50_ms']:.0f} | {paced['p95_ms']:.0f} |")
    b = res["backfill"]
    rows += ["", f"Backfill of {b['images']} 640x480 JPEGs: {b['job_images_per_s']:.1f} img/s in a warm Spark "
                 f"session; the CLI from a cold start {b['wall_s']:.0f} s ({b['wall_images_per_s']:.1f} img/s); "
                 f"in-process ceiling of the same code, one process and thread, {b['ceiling_images_per_s']:.1f} img/s.",
             END]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--records", type=int, default=600, help="records of the saturation run, per consumer")
    p.add_argument("--rate", type=float, default=10.0, help="input rate of the paced run (records/s), for all")
    p.add_argument("--warmup", type=int, default=60, help="records per consumer before measuring")
    p.add_argument("--backfill-images", type=int, default=1600,
                   help="enough that the job's fixed costs (Python workers, model load per worker) are amortised")
    p.add_argument("--parts", default="consumers,backfill", help="what to run (comma-separated)")
    p.add_argument("--if-running", action="store_true", help="skip (exit 0) unless `make up` runs (make bench)")
    args = p.parse_args(argv)
    why = stack_up.missing()
    if why:
        print(f"spark bench skipped: {why} (`make up` starts it; `make bench-spark` does both)")
        if args.if_running:
            return {"skipped": why}
        raise SystemExit(1)
    parts = set(args.parts.split(","))
    res: dict[str, Any] = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}  # parts not rerun stay
    res |= {"rate": args.rate, "records": args.records}
    if "consumers" in parts:
        res["consumers"] = consumer_runs(args.records, args.rate, args.warmup)
    if "backfill" in parts:
        res["backfill"] = backfill_run(args.backfill_images)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(res, indent=2) + "\n")
    text = markdown(res)
    print(text)
    if text:
        write_section(text, BEGIN, END)
    return res


if __name__ == "__main__":
    main()
