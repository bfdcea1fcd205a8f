"""`make quantize-eval` end to end on a handful of generated images: a real int8 QDQ graph is calibrated,
scored next to the fp32 graph and reported (the numbers for the real data are in loadtest/README.md)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

from tests.training_support import make_dataset
from training import quantize
from training.thresholds import read_threshold

ROOT = Path(__file__).resolve().parent.parent


def test_int8_graph_is_quantized_scored_and_reported(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_subclass=10)
    out = tmp_path / "quant"
    report = quantize.main(["--model", "mobilenet_v2", "--data", str(data), "--out", str(out),
                            "--calibration", "8", "--speed-seconds", "0.3"])
    assert json.loads((out / "quantization.json").read_text()) == report
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # int8 weights: the graph is a fraction of the fp32 one
    assert report["int8"]["size_mb"] < 0.5 * report["fp32"]["size_mb"]
    fp32_scores, int8_scores = (np.array(report[k]["test_scores"]) for k in ("fp32", "int8"))
    assert len(fp32_scores) == len(int8_scores) > 0  # the corrupt file is skipped, not fatal
    assert np.all((int8_scores >= 0) & (int8_scores <= 1))
    # same function up to quantization error (8 synthetic calibration images: coarse, but not garbage)
    assert np.max(np.abs(fp32_scores - int8_scores)) < 0.1, (fp32_scores, int8_scores)
    # the threshold re-picked on val really reaches the target recall there (its whole point)
    assert 0 <= report["int8"]["val_threshold_for_target_recall"] <= 1
    assert report["int8"]["val_recall_at_that_threshold"] >= 0.90
    assert report["served_threshold"] == read_threshold(ROOT / "model-archive" / "config" / "mobilenet_v2.yaml")
