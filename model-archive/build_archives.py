"""Build the KServe/TorchServe storage layout: build/config/{config.properties,metrics.yaml,log4j2.xml}
+ build/model-store/*.mar.

Each .mar packs the checkpoint (models/<model>/model.pt from `make train`), our handler with the `handlers`
package it imports, and the version-controlled model config (batching, workers, threshold). The same
config template is rendered for the cluster (KServe mounts the layout at /mnt/models) and, with
loopback addresses, for the local stack (`render-config`, used by scripts/serving.sh).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from string import Template

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from handlers.provenance import Provenance  # noqa: E402
from handlers.registry import MODEL_NAMES, PixelGraph, build_model, load_checkpoint  # noqa: E402
from handlers.settings import INT8_ONNX_FILE, ONNX_FILE, graph_file  # noqa: E402

ARCHIVE_DIR = ROOT / "model-archive"
CONFIG_DIR = ARCHIVE_DIR / "config"
BUILD_DIR = ARCHIVE_DIR / "build"
HANDLER = ROOT / "handlers" / "image_moderation_handler.py"
BOOTSTRAP_DIR = ROOT / ".cache" / "bootstrap"
# Local-stack modules the model worker never imports.
SERVER_SIDE_ONLY = {"stack.py"}
log = logging.getLogger("build_archives")

# KServe's storage initializer puts the storageUri contents at /mnt/models.
CLUSTER = {
    "INFERENCE_BIND": "0.0.0.0:8080",
    "MANAGEMENT_BIND": "127.0.0.1:8081",
    "METRICS_BIND": "0.0.0.0:8082",
    "GRPC_INFERENCE_PORT": "7070",
    "GRPC_MANAGEMENT_PORT": "7071",
    "CONFIG_DIR": "/mnt/models/config",
    "MODEL_STORE": "/mnt/models/model-store",
    "JOB_QUEUE_SIZE": "200",
    "WORKERS": "1",
}


def render_config(out: Path, values: dict[str, str]) -> None:
    text = Template((CONFIG_DIR / "config.properties.in").read_text()).substitute(values)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    for name in ("metrics.yaml", "log4j2.xml"):  # referenced from config.properties by CONFIG_DIR path
        shutil.copy2(CONFIG_DIR / name, out.parent / name)


def checkpoint_for(model: str) -> Path:
    """The trained checkpoint, or an explicitly labelled untrained placeholder when none is committed yet."""
    trained = ROOT / "models" / model / "model.pt"
    if trained.exists():
        return trained
    import torch

    placeholder = BOOTSTRAP_DIR / model / "model.pt"
    if not placeholder.exists():
        torch.manual_seed(0)
        meta = {"model": model, "version": "0.0.0-untrained", "weights": "random-init placeholder (UNTRAINED)"}
        placeholder.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": build_model(model).state_dict(), "meta": meta}, placeholder)
    log.warning("%s: no trained checkpoint at %s; packing an UNTRAINED placeholder (run `make train`)", model, trained)
    return placeholder


def stage_handler_package(model: str) -> Path:
    """Copy the `handlers` package into a staging folder; the archiver copies the folder's contents into the .mar."""
    stage = BUILD_DIR / "staging" / model
    shutil.rmtree(stage, ignore_errors=True)
    (stage / "handlers").mkdir(parents=True)
    for src in sorted((ROOT / "handlers").glob("*.py")):
        if src.name not in SERVER_SIDE_ONLY:
            shutil.copy2(src, stage / "handlers" / src.name)
    return stage


def handler_config(model: str) -> dict:
    import yaml

    return (yaml.safe_load((CONFIG_DIR / f"{model}.yaml").read_text()) or {}).get("handler") or {}


def export_onnx(model: str, ckpt: Path, out: Path) -> Path:
    """Checkpoint -> ONNX graph taking uint8 NHWC pixels (normalisation folded in), dynamic batch.

    Used for `backend: onnx` archives and by the benchmark's in-process ceiling; the scores match
    eager PyTorch within 1e-3 (tests/test_perf_onnx.py).
    """
    import torch

    net = build_model(model)
    load_checkpoint(net, str(ckpt))
    graph = PixelGraph(net).eval()
    example = torch.zeros(1, 224, 224, 3, dtype=torch.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # The TorchScript exporter is chosen on purpose (dynamo=False): the torch.export one needs onnxscript,
        # which is not pinned, and the int8 graphs and the score-parity tests were made with this one. Its
        # deprecation notices (the exporter's own, and its internal logging helper's "The feature will be removed")
        # name nothing a user of `make models` can act on.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        torch.onnx.export(
            graph, (example,), str(out), dynamo=False, opset_version=17,
            input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        )
    return out


def sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def int8_graph_for(model: str, ckpt: Path) -> Path:
    """The committed int8 graph of `make quantize`, refused unless it was calibrated from this very checkpoint
    (a retrained model.pt with an old int8 graph would serve the old model under the new version)."""
    import json

    folder = ckpt.parent
    graph, report = folder / INT8_ONNX_FILE, folder / "quantization.json"
    if not graph.exists() or not report.exists():
        raise SystemExit(f"{model}: backend onnx_int8 needs {graph} and {report}: run `make quantize MODEL={model}`")
    calibrated_from = json.loads(report.read_text()).get("checkpoint_sha256")
    if calibrated_from != sha256(ckpt):
        raise SystemExit(f"{model}: {graph} was calibrated from another checkpoint than {ckpt}: "
                         f"run `make quantize MODEL={model}` again")
    return graph


def committed_int8_graph(model: str) -> Path | None:
    """The int8 graph that `make models` would pack for the committed checkpoint, or None (none made, or stale):
    what the benchmarks measure next to fp32."""
    try:
        return int8_graph_for(model, checkpoint_for(model))
    except SystemExit:
        return None


def build_archive(model: str, store: Path) -> Path:
    ckpt = checkpoint_for(model)
    meta = load_checkpoint(build_model(model), str(ckpt))
    version = str(meta.get("version", "1.0"))
    stage = stage_handler_package(model)
    provenance = Provenance.from_meta(model, {**meta, "version": version})
    provenance.write(stage)  # lands in the model dir: the handler serves it as model metadata
    if provenance.warning:
        log.warning("models: WARNING: %s", provenance.warning)
    backend = str(handler_config(model).get("backend", "eager")).lower()
    if graph_file(backend) is not None:
        # TorchServe copies --extra-files folder contents to the model dir: model.onnx lands beside model.pt.
        # An int8 archive keeps the fp32 graph too, so MODERATION_BACKEND=onnx switches back without a rebuild.
        export_onnx(model, ckpt, stage / ONNX_FILE)
    if graph_file(backend) == INT8_ONNX_FILE:
        shutil.copy2(int8_graph_for(model, ckpt), stage / INT8_ONNX_FILE)
    cmd = [
        str(Path(sys.executable).parent / "torch-model-archiver"),
        "--model-name", model,
        "--version", version,
        "--serialized-file", str(ckpt),
        "--handler", str(HANDLER),
        "--extra-files", str(stage),
        "--config-file", str(CONFIG_DIR / f"{model}.yaml"),
        "--export-path", str(store),
        "--archive-format", "default",
        "--force",
    ]
    # The archiver's chatter ("WARNING - Overwriting ...", which --force asks for) stays out of the terminal
    # unless it fails.
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"torch-model-archiver failed for {model} (exit {done.returncode}):\n"
                         f"{done.stdout}{done.stderr}")
    shutil.rmtree(stage)
    mar = store / f"{model}.mar"
    log.debug("built %s (version %s, checkpoint %s, %.1f MB)", mar, version, ckpt, mar.stat().st_size / 1e6)
    return mar


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build every .mar and the cluster config")
    build.add_argument("--models", nargs="+", default=list(MODEL_NAMES), choices=MODEL_NAMES)
    local = sub.add_parser("render-config", help="render config.properties for the local stack")
    local.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "build":
        store = BUILD_DIR / "model-store"
        store.mkdir(parents=True, exist_ok=True)
        for model in args.models:  # one line per model: ResNet50's export and archive take a while
            started = time.monotonic()
            mar = build_archive(model, store)
            log.info("models: %s built (%.0f MB, %.0f s)", mar.relative_to(ROOT), mar.stat().st_size / 1e6,
                     time.monotonic() - started)
        render_config(BUILD_DIR / "config" / "config.properties", CLUSTER)
        log.info("models: KServe storage layout ready in %s (upload it to the InferenceService storageUri)",
                 BUILD_DIR.relative_to(ROOT))
    else:
        env = os.environ
        host = env.get("STACK_HOST", "127.0.0.1")
        render_config(
            args.out,
            {
                "INFERENCE_BIND": f"{host}:{env['TORCHSERVE_INFERENCE_PORT']}",
                "MANAGEMENT_BIND": f"{host}:{env['TORCHSERVE_MANAGEMENT_PORT']}",
                "METRICS_BIND": f"{host}:{env['TORCHSERVE_METRICS_PORT']}",
                "GRPC_INFERENCE_PORT": env["TORCHSERVE_GRPC_INFERENCE_PORT"],
                "GRPC_MANAGEMENT_PORT": env["TORCHSERVE_GRPC_MANAGEMENT_PORT"],
                "CONFIG_DIR": str(args.out.parent),
                "MODEL_STORE": str(BUILD_DIR / "model-store"),
                "JOB_QUEUE_SIZE": env.get("TORCHSERVE_JOB_QUEUE_SIZE", "1000"),
                "WORKERS": env.get("TORCHSERVE_WORKERS", "1"),
            },
        )


if __name__ == "__main__":
    main()
