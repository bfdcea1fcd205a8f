"""Settings of the KServe runtime from environment variables; defaults work against the local stack (stack.env).

One table, read as the bridge's (handlers/env.py, `<NAME>_FILE` first): the README and the chart's ServingRuntime
use exactly these names. The per-model settings (threshold, backend, threads, batching) come from each archive's
model config, as for TorchServe, and MODERATION_* variables override them the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handlers.env import reader
from handlers.stack import stack

ROOT = Path(__file__).resolve().parent.parent

# name -> (default, description)
DEFAULTS: dict[str, tuple[str, str]] = {
    "KSERVE_HOST": ("", "bind address of REST and gRPC (default: $STACK_HOST, 127.0.0.1; the chart sets 0.0.0.0)"),
    "KSERVE_HTTP_PORT": ("", "REST port: KServe v1/v2 paths, health, metadata, /metrics (default: $INFERENCE_PORT)"),
    "KSERVE_GRPC_PORT": ("", "OIP v2 gRPC port (default: $INFERENCE_GRPC_PORT)"),
    "KSERVE_MODEL_STORE": ("", "folder of .mar archives (default: model-archive/build/model-store; on the cluster "
                               "/mnt/models/model-store, where KServe's storage initializer puts them)"),
    "KSERVE_MODELS": ("", "comma-separated models to serve (default: every archive in the store)"),
    "KSERVE_WORKDIR": ("", "where the archives are unpacked (default: a temporary folder, removed once loaded)"),
    "KSERVE_MAX_BODY_BYTES": (str(40 * 1024 * 1024), "request body cap (bytes): 413 body_too_large above it"),
}


@dataclass(frozen=True)
class RuntimeConfig:
    host: str
    http_port: int
    grpc_port: int
    model_store: Path
    models: list[str]
    workdir: str
    max_body_bytes: int

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeConfig:
        e = reader(environ, DEFAULTS)
        s = stack()
        return cls(
            host=e("KSERVE_HOST") or s["STACK_HOST"],
            http_port=int(e("KSERVE_HTTP_PORT") or s["INFERENCE_PORT"]),
            grpc_port=int(e("KSERVE_GRPC_PORT") or s["INFERENCE_GRPC_PORT"]),
            model_store=Path(e("KSERVE_MODEL_STORE") or ROOT / "model-archive" / "build" / "model-store"),
            models=[m.strip() for m in e("KSERVE_MODELS").split(",") if m.strip()],
            workdir=e("KSERVE_WORKDIR"),
            max_body_bytes=int(e("KSERVE_MAX_BODY_BYTES")),
        )
