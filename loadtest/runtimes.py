"""`python -m loadtest.runtimes` (part of `make bench`): TorchServe vs the KServe ModelServer runtime, side by side.

Same archive (MobileNetV2, its int8 ONNX graph and threshold), same 640x480 JPEGs, same path
(`POST /v2/models/mobilenet_v2/infer` with raw bytes), one run. The runtimes alternate (A B B A) so the
machine's drift hits both; each figure is the better of a runtime's two passes. Measured per pass:
cold start to the first prediction, throughput at saturation, p95 at a fixed open-loop rate (half of the lower
saturation of the first two passes, so both runtimes get the same rate), and the RSS of every serving process.
The in-process ceiling of the same backend and batch layout (2 processes x 1 thread, batches of forward_batch
images) is measured after the passes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from loadtest import loadgen
from loadtest.bench import one_model_store, warm_up
from loadtest.ceiling import ceiling
from loadtest.torchserve_instance import (
    OURS_PORTS,
    ROOT,
    TorchServeInstance,
    build_archives,
    first_prediction_after,
)

MODEL = "mobilenet_v2"
KSERVE_HTTP, KSERVE_GRPC = 8380, 8386
RESULTS = ROOT / "loadtest" / "results"
BENCHMARKS = ROOT / "loadtest" / "BENCHMARKS.md"
BEGIN, END = "<!-- runtimes:begin -->", "<!-- runtimes:end -->"


class KServeInstance:
    """`python -m kserve_runtime` on its own ports with a one-model store."""

    def __init__(self, store: Path, workdir: Path) -> None:
        self.store, self.workdir = store, workdir
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self.url = f"http://127.0.0.1:{KSERVE_HTTP}"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "KSERVE_HOST": "127.0.0.1", "KSERVE_HTTP_PORT": str(KSERVE_HTTP),
               "KSERVE_GRPC_PORT": str(KSERVE_GRPC), "KSERVE_MODEL_STORE": str(self.store),
               "KSERVE_WORKDIR": str(self.workdir / "unpacked")}
        log = (self.workdir / "kserve.log").open("ab")
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen([sys.executable, "-m", "kserve_runtime"], cwd=ROOT, env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def wait_first_prediction(self, image: bytes, timeout_s: float = 120) -> float:
        return first_prediction_after(f"{self.url}/v2/models/{MODEL}/infer", image, self.proc, self.started_at,
                                      f"kserve runtime (log: {self.workdir}/kserve.log)", timeout_s)

    def memory_mb(self) -> list[dict[str, float]]:
        info = psutil.Process(self.proc.pid).memory_full_info() if self.proc else None
        return [{"rss": info.rss / 2**20, "uss": info.uss / 2**20}] if info else []

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def one_pass(runtime: str, store: Path, workdir: Path, bodies: list[loadgen.Body], concurrency: int,
             seconds: float, warmup_s: float, rate: float | None) -> dict[str, Any]:
    """Start the runtime, time its cold start, warm it up, saturate it, run the open loop, read its memory."""
    if runtime == "torchserve":
        inst: Any = TorchServeInstance(f"rt-{runtime}", store, OURS_PORTS, workdir / f"ts-{time.time_ns()}", {})
        inst.start()
        cold = inst.wait_first_prediction(MODEL, bodies[0].data)
    else:
        inst = KServeInstance(store, workdir / f"ks-{time.time_ns()}")
        inst.start()
        cold = inst.wait_first_prediction(bodies[0].data)
    url = f"{inst.url}/v2/models/{MODEL}/infer"
    try:
        warm_up(url, bodies, concurrency, warmup_s)
        sat = loadgen.run(lambda: loadgen.closed_loop(url, bodies, concurrency, seconds, warmup=1))
        target = rate if rate is not None else sat.images_per_s / 2
        half = loadgen.run(lambda: loadgen.open_loop(url, bodies, target, seconds))
        memory = inst.worker_memory_mb() if runtime == "torchserve" else inst.memory_mb()
        frontend = _frontend_rss_mb(inst) if runtime == "torchserve" else None
    finally:
        inst.stop()
    row = {"runtime": runtime, "cold_start_s": cold, "saturation": sat.as_dict(), "open_loop": half.as_dict(),
           "processes": memory, "frontend_rss_mb": frontend}
    print(f"{runtime:10s} cold {cold:5.1f} s | saturation {sat.images_per_s:6.1f} img/s (p95 {sat.p95_ms:.0f} ms, "
          f"err {sat.errors}) | open loop {target:.0f}/s p95 {half.p95_ms:.0f} ms err {half.errors} | "
          f"RSS {[round(m['rss']) for m in memory]} MB" + (f" + frontend {frontend:.0f} MB" if frontend else ""),
          flush=True)
    return row


def _frontend_rss_mb(inst: TorchServeInstance) -> float | None:
    """RSS of TorchServe's Java frontend (a child of the `torchserve` launcher)."""
    try:
        procs = psutil.Process(inst.proc.pid).children(recursive=True) if inst.proc else []
        return next((p.memory_info().rss / 2**20 for p in procs if p.name() == "java"), None)
    except psutil.Error:
        return None


