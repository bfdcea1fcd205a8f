"""Measure static int8 quantization (ONNX Runtime, QDQ, per-channel) against the fp32 ONNX graph.

    python -m training.quantize --model mobilenet_v2 --data DIR --out DIR [--calibration 300]
        [--method percentile|minmax|entropy] [--target-recall R] [--install]

The fp32 graph is the one `make models` packs (normalisation folded in, uint8 pixels in). Calibration uses
every k-th image of the train split; both graphs then score the val and test splits through the server's
own decode path. Reported, for the issue's "accuracy change <= 1 point" rule and for recall (which matters
most): test metrics at the fp32 threshold (handler.threshold), test metrics of int8 at its own thresholds
(what backend onnx_int8 serves), and forward-only speed on one thread. The int8 graph ranks images a little
differently, so its decision and review thresholds are re-picked on val to flag the same share of harmful
images as the fp32 graph does at `threshold` and `review_threshold` (which `make train` picked on the
calibrated validation scores): the promise stays the fp32 model's. `--target-recall R` picks the decision
threshold for recall R instead.
Writes OUT/quantization.json and OUT/model.int8.onnx.

--install (`make quantize`) adopts the result for serving: the graph and its report (with the sha256 of the
checkpoint it was calibrated from, which `make models` checks) go to models/<model>/, and the re-picked
threshold becomes `handler.threshold_int8` in model-archive/config/<model>.yaml, served by backend onnx_int8.
A config with the out-of-source operating point (`out_of_source_threshold`, written by `make train`) gets its int8
pair the same way (`out_of_source_threshold_int8`, `out_of_source_review_threshold_int8`).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import yaml
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from tqdm import tqdm

from handlers.errors import ModerationError
from handlers.imaging import DecodeLimits, decode_image
from handlers.model_io import harmful_probability
from handlers.registry import HARMFUL_INDEX, MODEL_NAMES, input_array
from handlers.scorer import onnx_session
from handlers.settings import (
    INT8_ONNX_FILE,
    INT8_REVIEW_THRESHOLD_KEY,
    INT8_THRESHOLD_KEY,
    REVIEW_THRESHOLD_KEY,
    HandlerSettings,
    threshold_keys,
)
from training.calibration import recall_at_precision
from training.data import Sample, by_split, load_dataset
from training.evaluation import compute_metrics, markdown_table, per_subclass
from training.report import QUANTIZE_BEGIN, QUANTIZE_END
from training.thresholds import read_threshold, threshold_for_recall, write_threshold

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "model-archive"))
import build_archives  # noqa: E402  (model-archive/ is a script folder: the archive's own ONNX export)

METHODS = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
           "entropy": CalibrationMethod.Entropy}
KEEP_FLOAT = ("first", "head")


def float_nodes(graph: Path, keep: tuple[str, ...]) -> list[str]:
    """Nodes left in fp32: the classifier head (Gemm/MatMul) and the first convolution. A quantized head gives
    scores on a coarse grid (MobileNetV2 1.1.0: 39 distinct values over 1,365 test images, so a threshold could
    only fall on its steps); in fp32 they are continuous. The first convolution is the layer usually kept in
    float; here it changed nothing measurable (val ROC-AUC: head 0.9888, first + head 0.9888, everything
    quantized 0.9887; test 0.9851 / 0.9855 / 0.9845, within the noise of 1,365 images)."""
    nodes = onnx.load(str(graph)).graph.node
    out: list[str] = []
    if "first" in keep:
        out += [n.name for n in nodes if n.op_type == "Conv"][:1]
    if "head" in keep:
        out += [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return out


def pixels(samples: list[Sample]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """uint8 NHWC pixels exactly as the ONNX worker builds them, labels and subclasses; unreadable images
    skipped."""
    xs, ys, subs, limits = [], [], [], DecodeLimits()
    for s in tqdm(samples, desc="decode", unit="img"):
        try:
            xs.append(input_array(decode_image(s.path.read_bytes(), limits)))
        except ModerationError as exc:  # the server would refuse it too: report and go on
            print(f"skipped unreadable image: {s.path} ({exc.message})")
            continue
        ys.append(s.label == HARMFUL_INDEX)
        subs.append(s.subclass)
    return np.stack(xs), np.array(ys, dtype=int), subs


class _Calibration(CalibrationDataReader):
    def __init__(self, x: np.ndarray) -> None:
        self._rows = iter(x)

    def get_next(self) -> dict[str, np.ndarray] | None:
        row = next(self._rows, None)
        return None if row is None else {"pixels": row[None]}


def scores(session: ort.InferenceSession, x: np.ndarray, batch: int = 4) -> np.ndarray:
    """P(harmful) per image, as the server computes it from the graph's logits."""
    return harmful_probability(
        np.concatenate([session.run(None, {"pixels": x[i:i + batch]})[0] for i in range(0, len(x), batch)]))


