"""`make quantize-eval` end to end on a handful of generated images: a real int8 QDQ graph is calibrated,
scored next to the fp32 graph and reported (the numbers for the real data are in loadtest/README.md)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from handlers.settings import HandlerSettings
from tests.training_support import make_dataset
from training import quantize
from training.thresholds import read_threshold

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "model-archive" / "config" / "mobilenet_v2.yaml"


def _build_archives():
    spec = importlib.util.spec_from_file_location("build_archives", ROOT / "model-archive" / "build_archives.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("build_archives", module)
    spec.loader.exec_module(module)
    return module


def test_int8_graph_is_quantized_scored_and_reported(tmp_path: Path) -> None:
    data = make_dataset(tmp_path / "data", per_subclass=10)
    out, installed, config = tmp_path / "quant", tmp_path / "installed", tmp_path / "mobilenet_v2.yaml"
    shutil.copy2(CONFIG, config)
    report = quantize.main(["--model", "mobilenet_v2", "--data", str(data), "--out", str(out),
                            "--calibration", "8", "--speed-seconds", "0.3",
                            "--install", "--install-dir", str(installed), "--config", str(config)])
    assert json.loads((out / "quantization.json").read_text()) == report
    int8 = onnx.load(str(out / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # the classifier head and the first convolution stay fp32 (--keep-float default): their weights are float
    # initializers and their outputs are not re-quantized, while the convolutions between them use int8 weights
    dequantized = {o for n in int8.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantized_in = {i for n in int8.graph.node if n.op_type == "QuantizeLinear" for i in n.input}
    floats = {t.name for t in int8.graph.initializer if t.data_type == onnx.TensorProto.FLOAT}
    convs = [n for n in int8.graph.node if n.op_type == "Conv"]
    heads = [n for n in int8.graph.node if n.op_type in ("Gemm", "MatMul")]
    assert report["kept_float"] == ["first", "head"] and heads
    for node in [convs[0], *heads]:
        assert node.input[1] in floats and not quantized_in & set(node.output), node.name
    assert all(n.input[1] in dequantized for n in convs[1:])
    # int8 weights: the graph is a fraction of the fp32 one
    assert report["int8"]["size_mb"] < 0.5 * report["fp32"]["size_mb"]
    fp32_scores, int8_scores = (np.array(report[k]["test_scores"]) for k in ("fp32", "int8"))
    assert len(fp32_scores) == len(int8_scores) > 0  # the corrupt file is skipped, not fatal
    assert np.all((int8_scores >= 0) & (int8_scores <= 1))
    # same function up to quantization error (8 synthetic calibration images: coarse, but not garbage)
    assert np.max(np.abs(fp32_scores - int8_scores)) < 0.1, (fp32_scores, int8_scores)
    # the threshold re-picked on val really reaches the target recall there (its whole point): by default the
    # fp32 graph's val recall at its own threshold, so int8 keeps the fp32 model's promise
    assert 0 <= report["int8"]["val_threshold_for_target_recall"] <= 1
    assert report["int8"]["val_recall_at_that_threshold"] >= report["target_recall"] - 1e-9
    assert report["int8"]["val_review_threshold"] <= report["int8"]["val_threshold_for_target_recall"]
    assert report["fp32_threshold"] == read_threshold(CONFIG)
    # each harmful subclass's AUC with a 95 % interval: on val for both graphs (to choose a recipe), on test
    for split, graph in (("val", "fp32"), ("val", "int8"), ("test", "int8")):
        subs = report[graph][f"{split}_harmful_subclass_roc_auc"]
        assert subs, split
        assert all(s["n"] > 0 and 0 <= s["roc_auc_95"][0] <= s["roc_auc_95"][1] <= 1 for s in subs.values()), subs

    # --install: the graph, a compact report and its own threshold, which backend onnx_int8 serves
    assert (installed / "model.int8.onnx").read_bytes() == (out / "model.int8.onnx").read_bytes()
    kept = json.loads((installed / "quantization.json").read_text())
    assert "test_scores" not in kept["int8"] and kept["int8"]["test_at_val_threshold"]
    card = (installed / "MODEL_CARD.md").read_text()
    assert card.count("Static int8 graph") == 1 and "int8 (test, threshold re-picked on val)" in card
    written = read_threshold(config, "threshold_int8")
    assert written == pytest.approx(report["int8"]["val_threshold_for_target_recall"], abs=1e-6)
    assert read_threshold(config) == read_threshold(CONFIG)  # the fp32 threshold is untouched
    handler = yaml.safe_load(config.read_text())["handler"]
    assert HandlerSettings.load("mobilenet_v2", {**handler, "backend": "onnx_int8"}, env={}).threshold == written
    fp32 = HandlerSettings.load("mobilenet_v2", {**handler, "backend": "onnx"}, env={})
    assert fp32.threshold == handler["threshold"]
    # the out-of-source operating point gets its int8 pair the same way: the fp32 pair's val recall, re-picked
    oos = report["out_of_source"]
    assert oos["fp32_threshold"] == read_threshold(CONFIG, "out_of_source_threshold")
    assert read_threshold(config, "out_of_source_threshold_int8") == pytest.approx(oos["threshold_int8"], abs=1e-6)
    assert oos["review_threshold_int8"] <= oos["threshold_int8"] and 0 <= oos["val_recall"] <= oos["val_review_recall"]
    served_oos = HandlerSettings.load("mobilenet_v2", handler, env={"MODERATION_OPERATING_POINT": "out_of_source"})
    assert served_oos.threshold == pytest.approx(oos["threshold_int8"], abs=1e-6)

    # make models packs the graph only for the checkpoint it was calibrated from
    builder = _build_archives()
    ckpt = installed / "model.pt"
    shutil.copy2(ROOT / "models" / "mobilenet_v2" / "model.pt", ckpt)
    assert builder.int8_graph_for("mobilenet_v2", ckpt) == installed / "model.int8.onnx"
    with ckpt.open("ab") as f:
        f.write(b"retrained")
    with pytest.raises(SystemExit, match="calibrated from another checkpoint"):
        builder.int8_graph_for("mobilenet_v2", ckpt)
