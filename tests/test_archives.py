"""`make models` output: the storage layout KServe's TorchServe runtime mounts at /mnt/models."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import yaml

from handlers.registry import MODEL_NAMES

BUILD = Path(__file__).resolve().parent.parent / "model-archive" / "build"


@pytest.mark.parametrize("model", MODEL_NAMES)
def test_archive_packs_checkpoint_handler_package_and_config(model: str) -> None:
    with zipfile.ZipFile(BUILD / "model-store" / f"{model}.mar") as mar:
        names = set(mar.namelist())
        manifest = json.loads(mar.read("MAR-INF/MANIFEST.json"))
        config = yaml.safe_load(mar.read(f"{model}.yaml"))
    assert {"model.pt", "image_moderation_handler.py", "handlers/registry.py", "handlers/imaging.py"} <= names
    assert manifest["model"]["modelName"] == model
    assert manifest["model"]["handler"] == "image_moderation_handler.py"
    assert config["batchSize"] >= 1 and config["maxBatchDelay"] >= 0 and config["responseTimeout"] > 0
    assert 0.0 <= config["handler"]["threshold"] <= 1.0
    backend = config["handler"].get("backend", "eager")
    if backend in ("onnx", "onnx_int8"):
        assert "model.onnx" in names
    if backend == "onnx_int8":  # the calibrated graph, and the threshold picked for it
        assert "model.int8.onnx" in names
        assert 0.0 <= config["handler"]["threshold_int8"] <= 1.0


def test_cluster_config_matches_kserve_layout_with_secure_defaults() -> None:
    props = dict(
        line.split("=", 1)
        for line in (BUILD / "config" / "config.properties").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert props["model_store"] == "/mnt/models/model-store"
    assert props["metrics_config"] == "/mnt/models/config/metrics.yaml"
    assert props["management_address"].startswith("http://127.0.0.1:")
    assert props["enable_model_api"] == "false"
    assert props["allowed_urls"] == "file:///mnt/models/model-store/.*"
    assert props["metrics_mode"] == "prometheus"
    assert (BUILD / "config" / "metrics.yaml").exists()
    assert "-Dlog4j.configurationFile=file:///mnt/models/config/log4j2.xml" in props["vmargs"]
    assert (BUILD / "config" / "log4j2.xml").exists()
