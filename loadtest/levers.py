"""The speed levers of the performance issue, each measured alone, in process, on one thread (`make bench-levers`).

    python -m loadtest.levers [--models mobilenet_v2 resnet50] [--seconds 3] [--no-compile]

`make bench` measures the kept configuration end to end; this measures the levers themselves, so the
choice of each speed switch (loadtest/README.md) rests on a number anyone can reproduce:

- decode + resize of a 640x480 JPEG to the model's 224x224 uint8 input: Pillow at full size, Pillow with
  libjpeg's DCT scaler (`fast_jpeg`, what the handler does), torchvision.io.decode_jpeg + torchvision resize;
- forward only, batch 1 and 4: eager PyTorch (contiguous, channels_last), TorchScript (traced, frozen,
  optimize_for_inference), torch.compile (inductor; its compile time is reported), ONNX Runtime fp32, and the
  committed int8 graph when `make quantize` made one for the checkpoint.

One thread is what one TorchServe worker gets (2 workers x 1 thread on 2 cores). Results: markdown under
loadtest/results/levers-<time>/ and a copy in loadtest/LEVERS.md.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model-archive"))
import build_archives  # noqa: E402  (model-archive/ is a script folder)

from handlers.imaging import DecodeLimits, decode_image  # noqa: E402
from handlers.registry import IMAGE_SIZE, MODEL_NAMES, build_model, input_array, load_checkpoint, normalize  # noqa: E402
from handlers.scorer import onnx_session  # noqa: E402
from loadtest.loadgen import corpus  # noqa: E402

RESULTS = ROOT / "loadtest" / "results"


def rate(step: Callable[[], int], seconds: float) -> float:
    """Items/s of `step` (which returns how many items it handled) after one warm-up call."""
    step()
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += step()
    return n / (time.perf_counter() - t0)


def decode_levers(images: list[bytes], seconds: float) -> list[dict[str, Any]]:
    from torchvision.io import decode_jpeg
    from torchvision.transforms.v2 import functional as F

    full, scaled = DecodeLimits(fast_jpeg=False), DecodeLimits()

    def cycle(fn: Callable[[bytes], object]) -> Callable[[], int]:
        it = itertools.cycle(images)
        return lambda: (fn(next(it)), 1)[1]

    def tv(raw: bytes) -> torch.Tensor:
        return F.resize(decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8)), [IMAGE_SIZE, IMAGE_SIZE],
                        antialias=True)

    levers = {
        "Pillow, full-size decode (fast_jpeg: false)": lambda raw: input_array(decode_image(raw, full)),
        "Pillow, DCT-scaled decode (fast_jpeg: true, kept)": lambda raw: input_array(decode_image(raw, scaled)),
        "torchvision.io.decode_jpeg + torchvision resize": tv,
    }
    return [{"stage": "decode + resize", "lever": name, "batch": 1, "images_per_s": rate(cycle(fn), seconds)}
            for name, fn in levers.items()]


def _torch_step(net: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> Callable[[], int]:
    def step() -> int:
        with torch.inference_mode():
            net(x)
        return len(x)

    return step


def _onnx_step(path: Path, pixels: np.ndarray) -> Callable[[], int]:
    session = onnx_session(path, threads=1)
    return lambda: (session.run(None, {"pixels": pixels}), len(pixels))[1]


def forward_levers(model: str, images: list[bytes], seconds: float, workdir: Path,
                   compile_model: bool) -> list[dict[str, Any]]:
    ckpt = build_archives.checkpoint_for(model)
    net = build_model(model)
    load_checkpoint(net, str(ckpt))
    net = net.eval().float()
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    pixels = np.stack([input_array(decode_image(b, DecodeLimits())) for b in images[:4]])
    graphs = {"ONNX Runtime fp32 (backend: onnx)": build_archives.export_onnx(model, ckpt, workdir / f"{model}.onnx")}
    if (int8 := build_archives.committed_int8_graph(model)) is not None:  # none for ResNet50
        graphs["ONNX Runtime int8 (backend: onnx_int8)"] = int8
    rows: list[dict[str, Any]] = []
    for batch in (1, 4):
        rows += _forward_rows(model, batch, net, net_cl, pixels[:batch], graphs, seconds, compile_model)
    return rows


def _forward_rows(model: str, batch: int, net: torch.nn.Module, net_cl: torch.nn.Module, pixels: np.ndarray,
                  graphs: dict[str, Path], seconds: float, compile_model: bool) -> list[dict[str, Any]]:
    x = normalize()(torch.from_numpy(pixels).permute(0, 3, 1, 2))
    xl = x.contiguous(memory_format=torch.channels_last)
    rows: list[dict[str, Any]] = []
    levers: dict[str, Callable[[], Callable[[], int]]] = {
        "eager PyTorch": lambda: _torch_step(net, x),
        "eager PyTorch, channels_last": lambda: _torch_step(net_cl, xl),
        "TorchScript (trace + freeze + optimize_for_inference)": lambda: _torch_step(
            torch.jit.optimize_for_inference(torch.jit.freeze(torch.jit.trace(net_cl, xl))), xl),
    }
    if compile_model:
        levers["torch.compile (inductor)"] = lambda: _compiled(net_cl, xl, rows, model, batch)
    for name, path in graphs.items():
        levers[name] = lambda path=path: _onnx_step(path, pixels)
    for name, make in levers.items():
        row: dict[str, Any] = {"stage": f"{model} forward", "lever": name, "batch": batch, "images_per_s": None}
        try:
            row["images_per_s"] = rate(make(), seconds)
        except Exception as exc:  # noqa: BLE001 - a lever that does not run here is a result, not a crash
            row["note"] = f"failed: {type(exc).__name__}: {str(exc)[:120]}"
        rows.append(row)
    return rows


def _compiled(net: torch.nn.Module, x: torch.Tensor, rows: list[dict[str, Any]], model: str,
              batch: int) -> Callable[[], int]:
    """torch.compile'd model; the first call (the compilation) is timed and reported as its own row."""
    compiled = torch.compile(net)
    t0 = time.perf_counter()
    with torch.inference_mode():
        compiled(x)
    rows.append({"stage": f"{model} forward", "lever": "torch.compile: compile time (s)", "batch": batch,
                 "images_per_s": None, "note": f"{time.perf_counter() - t0:.1f} s before the first result"})
    return _torch_step(compiled, x)


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [f"# Speed levers, one thread ({meta['started']})", "",
             f"Host: {meta['cpus']} CPUs, {meta['platform']}; torch {torch.__version__}, one intra-op thread "
             f"(what one of the 2 TorchServe workers gets); 640x480 photo-like JPEGs; {meta['seconds']} s per row. "
             "Reproduce: `make bench-levers`.", "",
             "| stage | lever | batch | images/s | vs first row of its stage |", "|---|---|---|---|---|"]
    base: dict[tuple[str, int], float] = {}
    for r in rows:
        value = r["images_per_s"]
        key = (r["stage"], r["batch"])
        if value is not None:
            base.setdefault(key, value)
        cell = f"{value:.1f}" if value is not None else r.get("note", "-")
        rel = f"{value / base[key]:.2f}x" if value is not None and base.get(key) else "-"
        lines.append(f"| {r['stage']} | {r['lever']} | {r['batch']} | {cell} | {rel} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    p.add_argument("--seconds", type=float, default=3.0, help="measured seconds per row (default 3)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile (it compiles for ~1 min per shape)")
    p.add_argument("--out", type=Path, help="results folder (default loadtest/results/levers-<time>)")
    p.add_argument("--no-copy", action="store_true", help="do not replace loadtest/LEVERS.md")
    args = p.parse_args(argv)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = args.out or RESULTS / f"levers-{stamp}"
    out.mkdir(parents=True, exist_ok=True)
    images = corpus(8)
    rows = decode_levers(images, args.seconds)
    for model in args.models:
        rows += forward_levers(model, images, args.seconds, out, not args.no_compile)
        print(f"{model}: forward levers measured", flush=True)
    md = markdown(rows, {"started": stamp, "cpus": len(os.sched_getaffinity(0)),
                         "platform": platform.platform(), "seconds": args.seconds})
    (out / "LEVERS.md").write_text(md)
    if not args.no_copy:
        (ROOT / "loadtest" / "LEVERS.md").write_text(md)
    for onnx_file in out.glob("*.onnx"):
        onnx_file.unlink()  # exported for the measurement; reproducible from the checkpoint
    print(md)
    return rows


if __name__ == "__main__":
    main()
