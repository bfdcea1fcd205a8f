"""`make bench`: one run, same cores, side by side (issue 6).

1. ceiling  - in-process decode + preprocess + forward, both models, each backend, batch 1 and batch 8
              (ONNX also 4 and 16),
              one process with all threads or one process per core (what TorchServe workers do);
              loadtest/ceiling.py;
2. ours     - our handler in a fresh TorchServe (own ports, see torchserve_instance.Ports) at saturation,
              then the sweep's fastest configurations interleaved with served slices (served / ceiling),
              then open loop at half that throughput (the latency SLO point);
3. stock    - TorchServe's stock image_classifier handler, same weights (TorchScript), same workers,
              threads, batching and load;
4. kafka    - end to end through the bridge vs a naive one-at-a-time consumer (loadtest/kafka_bench.py),
              when the broker and bridge of `make up` are running.
Writes results.json, BENCHMARKS.md and chart.png to loadtest/results/bench-<timestamp>/ and copies the
markdown to loadtest/BENCHMARKS.md. Load average is recorded: the machine is shared, numbers are noisy.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from loadtest import loadgen  # noqa: E402
from loadtest.ceiling import best_row, ceiling_configs, interleaved, run_ceilings  # noqa: E402
from loadtest.cpu import JIT, JIT_OF, LOADGEN, MACHINE, ROLES, cores_by_role  # noqa: E402
from loadtest.loadgen import corpus  # noqa: E402
from loadtest.torchserve_instance import (  # noqa: E402
    OURS_PORTS,
    STOCK_PORTS,
    TorchServeInstance,
    build_archives,
    import_torch_rss_mb,
)

RESULTS = ROOT / "loadtest" / "results"
OUR_STORE = ROOT / "model-archive" / "build" / "model-store"
MODELS = ("mobilenet_v2", "resnet50")


def serving_config(model: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "model-archive" / "config" / f"{model}.yaml").read_text())


# ---- 2./3. served: ours vs stock ------------------------------------------------------------------


def build_stock_store(model: str, workdir: Path) -> Path:
    """Same weights as our archive, TorchScript, stock image_classifier handler, same frontend config."""
    import torch

    from handlers.registry import LABELS, build_model, load_checkpoint

    stage, store = workdir / f"stock-{model}", workdir / "stock-store"
    stage.mkdir(parents=True, exist_ok=True)
    store.mkdir(parents=True, exist_ok=True)
    net = build_model(model)
    load_checkpoint(net, str(build_archives.checkpoint_for(model)))
    torch.jit.trace(net.eval(), torch.zeros(1, 3, 224, 224)).save(str(stage / "model.pt"))
    (stage / "index_to_name.json").write_text(json.dumps({str(i): label for i, label in enumerate(LABELS)}))
    frontend = {k: v for k, v in serving_config(model).items() if k != "handler"}
    (stage / "config.yaml").write_text(yaml.safe_dump(frontend))
    subprocess.run(
        [str(ROOT / ".venv" / "bin" / "torch-model-archiver"), "--model-name", model, "--version", "1.0",
         "--serialized-file", str(stage / "model.pt"), "--handler", str(ROOT / "loadtest" / "stock_handler.py"),
         "--extra-files", str(stage / "index_to_name.json"), "--config-file", str(stage / "config.yaml"),
         "--export-path", str(store), "--force"],
        check=True,
    )
    return store


def warm_up(url: str, bodies: list[loadgen.Body], concurrency: int, seconds: float,
            slice_s: float = 5.0) -> list[dict[str, float]]:
    """Unmeasured load at saturation, in slices that each record the frontend's cores and its JIT share: the
    results show how long the JVM compiled and that the measured window came after it."""
    trace: list[dict[str, float]] = []
    done = 0.0
    while done < seconds:
        length = min(slice_s, seconds - done)
        with cores_by_role() as cores:
            loadgen.run(lambda n=length: loadgen.closed_loop(url, bodies, concurrency, n, warmup=0))
        done += length
        trace.append({"t_s": round(done, 1), "frontend": cores.get(JIT_OF, 0.0), "jit": cores.get(JIT, 0.0)})
    return trace


def serve_and_load(name: str, store: Path, model: str, ports: Any, workdir: Path, env: dict[str, str],
                   bodies: list[loadgen.Body], concurrency: int, seconds: float,
                   half_rate: float | None, builtin_logging: bool = False,
                   warmup_s: float = 40.0, side_by_side: Callable[[str], dict[str, Any]] | None = None,
                   ) -> dict[str, Any]:
    """Start a TorchServe with one model, time the cold start, warm it up, saturate it, then run half load.

    The warm-up is for the JVM: a fresh frontend compiles its hot paths during its first ~35 s under load,
    which would otherwise be billed to serving; `warm_up` records that decay ("JIT warm-up" in the report)
    and the CPU table's JIT column shows what is left of it in the measured window. `side_by_side(url)`
    runs on the warm server after the saturation window (the ceiling interleaved with served slices).
    """
    inst = TorchServeInstance(f"{name}-{model}", store, ports, workdir / f"ts-{name}-{model}", env,
                              builtin_logging=builtin_logging)
    inst.proc = None
    try:
        inst.start()
        # load only this model: `--models all` would start every archive of the store
        cold = inst.wait_first_prediction(model, bodies[0].data)
        url = f"{inst.url}/predictions/{model}"
        trace = warm_up(url, bodies, concurrency, warmup_s)
        with cores_by_role() as cores:
            sat = loadgen.run(lambda: loadgen.closed_loop(url, bodies, concurrency, seconds, warmup=1))
        paired = side_by_side(url) if side_by_side is not None else None
        rate = half_rate if half_rate is not None else sat.images_per_s / 2
        half = loadgen.run(lambda: loadgen.open_loop(url, bodies, rate, seconds))
        memory = inst.worker_memory_mb()
    finally:
        inst.stop()
    print(f"{name:5s} {model:13s} cold start {cold:5.1f} s | saturation ({concurrency} in flight) "
          f"{sat.images_per_s:6.1f} img/s p50/p95/p99 {sat.p50_ms:.0f}/{sat.p95_ms:.0f}/{sat.p99_ms:.0f} ms "
          f"err {sat.errors} | open loop {rate:.0f}/s p95 {half.p95_ms:.0f} ms err {half.errors} | "
          f"RSS/worker {[round(m['rss']) for m in memory]} MB", flush=True)
    return {"cold_start_s": cold, "saturation": sat.as_dict(), "half_load": half.as_dict(), "workers": memory,
            "saturation_cores": cores, "warmup_trace": trace, "interleaved": paired}


def one_model_store(store: Path, model: str, workdir: Path, tag: str) -> Path:
    """A store holding only `model` so the instance starts just its workers."""
    single = workdir / f"store-{tag}-{model}"
    single.mkdir(parents=True, exist_ok=True)
    shutil.copy2(store / f"{model}.mar", single / f"{model}.mar")
    return single


def run_served(models: list[str], seconds: float, concurrency: int, workdir: Path, stock: bool,
               builtin_logging: bool = False, warmup_s: float = 40.0, ceiling_rows: Sequence[dict[str, Any]] = (),
               interleave: tuple[int, float] = (6, 3.0)) -> dict[str, Any]:
    """Ours then stock per model; ours also interleaved with the sweep's fastest in-process configuration and
    batch 1 of its backend (`ceiling_configs`), `interleave` = (rounds, seconds per slice)."""
    bodies = [loadgen.Body(b, "image/jpeg") for b in corpus()]
    rounds, slice_s = interleave
    out: dict[str, Any] = {}
    for model in models:
        config = serving_config(model)
        handler = config.get("handler") or {}
        # Saturation needs a full pipeline: with exactly workers x batchSize in flight a worker that finishes
        # waits for its clients to resend (measured 7 % idle CPU at 16 for MobileNetV2); two batches per worker
        # keep one computing while the next forms (16 / 24 / 32 in flight: 329 / 347 / 369 img/s).
        conc = concurrency or 2 * int(config.get("maxWorkers", 1)) * int(config.get("batchSize", 1))
        threads = int(handler.get("torch_threads") or 0)
        # Same intra-op threads for the stock handler (it never sets them itself): equal footing.
        env = {"OMP_NUM_THREADS": str(threads)} if threads > 0 else {}
        configs = ceiling_configs(ceiling_rows, model)

        def side_by_side(url: str, configs: dict = configs, conc: int = conc) -> dict[str, Any]:
            return interleaved(configs, url, bodies, conc, rounds, slice_s)

        ours = serve_and_load("ours", one_model_store(OUR_STORE, model, workdir, "ours"), model, OURS_PORTS,
                              workdir, {}, bodies, conc, seconds, None, builtin_logging, warmup_s,
                              side_by_side if configs and rounds > 0 else None)
        out[model] = {"config": serving_config(model), "ours": ours}
        if stock:
            store = one_model_store(build_stock_store(model, workdir), model, workdir, "stock")
            # the stock run gets the same open-loop rate as ours so the p95 values compare
            out[model]["stock"] = serve_and_load("stock", store, model, STOCK_PORTS, workdir, env, bodies,
                                                 conc, seconds, ours["half_load"]["target_rps"],
                                                 builtin_logging, warmup_s)
    return out


# ---- report -------------------------------------------------------------------------------------


def best(rows: list[dict[str, Any]], model: str, batch: int | None = None) -> float:
    """Best in-process images/s for `model` (0.0 when the ceiling was not measured: --no-ceiling)."""
    row = best_row(rows, model, batch)
    return row["images_per_s"] if row else 0.0


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a and b else "n/a"


def markdown(res: dict[str, Any]) -> str:
    lines = [
        f"# Benchmark results ({res['started']})",
        "",
        f"Host: {res['host']['cpus']} CPUs, {res['host']['platform']}; load average before/after: "
        f"{res['host']['loadavg_before']} / {res['host']['loadavg_after']} (shared machine: expect noise).",
        "Images: 640x480 photo-like JPEGs. Load generator (aiohttp) runs on the same cores as the server.",
        f"TorchServe frontend logging: {res.get('torchserve_logging', 'quiet')} "
        "(quiet = model-archive/config/log4j2.xml, builtin = TorchServe's own DEBUG config).",
        "",
        "## 1. In-process ceiling (decode + preprocess + forward), images/s",
        "",
        "| model | backend | batch | processes x threads | images/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["ceiling"]:
        lines.append(f"| {r['model']} | {r['backend']} | {r['batch']} | {r['procs']}x{r['threads']} "
                     f"| {r['images_per_s']:.1f} |")
    lines += ["", "## 2./3. Served over HTTP: our handler vs the stock image_classifier handler", "",
              "| model | handler | cold start s | saturation img/s (requests in flight) | p50 / p95 / p99 ms | errors "
              "| half-load rate /s | half-load p95 ms | RSS per worker MB (PSS; CUDA libraries in the RSS) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for model, m in res["served"].items():
        for who in ("ours", "stock"):
            if who not in m:
                continue
            r = m[who]
            s, h = r["saturation"], r["half_load"]
            mem = ", ".join(f"{w['rss']:.0f} ({w['pss']:.0f}; {w.get('cuda_libs', float('nan')):.0f})"
                            for w in r["workers"])
            lines.append(f"| {model} | {who} | {r['cold_start_s']:.1f} | {s['images_per_s']:.1f} ({s['concurrency']}) "
                         f"| {s['p50_ms']:.0f} / {s['p95_ms']:.0f} / {s['p99_ms']:.0f} | {s['errors'] + h['errors']} | "
                         f"{h['target_rps']:.0f} | {h['p95_ms']:.0f} | {mem} |")
    if floor := res.get("import_torch"):
        lines += ["", "Floor of every worker: a bare `python -c \"import torch\"` from this venv is "
                  f"{floor['rss']:.0f} MB RSS, {floor['cuda_libs']:.0f} MB of it CUDA libraries of the PyPI wheel "
                  "(TorchServe's worker imports torch whatever the handler does)."]
    lines += ["", "## Ratios", "",
              "served / ceiling: the interleaved rounds below (same moments of the machine); the sequential value "
              "divides by the sweep's maximum, measured minutes earlier, for comparison.", "",
              "| model | served / ceiling (best batch) | served / ceiling (batch 1) | sequential (best batch) "
              "| ours / stock throughput | ours / stock p95 at saturation | bridge / direct HTTP | bridge / naive |",
              "|---|---|---|---|---|---|---|---|"]
    kafka = res.get("kafka") or {}
    for model, m in res["served"].items():
        ours = m["ours"]["saturation"]
        paired = (m["ours"].get("interleaved") or {}).get("ratio", {})
        stock = m.get("stock", {}).get("saturation", {})
        k = kafka.get(model, {})
        lines.append(
            f"| {model} | {ratio(paired.get('best batch'), 1.0)} | {ratio(paired.get('batch 1'), 1.0)} "
            f"| {ratio(ours['images_per_s'], best(res['ceiling'], model))} "
            f"| {ratio(ours['images_per_s'], stock.get('images_per_s'))} "
            f"| {ratio(ours['p95_ms'], stock.get('p95_ms'))} "
            f"| {ratio(k.get('bridge', {}).get('images_per_s'), ours['images_per_s'])} "
            f"| {ratio(k.get('bridge', {}).get('images_per_s'), k.get('naive', {}).get('images_per_s'))} |")
    lines += interleaved_section(res)
    columns = [c for role, _ in ROLES for c in ((role, JIT) if role == JIT_OF else (role,))] + [LOADGEN, MACHINE]
    warm = res.get("warmup_s", 0)
    lines += ["", f"## CPU by role at saturation (cores, psutil; 2 in all; each after a {warm:.0f} s warm-up)", "",
              "| load point | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    points = [(f"{model} {who} over HTTP", m[who].get("saturation_cores", {}))
              for model, m in res["served"].items() for who in ("ours", "stock") if who in m]
    points += [(f"{model} through the bridge", k["bridge"].get("cores", {}))
               for model, k in kafka.items() if isinstance(k, dict) and "bridge" in k]
    for name, cores in points:
        lines.append(f"| {name} | " + " | ".join(f"{cores.get(c, 0.0):.2f}" for c in columns) + " |")
    traces = [(f"{model} {who}", m[who]["warmup_trace"]) for model, m in res["served"].items()
              for who in ("ours", "stock") if m.get(who, {}).get("warmup_trace")]
    if traces:
        lines += ["", "JIT warm-up of each fresh TorchServe (unmeasured load at saturation before the point above): "
                  "frontend cores / of which JIT compiler, per slice ending at t seconds", ""]
        lines += [f"- {name}: " + ", ".join(f"t={x['t_s']:.0f} {x['frontend']:.2f}/{x['jit']:.2f}" for x in trace)
                  for name, trace in traces]
    lines += ["", "## 4. Kafka end to end", "",
              "Through the `make up` stack (TorchServe with the archives it was started with, broker, and the bridge "
              "of scripts/bridge.sh: TorchServe directly, as on the cluster, unless INFERENCE_URL says otherwise); "
              "records are 640x480 JPEGs.", ""]
    if kafka.get("skipped"):
        lines.append(f"Not measured: {kafka['skipped']}")
    else:
        lines += ["| model | consumer | images/s | p50 / p95 / p99 ms end to end | half-load p95 ms |",
                  "|---|---|---|---|---|"]
        for model, k in kafka.items():
            for who, r in k.items():
                lines.append(f"| {model} | {who} | {r['images_per_s']:.1f} | {r['p50_ms']:.0f} / {r['p95_ms']:.0f} / "
                             f"{r['p99_ms']:.0f} | {r.get('half_p95_ms', float('nan')):.0f} |")
    lines += ["", "## Configuration under test", ""]
    for model, m in res["served"].items():
        cfg = m["config"]
        lines.append(f"- {model}: workers {cfg.get('minWorkers')}-{cfg.get('maxWorkers')}, batchSize "
                     f"{cfg.get('batchSize')}, maxBatchDelay {cfg.get('maxBatchDelay')} ms, "
                     f"handler {cfg.get('handler')}")
    return "\n".join(lines) + "\n"


def interleaved_section(res: dict[str, Any]) -> list[str]:
    """Per round: each in-process configuration's slice, then the served slice right after it."""
    runs = [(model, m["ours"]["interleaved"]) for model, m in res["served"].items() if m["ours"].get("interleaved")]
    if not runs:
        return []
    lines = ["", "## Served vs ceiling, interleaved (images/s)", "",
             f"Rounds of {runs[0][1]['slice_s']:.0f} s slices: each in-process configuration (the server idle), then "
             "our server at saturation (the in-process processes waiting), so every pair shares the machine's "
             "speed of that minute.", ""]
    for model, run in runs:
        names = list(run["configs"])
        label = {n: f"{n}: {c['backend']} batch {c['batch']} {c['procs']}x{c['threads']}"
                 for n, c in run["configs"].items()}
        lines += [f"| {model} round | " + " | ".join(label[n] for n in names) + " | served | served / best batch |",
                  "|---|" + "---|" * (len(names) + 2)]
        for i, r in enumerate(run["rounds"], 1):
            first = r[names[0]]
            lines.append(f"| {i} | " + " | ".join(f"{r[n]:.1f}" for n in names)
                         + f" | {r['served']:.1f} | {ratio(r['served'], first)} |")
        lines.append("")
    return lines


