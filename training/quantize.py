"""Measure static int8 quantization (ONNX Runtime, QDQ, per-channel) against the fp32 ONNX graph.

    python -m training.quantize --model mobilenet_v2 --data DIR --out DIR [--calibration 300]
        [--method percentile|minmax|entropy] [--target-recall 0.90]

The fp32 graph is the one `make models` packs (normalisation folded in, uint8 pixels in). Calibration uses
every k-th image of the train split; both graphs then score the val and test splits through the server's
own decode path. Reported, for the issue's "accuracy change <= 1 point" rule and for recall (which matters
most): test metrics at the served threshold, test metrics of int8 at a threshold re-picked on val for the
target recall, and forward-only speed on one thread. Writes OUT/quantization.json and OUT/model.int8.onnx.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from handlers.errors import ModerationError
from handlers.imaging import DecodeLimits, decode_image
from handlers.registry import HARMFUL_INDEX, MODEL_NAMES, input_array
from training.data import Sample, by_split, load_dataset
from training.evaluation import compute_metrics, markdown_table
from training.thresholds import read_threshold, threshold_for_recall

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model-archive"))
import build_archives  # noqa: E402  (model-archive/ is a script folder: the archive's own ONNX export)

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}


def pixels(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray]:
    """uint8 NHWC pixels exactly as the ONNX worker builds them, and labels; unreadable images skipped."""
    xs, ys, limits = [], [], DecodeLimits()
    for s in tqdm(samples, desc="decode", unit="img"):
        try:
            xs.append(input_array(decode_image(s.path.read_bytes(), limits)))
        except ModerationError as exc:  # the server would refuse it too: report and go on
            print(f"skipped unreadable image: {s.path} ({exc.message})")
            continue
        ys.append(s.label == HARMFUL_INDEX)
    return np.stack(xs), np.array(ys, dtype=int)


class _Calibration(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self._rows = iter(x)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {"pixels": row[None]}


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def scores(session: ort.InferenceSession, x: np.ndarray, batch: int = 4) -> np.ndarray:
    logits = np.concatenate([session.run(None, {"pixels": x[i:i + batch]})[0] for i in range(0, len(x), batch)])
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True))[:, HARMFUL_INDEX]


def forward_rate(session: ort.InferenceSession, x: np.ndarray, seconds: float = 5.0) -> float:
    """Forward-only images/s at batch 1 on one thread (what one TorchServe worker gets)."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, {"pixels": x[n % len(x)][None]})
        n += 1
    return n / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, choices=MODEL_NAMES)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calibration", type=int, default=300, help="train images used for calibration")
    p.add_argument("--method", choices=sorted(METHODS), default="percentile")
    p.add_argument("--target-recall", type=float, default=0.90)
    p.add_argument("--speed-seconds", type=float, default=5.0, help="duration of each forward-speed measurement")
    args = p.parse_args(argv)

    args.out.mkdir(parents=True, exist_ok=True)
    fp32, pre, int8 = args.out / "model.fp32.onnx", args.out / "model.pre.onnx", args.out / "model.int8.onnx"
    build_archives.export_onnx(args.model, build_archives.checkpoint_for(args.model), fp32)
    samples = load_dataset(args.data)
    train = by_split(samples, "train")
    step = max(1, len(train) // args.calibration)
    x_cal, _ = pixels(train[::step][: args.calibration])
    quant_pre_process(str(fp32), str(pre))
    extra = {"CalibPercentile": 99.99} if args.method == "percentile" else {}
    quantize_static(str(pre), str(int8), _Calibration(x_cal), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=METHODS[args.method], extra_options=extra)
    x_val, y_val = pixels(by_split(samples, "val"))
    x_test, y_test = pixels(by_split(samples, "test"))
    served = read_threshold(ROOT / "model-archive" / "config" / f"{args.model}.yaml")
    report: dict = {"model": args.model, "method": args.method, "calibration_images": len(x_cal),
                    "served_threshold": served}
    rows = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = _session(path)
        s_val, s_test = scores(session, x_val), scores(session, x_test)
        report[name] = {"test_at_served_threshold": compute_metrics(y_test, s_test, served),
                        "test_scores": s_test.tolist(),
                        "forward_images_per_s_1_thread": forward_rate(session, x_test, args.speed_seconds),
                        "size_mb": path.stat().st_size / 1e6}
        rows[f"{args.model} {name} (test, served threshold)"] = report[name]["test_at_served_threshold"]
        if name == "int8":
            t = threshold_for_recall(y_val, s_val, args.target_recall)
            report[name]["val_threshold_for_target_recall"] = t
            report[name]["val_recall_at_that_threshold"] = compute_metrics(y_val, s_val, t)["recall"]
            report[name]["test_at_val_threshold"] = compute_metrics(y_test, s_test, t)
            rows[f"{args.model} int8 (test, threshold re-picked on val)"] = report[name]["test_at_val_threshold"]
    f32, i8 = report["fp32"], report["int8"]
    report["accuracy_change_points"] = 100 * (i8["test_at_served_threshold"]["accuracy"]
                                              - f32["test_at_served_threshold"]["accuracy"])
    report["forward_speedup"] = i8["forward_images_per_s_1_thread"] / f32["forward_images_per_s_1_thread"]
    (args.out / "quantization.json").write_text(json.dumps(report, indent=2))
    print(markdown_table(rows))
    print(f"forward-only, batch 1, 1 thread: fp32 {f32['forward_images_per_s_1_thread']:.0f} img/s, "
          f"int8 {i8['forward_images_per_s_1_thread']:.0f} img/s ({report['forward_speedup']:.2f}x); "
          f"accuracy change {report['accuracy_change_points']:+.2f} points; report {args.out / 'quantization.json'}")
    return report


if __name__ == "__main__":
    main()