def best(rows: list[dict[str, Any]], runtime: str) -> dict[str, float]:
    mine = [r for r in rows if r["runtime"] == runtime]
    return {
        "cold_start_s": min(r["cold_start_s"] for r in mine),
        "images_per_s": max(r["saturation"]["images_per_s"] for r in mine),
        "open_loop_rate": mine[-1]["open_loop"]["target_rps"],
        "open_loop_p95_ms": min(r["open_loop"]["p95_ms"] for r in mine if r["open_loop"]["target_rps"]),
        "max_process_rss_mb": max(p["rss"] for r in mine for p in r["processes"]),
        "frontend_rss_mb": max((r["frontend_rss_mb"] or 0) for r in mine),
    }


def markdown(res: dict[str, Any]) -> str:
    ts, ks, ceil = best(res["passes"], "torchserve"), best(res["passes"], "kserve"), res["ceiling_images_per_s"]
    rows = [
        ("throughput at saturation (img/s)", f"{ts['images_per_s']:.1f}", f"{ks['images_per_s']:.1f}",
         f"served / ceiling: TorchServe {ts['images_per_s'] / ceil:.2f}, KServe {ks['images_per_s'] / ceil:.2f} "
         f"(target >= 0.95; ceiling {ceil:.1f} img/s)"),
        (f"p95 at {ks['open_loop_rate']:.0f} req/s open loop (ms)", f"{ts['open_loop_p95_ms']:.0f}",
         f"{ks['open_loop_p95_ms']:.0f}", "target: KServe <= TorchServe at the same rate"),
        ("RSS per serving process (MB)", f"{ts['max_process_rss_mb']:.0f} per worker + {ts['frontend_rss_mb']:.0f} "
         "JVM", f"{ks['max_process_rss_mb']:.0f} (one process)", "target <= 350 MB with the ONNX backends"),
        ("cold start to first prediction (s)", f"{ts['cold_start_s']:.1f}", f"{ks['cold_start_s']:.1f}",
         "target <= 5 s"),
    ]
    lines = [BEGIN, "## Serving runtimes side by side: TorchServe vs KServe ModelServer",
             "", f"`make bench` ({res['when']}): {MODEL}, int8 ONNX, 640x480 JPEGs as raw bytes on "
             f"`/v2/models/{MODEL}/infer`, {res['concurrency']} in flight, {res['seconds']:.0f} s windows, passes "
             "A B B A, best of two per runtime. Reproduce: `.venv/bin/python -m loadtest.runtimes`.", "",
             "| | TorchServe 0.12 | KServe runtime | |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    lines += ["", "Every pass: " + "; ".join(
        f"{r['runtime']} {r['saturation']['images_per_s']:.1f} img/s, p95 {r['open_loop']['p95_ms']:.0f} ms, "
        f"cold {r['cold_start_s']:.1f} s" for r in res["passes"]) + ".", END]
    return "\n".join(lines)


def write_section(text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace the part of BENCHMARKS.md between `begin` and `end` (markers included in `text`), else append it."""
    doc = BENCHMARKS.read_text()
    if begin in doc:
        doc = doc[:doc.index(begin)] + text + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + text + "\n"
    BENCHMARKS.write_text(doc)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtest.runtimes", description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--warmup", type=float, default=30, help="unmeasured saturation first (TorchServe's JIT)")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--no-write", action="store_true", help="print only; leave loadtest/BENCHMARKS.md alone")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="bench-runtimes-"))
    store = one_model_store(build_archives.BUILD_DIR / "model-store", MODEL, workdir, "runtimes")
    bodies = [loadgen.Body(b, "image/jpeg") for b in loadgen.corpus()]
    passes: list[dict[str, Any]] = []
    rate = None
    for i, runtime in enumerate(("torchserve", "kserve", "kserve", "torchserve")):
        passes.append(one_pass(runtime, store, workdir, bodies, args.concurrency, args.seconds, args.warmup, rate))
        if i == 1:  # the same open-loop rate for everyone from here: half the lower saturation so far
            rate = min(p["saturation"]["images_per_s"] for p in passes) / 2
            passes[0]["open_loop"]["target_rps"] = passes[1]["open_loop"]["target_rps"] = 0  # not comparable
        if i == 1:
            print(f"open loop from now on: {rate:.0f} req/s", flush=True)
    int8 = build_archives.committed_int8_graph(MODEL)
    config = json.loads(json.dumps(build_archives.handler_config(MODEL)))
    batch = int(config.get("forward_batch") or 8)
    ceil = ceiling(MODEL, "onnx_int8" if int8 else "onnx", batch, 1, 2, args.seconds, str(int8 or ""))
    print(f"in-process ceiling (2 procs x 1 thread, batch {batch}): {ceil:.1f} img/s", flush=True)
    res = {"when": time.strftime("%Y-%m-%d %H:%M"), "seconds": args.seconds, "concurrency": args.concurrency,
           "passes": passes, "ceiling_images_per_s": ceil, "ceiling_batch": batch}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"runtimes-{time.strftime('%Y%m%d-%H%M%S')}.json").write_text(json.dumps(res, indent=2))
    text = markdown(res)
    print(text)
    if not args.no_write:
        write_section(text)


if __name__ == "__main__":
    main()