def chart(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = list(res["served"])
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.25
    for i, (label, get) in enumerate([
        ("in-process ceiling", lambda m: best(res["ceiling"], m)),
        ("ours (TorchServe)", lambda m: res["served"][m]["ours"]["saturation"]["images_per_s"]),
        ("stock image_classifier",
         lambda m: res["served"][m].get("stock", {}).get("saturation", {}).get("images_per_s", 0)),
    ]):
        ax1.bar([x + i * width for x in range(len(models))], [get(m) for m in models], width, label=label)
    ax1.set_xticks([x + width for x in range(len(models))], models)
    ax1.set_ylabel("images/s (640x480 JPEG)")
    ax1.set_title("Throughput at saturation")
    ax1.legend()
    for i, who in enumerate(("ours", "stock")):
        vals = [res["served"][m].get(who, {}).get("saturation", {}).get("p95_ms", 0) for m in models]
        ax2.bar([x + i * width for x in range(len(models))], vals, width, label=f"{who} p95 (saturation)")
        vals = [res["served"][m].get(who, {}).get("half_load", {}).get("p95_ms", 0) for m in models]
        ax2.bar([x + (i + 2) * width for x in range(len(models))], vals, width, label=f"{who} p95 (half load)")
    ax2.set_xticks([x + 1.5 * width for x in range(len(models))], models)
    ax2.set_ylabel("ms")
    ax2.set_yscale("log")
    ax2.set_title("p95 latency")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seconds", type=float, default=float(os.environ.get("BENCH_SECONDS", "15")),
                        help="measured seconds per load point (default 15)")
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=float(os.environ.get("BENCH_WARMUP_S", "40")),
                        help="seconds at saturation before each served measurement: JVM JIT warm-up (default 40)")
    parser.add_argument("--concurrency", type=int, default=int(os.environ.get("BENCH_CONCURRENCY", "0")),
                        help="requests in flight at saturation (default 0: 2 x workers x batchSize of the model)")
    parser.add_argument("--interleave-rounds", type=int, default=6,
                        help="rounds of in-process ceiling slices alternating with served slices (0: off)")
    parser.add_argument("--interleave-slice", type=float, default=3.0, help="seconds per interleaved slice")
    parser.add_argument("--no-stock", action="store_true")
    parser.add_argument("--no-kafka", action="store_true")
    parser.add_argument("--no-ceiling", action="store_true")
    parser.add_argument("--torchserve-logging", choices=("quiet", "builtin"), default="quiet",
                        help="frontend log4j2: ours (model-archive/config/log4j2.xml) or TorchServe's built-in "
                             "DEBUG config, to measure that lever (only whole quiet runs replace BENCHMARKS.md)")
    args = parser.parse_args()
    # a killed bench must still stop the TorchServe it started (the finally blocks run on SystemExit)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    workdir = RESULTS / f"bench-{stamp}"
    workdir.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {
        "started": stamp,
        "host": {"cpus": os.cpu_count(), "platform": platform.platform(),
                 "loadavg_before": [round(x, 2) for x in os.getloadavg()]},
        "torchserve_logging": args.torchserve_logging, "warmup_s": args.warmup,
    }
    res["import_torch"] = import_torch_rss_mb()
    res["ceiling"] = [] if args.no_ceiling else run_ceilings(args.models, args.ceiling_seconds, workdir)
    res["served"] = run_served(args.models, args.seconds, args.concurrency, workdir, not args.no_stock,
                               args.torchserve_logging == "builtin", args.warmup, res["ceiling"],
                               (args.interleave_rounds, args.interleave_slice))
    if args.no_kafka:
        res["kafka"] = {"skipped": "--no-kafka"}
    else:
        from loadtest import kafka_bench

        res["kafka"] = kafka_bench.run(args.models[:1], args.seconds, res["served"], args.warmup)
    res["host"]["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    (workdir / "results.json").write_text(json.dumps(res, indent=2))
    md = markdown(res)
    (workdir / "BENCHMARKS.md").write_text(md)
    chart(res, workdir / "chart.png")
    full = (set(args.models) == set(MODELS) and not (args.no_stock or args.no_kafka or args.no_ceiling)
            and args.torchserve_logging == "quiet" and "skipped" not in res["kafka"])
    if full:  # a partial or A/B run never replaces the committed results of a whole one
        shutil.copy2(workdir / "BENCHMARKS.md", ROOT / "loadtest" / "BENCHMARKS.md")
    for tmp in workdir.glob("st*-*"):  # staged archives and stores: large and reproducible
        shutil.rmtree(tmp, ignore_errors=True)
    print(md)
    print(f"results: {workdir}")


if __name__ == "__main__":
    main()
