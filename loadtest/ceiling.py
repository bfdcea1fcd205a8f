"""Benchmark part 1: the in-process ceiling (decode + preprocess + forward), and the same ceiling measured
interleaved with the served rate.

The machine's speed drifts by a fifth or more within minutes (the same configuration across the rounds of
one `make bench`: 237-319 img/s), so a ceiling measured minutes before the served point says little about
their ratio.
`interleaved` alternates short slices of the two, with the ceiling processes kept alive between slices,
so both see the same machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handlers.settings import graph_file
from loadtest import loadgen
from loadtest.loadgen import corpus
from loadtest.torchserve_instance import build_archives


def _steps(model: str, backend: str, batch: int, threads: int, onnx_path: str) -> tuple[Any, list[list[bytes]]]:
    """One decode + preprocess + forward step of `batch` images, and the batches of the corpus it cycles."""
    warnings.filterwarnings("ignore")
    import numpy as np
    import torch

    from handlers.imaging import DecodeLimits, decode_image
    from handlers.model_io import probabilities
    from handlers.registry import build_model, input_array, input_transform, load_checkpoint, normalize
    from handlers.scorer import onnx_session

    torch.set_num_threads(threads)
    images, limits = corpus(), DecodeLimits()
    if graph_file(backend) is not None:
        session = onnx_session(onnx_path, threads)

        def step(raw: list[bytes]) -> None:
            session.run(None, {"pixels": np.stack([input_array(decode_image(b, limits)) for b in raw])})
    else:
        net = build_model(model)
        load_checkpoint(net, str(build_archives.checkpoint_for(model)))
        net.eval()
        fmt = torch.channels_last if backend == "channels_last" else torch.contiguous_format
        net = net.to(memory_format=fmt)
        to_pixels, norm = input_transform(), normalize()

        def step(raw: list[bytes]) -> None:
            x = norm(torch.stack([to_pixels(decode_image(b, limits)) for b in raw])).contiguous(memory_format=fmt)
            with torch.inference_mode():
                probabilities(net(x).numpy())

    return step, [images[i:i + batch] for i in range(0, len(images) - batch + 1, batch)]


def _worker(conn: Any, barrier: Any, model: str, backend: str, batch: int, threads: int, onnx_path: str) -> None:
    """Warm up once, then for every slice the parent asks for: start with the others, loop, report images/s."""
    step, batches = _steps(model, backend, batch, threads, onnx_path)
    step(batches[0])  # allocations, ORT graph
    conn.send("ready")
    while (seconds := conn.recv()) is not None:
        barrier.wait()  # every process starts the slice together
        n, i, t0 = 0, 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            step(batches[i % len(batches)])
            n, i = n + batch, i + 1
        conn.send(n / (time.perf_counter() - t0))


class CeilingPool:
    """`procs` processes of `threads` intra-op threads each, kept alive between slices (no start-up per slice)."""

    def __init__(self, model: str, backend: str, batch: int, threads: int, procs: int, onnx_path: str) -> None:
        ctx = mp.get_context("spawn")  # clean thread settings; no inherited torch state
        barrier = ctx.Barrier(procs)
        self._conns, self._procs = [], []
        for _ in range(procs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker, args=(child, barrier, model, backend, batch, threads, onnx_path),
                               daemon=True)
            proc.start()
            self._conns.append(parent)
            self._procs.append(proc)
        for conn in self._conns:
            if not conn.poll(300) or conn.recv() != "ready":
                self.close()
                raise RuntimeError(f"ceiling worker for {model} {backend} did not start")

    def run(self, seconds: float) -> float:
        """Images/s summed over the processes, all looping for `seconds` from a common start."""
        for conn in self._conns:
            conn.send(seconds)
        return sum(conn.recv() for conn in self._conns)

    def close(self) -> None:
        for conn, proc in zip(self._conns, self._procs, strict=True):
            with contextlib.suppress(OSError):  # the worker may already be gone
                conn.send(None)
            proc.join(10)
            if proc.is_alive():
                proc.kill()

    def __enter__(self) -> CeilingPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def ceiling(model: str, backend: str, batch: int, threads: int, procs: int, seconds: float, onnx_path: str) -> float:
    """Images/s summed over `procs` processes started together, each with `threads` intra-op threads."""
    with CeilingPool(model, backend, batch, threads, procs, onnx_path) as pool:
        return pool.run(seconds)


def graphs(model: str, workdir: Path) -> dict[str, Path]:
    """ONNX graphs per backend: fp32 exported from the checkpoint, int8 when one is committed."""
    out = {"onnx": build_archives.export_onnx(model, build_archives.checkpoint_for(model), workdir / f"{model}.onnx")}
    if (int8 := build_archives.committed_int8_graph(model)) is not None:
        out["onnx_int8"] = int8
    return out


def run_ceilings(models: list[str], seconds: float, workdir: Path) -> list[dict[str, Any]]:
    """Every backend, batch size and processes x threads layout, one after the other."""
    cores = os.cpu_count() or 1
    rows = []
    for model in models:
        onnx = graphs(model, workdir)
        for backend in ("eager", "channels_last", *onnx):
            # ONNX also at 4 and 16: where per-image speed falls with batch size (handler.forward_batch)
            for batch in (1, 4, 8, 16) if backend in onnx else (1, 8):
                # plain eager is only the baseline: one layout is enough
                for procs, threads in ((1, cores),) if backend == "eager" else ((1, cores), (cores, 1)):
                    rate = ceiling(model, backend, batch, threads, procs, seconds, str(onnx.get(backend, "")))
                    rows.append({"model": model, "backend": backend, "batch": batch, "procs": procs,
                                 "threads": threads, "onnx_path": str(onnx.get(backend, "")), "images_per_s": rate})
                    print(f"ceiling {model:13s} {backend:13s} batch {batch} {procs}x{threads} threads: "
                          f"{rate:7.1f} img/s", flush=True)
    return rows


def best_row(rows: Sequence[dict[str, Any]], model: str, batch: int | None = None,
             backend: str | None = None) -> dict[str, Any] | None:
    """The fastest configuration of `model` in the sweep (at `batch`, of `backend`, if given); None without one."""
    mine = [r for r in rows if r["model"] == model and (batch is None or r["batch"] == batch)
            and (backend is None or r["backend"] == backend)]
    return max(mine, key=lambda r: r["images_per_s"], default=None)


def ceiling_configs(rows: Sequence[dict[str, Any]], model: str) -> dict[str, dict[str, Any]]:
    """What `interleaved` pairs the server with: the sweep's fastest configuration, and batch 1 of that same
    backend (the sweep's fastest batch-1 row of any backend can be another backend by noise alone)."""
    top = best_row(rows, model)
    if top is None:
        return {}
    return {"best batch": top, "batch 1": best_row(rows, model, 1, top["backend"]) or top}


def interleaved(configs: dict[str, dict[str, Any]], url: str, bodies: list[loadgen.Body], concurrency: int,
                rounds: int, slice_s: float) -> dict[str, Any]:
    """Rounds of: each ceiling configuration for `slice_s`, then the server at saturation for `slice_s`.

    The server idles while a ceiling slice runs and the ceiling processes wait while the server is loaded,
    so each pair shares the machine's speed of that moment. Ratio = served / ceiling summed over rounds.
    """
    def key(r: dict[str, Any]) -> tuple:
        return r["model"], r["backend"], r["batch"], r["procs"], r["threads"]

    pools: dict[tuple, CeilingPool] = {}  # one pool per distinct configuration (best batch may be batch 1)
    try:
        for r in configs.values():
            if key(r) not in pools:
                pools[key(r)] = CeilingPool(r["model"], r["backend"], r["batch"], r["threads"], r["procs"],
                                            r["onnx_path"])
        trace = []
        for _ in range(rounds):
            rates = {k: pool.run(slice_s) for k, pool in pools.items()}
            row = {name: rates[key(r)] for name, r in configs.items()}
            # a short ramp inside the slice refills the pipeline after the idle ceiling slice
            served = loadgen.run(lambda: loadgen.closed_loop(url, bodies, concurrency, slice_s, warmup=0.5))
            row["served"] = served.images_per_s
            trace.append(row)
    finally:
        for pool in pools.values():
            pool.close()
    served_sum = sum(r["served"] for r in trace)
    return {
        "rounds": trace, "slice_s": slice_s,
        "configs": {name: {k: r[k] for k in ("backend", "batch", "procs", "threads")} for name, r in configs.items()},
        "ratio": {name: served_sum / s if (s := sum(r[name] for r in trace)) else None for name in configs},
    }