def _subclass_aucs(y: np.ndarray, s: np.ndarray, subclasses: list[str]) -> dict[str, dict]:
    """Each harmful subclass's ROC-AUC against every benign photo of the set, with its 95 % interval."""
    return {sub: {"n": g["n"], "roc_auc": g["roc_auc"], "roc_auc_95": g["roc_auc_95"]}
            for sub, g in per_subclass(y, s, subclasses, 0.5).items() if "roc_auc" in g}


def out_of_source_pair(config: Path) -> tuple[float, float] | None:
    """The fp32 decision and review thresholds of the out-of-source operating point (`make train` writes them
    when it ran source folds); None for a config without them."""
    decision, review = threshold_keys("out_of_source", "onnx")
    try:
        return read_threshold(config, decision), read_threshold(config, review)
    except ValueError:
        return None


def other_point(fp32_pair: tuple[float, float], y_val: np.ndarray, fp32_val: np.ndarray, int8_val: np.ndarray,
                y_test: np.ndarray, fp32_test: np.ndarray, int8_test: np.ndarray) -> dict:
    """The int8 thresholds of the out-of-source operating point: like the validation point's, those flagging the
    same share of harmful val photos as the fp32 graph at its thresholds (the promise stays the fp32 pick's)."""
    recalls = [compute_metrics(y_val, fp32_val, t)["recall"] for t in fp32_pair]
    int8 = [threshold_for_recall(y_val, int8_val, r) if r > 0 else t for r, t in zip(recalls, fp32_pair, strict=True)]
    int8[1] = min(int8[1], int8[0])
    return {"fp32_threshold": fp32_pair[0], "fp32_review_threshold": fp32_pair[1], "val_recall": recalls[0],
            "val_review_recall": recalls[1], "threshold_int8": int8[0], "review_threshold_int8": int8[1],
            "test_fp32": compute_metrics(y_test, fp32_test, fp32_pair[0]),
            "test_int8": compute_metrics(y_test, int8_test, int8[0]),
            "test_int8_review_recall": compute_metrics(y_test, int8_test, int8[1])["recall"]}


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
    p.add_argument("--method", choices=sorted(METHODS), default="minmax",
                   help="activation calibration (percentile holds every activation histogram in memory, ~17 GB "
                        "here; minmax is what models/mobilenet_v2/quantization.json reports)")
    p.add_argument("--keep-float", default=",".join(KEEP_FLOAT),
                   help="comma-separated parts left in fp32: first (conv), head (classifier); '' quantizes all")
    p.add_argument("--target-recall", type=float,
                   help="pick threshold_int8 for this val recall (default: the fp32 graph's val recall at threshold)")
    p.add_argument("--speed-seconds", type=float, default=5.0, help="duration of each forward-speed measurement")
    p.add_argument("--install", action="store_true",
                   help="adopt for serving: graph + report into --install-dir, threshold_int8 into --config")
    p.add_argument("--install-dir", type=Path, help="default models/<model> (beside the checkpoint)")
    p.add_argument("--config", type=Path, help="default model-archive/config/<model>.yaml")
    args = p.parse_args(argv)
    config = args.config or ROOT / "model-archive" / "config" / f"{args.model}.yaml"

    args.out.mkdir(parents=True, exist_ok=True)
    fp32, pre, int8 = args.out / "model.fp32.onnx", args.out / "model.pre.onnx", args.out / "model.int8.onnx"
    checkpoint = build_archives.checkpoint_for(args.model)
    build_archives.export_onnx(args.model, checkpoint, fp32)
    samples = load_dataset(args.data)
    train = by_split(samples, "train")
    step = max(1, len(train) // args.calibration)
    x_cal, _, _ = pixels(train[::step][: args.calibration])
    quant_pre_process(str(fp32), str(pre))
    extra = {"CalibPercentile": 99.99} if args.method == "percentile" else {}
    keep = tuple(k for k in args.keep_float.split(",") if k)
    unknown = set(keep) - set(KEEP_FLOAT)
    if unknown:
        p.error(f"--keep-float: unknown part(s) {sorted(unknown)}; choose from {KEEP_FLOAT}")
    quantize_static(str(pre), str(int8), _Calibration(x_cal), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=METHODS[args.method], extra_options=extra,
                    nodes_to_exclude=float_nodes(pre, keep))
    x_val, y_val, sub_val = pixels(by_split(samples, "val"))
    x_test, y_test, sub_test = pixels(by_split(samples, "test"))
    fp32_threshold = read_threshold(config)
    oos_fp32 = out_of_source_pair(config)
    try:
        fp32_review = read_threshold(config, REVIEW_THRESHOLD_KEY)
    except ValueError:  # a config from before the review band: none
        fp32_review = fp32_threshold
    report: dict = {"model": args.model, "method": args.method, "calibration_images": len(x_cal),
                    "kept_float": list(keep),
                    "target_recall": args.target_recall, "fp32_threshold": fp32_threshold,
                    "checkpoint": str(checkpoint.relative_to(ROOT) if checkpoint.is_relative_to(ROOT) else checkpoint),
                    "checkpoint_sha256": build_archives.sha256(checkpoint)}
    rows = {}
    for name, path in (("fp32", fp32), ("int8", int8)):
        session = onnx_session(path, threads=1)
        s_val, s_test = scores(session, x_val), scores(session, x_test)
        report[name] = {"val_roc_auc": compute_metrics(y_val, s_val, fp32_threshold)["roc_auc"],
                        # the harmful subclasses on validation: how a recipe is chosen without the test split
                        "val_harmful_subclass_roc_auc": _subclass_aucs(y_val, s_val, sub_val),
                        "test_at_fp32_threshold": compute_metrics(y_test, s_test, fp32_threshold),
                        "test_scores": s_test.tolist(),
                        "size_mb": path.stat().st_size / 1e6}
        rows[f"{args.model} {name} (test, fp32 threshold)"] = report[name]["test_at_fp32_threshold"]
        if name == "fp32":
            fp32_val, fp32_test = s_val, s_test
            fp32_val_recall = compute_metrics(y_val, s_val, fp32_threshold)["recall"]
            fp32_val_review_recall = compute_metrics(y_val, s_val, fp32_review)["recall"]
            report["target_recall"] = args.target_recall or fp32_val_recall
        if name == "int8":
            # a recall of 0 (the fp32 graph flags no harmful val image) has no threshold to match: keep fp32's
            t = (threshold_for_recall(y_val, s_val, report["target_recall"]) if report["target_recall"] > 0
                 else fp32_threshold)
            review = min(threshold_for_recall(y_val, s_val, fp32_val_review_recall) if fp32_val_review_recall > 0
                         else fp32_review, t)
            report[name]["val_threshold_for_target_recall"] = t
            report[name]["val_review_threshold"] = review
            report[name]["val_recall_at_that_threshold"] = compute_metrics(y_val, s_val, t)["recall"]
            report[name]["test_at_val_threshold"] = compute_metrics(y_test, s_test, t)
            # what issue 19's targets ask of the served graph: recall at 90 % precision, each harmful subclass
            report[name]["test_recall_at_90_precision"] = (recall_at_precision(y_test, s_test, 0.90)
                                                           if len(set(y_test.tolist())) == 2 else None)
            report[name]["test_harmful_subclass_roc_auc"] = _subclass_aucs(y_test, s_test, sub_test)
            rows[f"{args.model} int8 (test, threshold re-picked on val)"] = report[name]["test_at_val_threshold"]
            if oos_fp32 is not None:
                report["out_of_source"] = other_point(oos_fp32, y_val, fp32_val, s_val, y_test, fp32_test, s_test)
                rows[f"{args.model} int8 (test, out-of-source operating point)"] = \
                    report["out_of_source"]["test_int8"]
    f32, i8 = report["fp32"], report["int8"]
    # Forward speed in the order fp32 int8 int8 fp32, averaged: a machine whose load drifts during the run
    # favours neither graph (a single fp32-then-int8 pair gave 0.67x and 1.95x on the same graphs).
    sessions = {"fp32": onnx_session(fp32, threads=1), "int8": onnx_session(int8, threads=1)}
    rates: dict[str, list[float]] = {"fp32": [], "int8": []}
    for name in ("fp32", "int8", "int8", "fp32"):
        rates[name].append(forward_rate(sessions[name], x_test, args.speed_seconds / 2))
    for name, got in rates.items():
        report[name]["forward_images_per_s_1_thread"] = sum(got) / len(got)
    report["accuracy_change_points"] = 100 * (i8["test_at_fp32_threshold"]["accuracy"]
                                              - f32["test_at_fp32_threshold"]["accuracy"])
    # what changes for a client when the archive switches from backend onnx to onnx_int8
    report["accuracy_change_points_as_served"] = 100 * (i8["test_at_val_threshold"]["accuracy"]
                                                        - f32["test_at_fp32_threshold"]["accuracy"])
    report["recall_change_points_as_served"] = 100 * (i8["test_at_val_threshold"]["recall"]
                                                      - f32["test_at_fp32_threshold"]["recall"])
    report["forward_speedup"] = i8["forward_images_per_s_1_thread"] / f32["forward_images_per_s_1_thread"]
    backend = HandlerSettings.load(args.model, yaml.safe_load(config.read_text()).get("handler"), env={}).backend
    report["served_note"] = ("The model config serves it (backend onnx_int8, at the thresholds below; the numbers "
                             "above this section are the fp32 weights'). " if backend == "onnx_int8" else
                             f"The model config serves the fp32 graph (backend {backend}), not this one. ")
    (args.out / "quantization.json").write_text(json.dumps(report, indent=2))
    table = markdown_table(rows)
    if args.install:
        install(report, int8, args.install_dir or checkpoint.parent, config, table)
    print(table)
    print(f"forward-only, batch 1, 1 thread: fp32 {f32['forward_images_per_s_1_thread']:.0f} img/s, "
          f"int8 {i8['forward_images_per_s_1_thread']:.0f} img/s ({report['forward_speedup']:.2f}x); "
          f"accuracy change {report['accuracy_change_points']:+.2f} points at the fp32 threshold, "
          f"{report['accuracy_change_points_as_served']:+.2f} as served (recall "
          f"{report['recall_change_points_as_served']:+.2f}); report {args.out / 'quantization.json'}")
    return report


CARD_BEGIN, CARD_END = QUANTIZE_BEGIN, QUANTIZE_END


def card_section(report: dict, table: str) -> str:
    i8 = report["int8"]
    return "\n".join([
        CARD_BEGIN,
        "## Static int8 graph (`make quantize`)",
        f"Static int8 ONNX Runtime graph (QDQ, per-channel weights, {report['method']} calibration on "
        f"{report['calibration_images']} train images; left in fp32: "
        f"{', '.join(report.get('kept_float', [])) or 'nothing'}), calibrated from `{report['checkpoint']}` "
        f"(sha256 {report['checkpoint_sha256'][:12]}…; `make models` refuses it for any other checkpoint). "
        f"{report.get('served_note', '')}"
        f"With `handler.backend: onnx_int8` it is served at its own thresholds: decision "
        f"{i8['val_threshold_for_target_recall']:.4f}, picked on val for harmful recall "
        f"≥ {report['target_recall']:.3f} (the fp32 graph's val recall at its threshold; int8 val recall "
        f"{i8['val_recall_at_that_threshold']:.3f}), review {i8.get('val_review_threshold', float('nan')):.4f} "
        "(the fp32 graph's val recall at its review threshold). "
        + _other_point_sentence(report.get("out_of_source")) +
        f"Forward-only {report['forward_speedup']:.2f}× the fp32 graph (batch 1, 1 thread). "
        f"As served, test accuracy {report['accuracy_change_points_as_served']:+.1f} points and harmful recall "
        f"{report['recall_change_points_as_served']:+.1f} points against the fp32 graph at its threshold. "
        + _served_targets(i8),
        "",
        table,
        "",
        "Reproduce: `make quantize MODEL=" + report["model"] + "` (measure only: `make quantize-eval`); the "
        "served archive itself: `make evaluate MODEL=" + report["model"] + " SPLIT=test "
        "MAR=model-archive/build/model-store/" + report["model"] + ".mar`.",
        CARD_END,
    ])


def _other_point_sentence(oos: dict | None) -> str:
    if not oos:
        return ""
    return (f"At the out-of-source operating point (`operating_point: out_of_source`): decision "
            f"{oos['threshold_int8']:.4f}, review {oos['review_threshold_int8']:.4f} (fp32 "
            f"{oos['fp32_threshold']:.4f} / {oos['fp32_review_threshold']:.4f}, val recall {oos['val_recall']:.3f} / "
            f"{oos['val_review_recall']:.3f}). ")


def _served_targets(i8: dict) -> str:
    """Recall at 90 % precision and the harmful subclasses' ROC-AUC (vs every benign test photo) of the int8 graph."""
    r90 = i8.get("test_recall_at_90_precision")
    subs = ", ".join(f"{k} {v['roc_auc']:.3f} (n={v['n']}{_interval(v)})"
                     for k, v in sorted(i8.get("test_harmful_subclass_roc_auc", {}).items(), key=lambda kv: -kv[1]["n"])
                     if v["n"] >= 50)
    if r90 is None:
        return ""
    return (f"Test recall at 90 % precision {r90:.3f}; ROC-AUC of each harmful subclass with ≥ 50 test photos: "
            f"{subs or '-'}.")


def _interval(subclass: dict) -> str:
    """`, 95 % 0.951-0.981` from a report that has the bootstrap interval (reports from before it do not)."""
    ci = subclass.get("roc_auc_95")
    return f", 95 % {ci[0]:.3f}-{ci[1]:.3f}" if ci else ""


def install(report: dict, graph: Path, folder: Path, config: Path, table: str) -> None:
    """Adopt the int8 graph: copy it and a compact report beside the checkpoint, write its threshold, and put
    its numbers in the model card (a section of its own, replaced on every run)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / INT8_ONNX_FILE).write_bytes(graph.read_bytes())
    compact = {k: v for k, v in report.items() if k not in ("fp32", "int8")}
    for name in ("fp32", "int8"):  # per-image scores stay in OUT: the versioned copy keeps the metrics
        compact[name] = {k: v for k, v in report[name].items() if k != "test_scores"}
    (folder / "quantization.json").write_text(json.dumps(compact, indent=2) + "\n")
    threshold = report["int8"]["val_threshold_for_target_recall"]
    write_threshold(config, threshold, INT8_THRESHOLD_KEY)
    review = report["int8"].get("val_review_threshold", threshold)
    write_threshold(config, review, INT8_REVIEW_THRESHOLD_KEY)
    oos = report.get("out_of_source")
    if oos:
        keys = threshold_keys("out_of_source", "onnx_int8")
        write_threshold(config, oos["threshold_int8"], keys[0])
        write_threshold(config, oos["review_threshold_int8"], keys[1])
    card = folder / "MODEL_CARD.md"
    text = card.read_text() if card.exists() else ""
    if CARD_BEGIN in text:
        text = text[:text.index(CARD_BEGIN)] + text[text.index(CARD_END) + len(CARD_END):].lstrip("\n")
    card.write_text(text.rstrip("\n") + "\n\n" + card_section(report, table) + "\n")
    print(f"installed {folder / INT8_ONNX_FILE} and quantization.json; {config}: {INT8_THRESHOLD_KEY} "
          f"{threshold:.6f}, {INT8_REVIEW_THRESHOLD_KEY} {review:.6f} (serve it with handler.backend: onnx_int8)")


if __name__ == "__main__":
    main()
