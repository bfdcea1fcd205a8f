"""Training and evaluation on tiny generated images: split, threshold, metrics, weights, one real run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from handlers.registry import build_model
from training import evaluate, train
from training.data import ClassMap, load_dataset, stratified_split
from training.evaluation import METRIC_KEYS, compute_metrics, threshold_for_recall
from training.report import write_threshold
from training.weights import deep_sort_mobilenet_v2, load_backbone, map_positionally

ROOT = Path(__file__).resolve().parent.parent


def make_dataset(root: Path, per_subclass: int = 6) -> Path:
    """harmful/{fire,knife} reddish, benign/{sky,grass} bluish/greenish noisy images, plus one corrupt file."""
    rng = np.random.default_rng(0)
    colours = {("harmful", "fire"): (220, 60, 30), ("harmful", "knife"): (200, 90, 90),
               ("benign", "sky"): (40, 90, 220), ("benign", "grass"): (50, 200, 60)}
    for (label, sub), colour in colours.items():
        folder = root / label / sub
        folder.mkdir(parents=True)
        for i in range(per_subclass):
            pixels = np.clip(rng.normal(colour, 25, size=(48, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    (root / "benign" / "sky" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def test_stratified_split_is_seeded_and_keeps_every_group_in_every_split() -> None:
    keys = ["a"] * 20 + ["b"] * 10 + ["c"] * 3
    first = stratified_split(keys, (0.8, 0.1, 0.1), seed=1)
    assert first == stratified_split(keys, (0.8, 0.1, 0.1), seed=1)
    assert first != stratified_split(keys, (0.8, 0.1, 0.1), seed=2)
    for group in "abc":
        splits = {s for k, s in zip(keys, first, strict=True) if k == group}
        assert splits == {"train", "val", "test"}
    assert first[:20].count("val") == 2 and first[:20].count("test") == 2


def test_load_dataset_from_class_folders_and_from_manifest(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data")
    samples = load_dataset(root)
    assert len(samples) == 25 and {s.subclass for s in samples} == {"fire", "knife", "sky", "grass"}
    assert {s.split for s in samples} == {"train", "val", "test"}
    assert sum(s.label for s in samples) == 12  # harmful = 1
    (root / "manifest.csv").write_text("path,label,subclass,split\nharmful/fire/0.jpg,harmful,fire,test\n"
                                       "benign/sky/1.jpg,benign,sky,train\nbenign/sky/2.jpg,other,sky,train\n")
    manifest = load_dataset(root)
    assert [(s.path.name, s.label, s.split) for s in manifest] == [("0.jpg", 1, "test"), ("1.jpg", 0, "train")]
    assert len(load_dataset(root, ClassMap(("harmful",), ("benign",)), use_manifest=False)) == 25


def test_metrics_match_hand_computed_values() -> None:
    y = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]
    s = [0.9, 0.8, 0.4, 0.2, 0.7, 0.3, 0.1, 0.1, 0.05, 0.6]
    m = compute_metrics(y, s, 0.5)
    assert tuple(m) == METRIC_KEYS
    assert m["confusion_matrix"] == {"tp": 2, "fp": 2, "tn": 4, "fn": 2}
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.5) and m["recall"] == pytest.approx(0.5) and m["f1"] == pytest.approx(0.5)
    # AUC: of 24 (pos, neg) pairs, pos wins 19 (0.9: 6, 0.8: 6, 0.4: 4, 0.2: 3)
    assert m["roc_auc"] == pytest.approx(19 / 24)
    assert m["n_images"] == 10 and m["threshold"] == 0.5


def test_threshold_for_recall_picks_the_highest_threshold_reaching_the_target() -> None:
    y = [1, 1, 1, 1, 0, 0]
    s = [0.9, 0.7, 0.5, 0.2, 0.6, 0.1]
    assert threshold_for_recall(y, s, 0.75) == 0.5  # 3 of 4 harmful at >= 0.5
    assert threshold_for_recall(y, s, 0.9) == 0.2
    assert threshold_for_recall(y, s, 0.25) == 0.9
    assert compute_metrics(y, s, threshold_for_recall(y, s, 0.75))["recall"] >= 0.75


def test_offline_mobilenet_backbone_maps_onto_torchvision_layout() -> None:
    shipped = torch.load(deep_sort_mobilenet_v2(), map_location="cpu", weights_only=True)
    model = build_model("mobilenet_v2")
    target = {k: v for k, v in model.state_dict().items() if k.startswith("features.")}
    mapped = map_positionally(shipped, target)
    assert list(mapped) == list(target)  # torchvision's key order and names
    head_before = model.classifier[1].weight.clone()
    load_backbone(model, "mobilenet_v2", shipped)
    first = next(iter(shipped))
    assert torch.equal(model.state_dict()["features.0.0.weight"], shipped[first])
    assert torch.equal(model.classifier[1].weight, head_before)  # the 2-class head is left alone
    with pytest.raises(ValueError, match="does not fit"):
        map_positionally(dict(reversed(list(shipped.items()))), target)


def test_write_threshold_keeps_the_rest_of_the_config(tmp_path: Path) -> None:
    config = tmp_path / "m.yaml"
    shutil.copy(ROOT / "model-archive" / "config" / "mobilenet_v2.yaml", config)
    before = config.read_text()
    write_threshold(config, 0.123456)
    after = config.read_text()
    assert "threshold: 0.123456" in after
    assert len(before.splitlines()) == len(after.splitlines())


@pytest.fixture
def restore_determinism() -> object:
    yield
    torch.use_deterministic_algorithms(False)  # training turns it on process-wide


@pytest.mark.usefixtures("restore_determinism")
def test_one_training_run_then_evaluate_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_dataset(tmp_path / "data")
    config = tmp_path / "mobilenet_v2.yaml"
    shutil.copy(ROOT / "model-archive" / "config" / "mobilenet_v2.yaml", config)
    out = tmp_path / "model"
    train.main(["--model", "mobilenet_v2", "--data", str(data), "--out", str(out), "--config", str(config),
                "--random-init", "--tune-from", "features.17", "--views", "1", "--epochs", "2", "--batch-size", "8"])
    blob = torch.load(out / "model.pt", weights_only=True)
    assert blob["meta"]["weights"].startswith("random initialisation")
    assert f"threshold: {blob['meta']['threshold']:.6f}" in config.read_text()
    assert (out / "MODEL_CARD.md").read_text().count("RANDOM") == 1
    metrics = evaluate.main(["--model", "mobilenet_v2", "--data", str(data), "--out", str(tmp_path / "eval"),
                             "--checkpoint", str(out / "model.pt")])
    written = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert tuple(written) == METRIC_KEYS and written == json.loads(json.dumps(metrics))
    assert written["n_images"] == 24  # the corrupt file is reported and skipped
    assert "skipped unreadable image" in capsys.readouterr().out
    for png in ("roc_curve.png", "precision_recall_curve.png", "confusion_matrix.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 1000
