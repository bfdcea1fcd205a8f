"""Per-model serving settings: model-config `handler:` section, overridden by environment variables.

TorchServe packs `model-archive/config/<model>.yaml` into the .mar; its `handler:` section holds what
is ours (decision threshold, threads, fast paths). A platform engineer can still override any of it per
deployment without rebuilding the archive, through `MODERATION_<KEY>_<MODEL>` or `MODERATION_<KEY>`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from handlers.imaging import DecodeLimits

BACKENDS: tuple[str, ...] = ("eager", "onnx", "onnx_int8")
ONNX_FILE = "model.onnx"  # packed into the .mar next to model.pt when the config asks for an ONNX backend
INT8_ONNX_FILE = "model.int8.onnx"  # calibrated by `make quantize` (models/<model>/), packed for backend: onnx_int8
# The int8 graph scores differently from the fp32 weights, so it has its own decision threshold, picked on
# validation by `make quantize`; it is served exactly when backend is onnx_int8.
INT8_THRESHOLD_KEY = "threshold_int8"
REVIEW_THRESHOLD_KEY = "review_threshold"
INT8_REVIEW_THRESHOLD_KEY = "review_threshold_int8"


def graph_file(backend: str) -> str | None:
    """The ONNX file a backend runs (None for eager PyTorch)."""
    return {"onnx": ONNX_FILE, "onnx_int8": INT8_ONNX_FILE}.get(backend)


def _env(key: str, model: str, env: Mapping[str, str]) -> str | None:
    """Per-model variable wins over the global one: MODERATION_THRESHOLD_RESNET50 > MODERATION_THRESHOLD."""
    return env.get(f"MODERATION_{key.upper()}_{model.upper()}") or env.get(f"MODERATION_{key.upper()}")


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    return str(value).strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class HandlerSettings:
    """What the handler reads once at initialize(); every field is documented in the README."""

    # P(harmful) at or above which an image is labelled harmful; backend onnx_int8 serves handler.threshold_int8
    # instead (MODERATION_THRESHOLD[_<MODEL>] still overrides whichever is served)
    threshold: float = 0.5
    # P(harmful) at or above which an image below `threshold` goes to human review (decision "review"); picked by
    # `make train` for a higher recall. Unset (None): the threshold itself, i.e. no review band. Backend
    # onnx_int8 serves handler.review_threshold_int8.
    review_threshold: float | None = None
    torch_threads: int = 0  # intra-op threads per worker; 0 keeps torch's default
    channels_last: bool = True  # NHWC memory format: faster convolutions on x86 CPUs
    fast_jpeg: bool = True  # decode large JPEGs at reduced size (DCT scaling) before resizing to 224
    # "eager" (PyTorch), "onnx" (ONNX Runtime on model.onnx, exported into the .mar by `make models`:
    # ~3x eager PyTorch for MobileNetV2 on CPU, same scores within 1e-3) or "onnx_int8" (the static int8
    # graph of `make quantize`, with its own threshold `threshold_int8`).
    backend: str = "eager"
    # Images per forward call; a server-side batch with more is run in chunks (0 = all at once). On CPU,
    # per-image throughput falls for large batches (cache-bound; MobileNetV2/ONNX numbers in loadtest/README.md),
    # and a bridge request alone carries up to 8 images.
    forward_batch: int = 0
    # Cells per side of the KServe v1 `:explain` occlusion grid (must divide 224): 7 -> 49 extra forward passes
    # per explained image, 32x32-pixel cells of the resized input.
    explain_grid: int = 7

    @classmethod
    def load(
        cls, model: str, config: Mapping[str, Any] | None, env: Mapping[str, str] | None = None
    ) -> HandlerSettings:
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = _env(f.name, model, env)
            if raw is None and config is not None:
                raw = config.get(f.name)
            if raw is None:
                continue
            if f.type in ("bool", bool):
                values[f.name] = _as_bool(raw)
            elif f.type in ("int", int):
                values[f.name] = int(raw)
            elif f.type in ("str", str):
                values[f.name] = str(raw).strip().lower()
            else:
                values[f.name] = float(raw)
        settings = cls(**values)
        if settings.backend == "onnx_int8" and _env("threshold", model, env) is None:
            int8 = (config or {}).get(INT8_THRESHOLD_KEY)
            if int8 is None:
                raise ValueError(f"backend onnx_int8 for {model} needs handler.{INT8_THRESHOLD_KEY} "
                                 "(written by `make quantize`)")
            settings = replace(settings, threshold=float(int8))
        if settings.backend == "onnx_int8" and _env("review_threshold", model, env) is None:
            int8 = (config or {}).get(INT8_REVIEW_THRESHOLD_KEY)
            settings = replace(settings, review_threshold=None if int8 is None else float(int8))
        if settings.review_threshold is None:
            settings = replace(settings, review_threshold=settings.threshold)
        elif _env("threshold", model, env) is not None and _env("review_threshold", model, env) is None:
            # an operator who moves only the threshold gets the configured band below it, or none
            settings = replace(settings, review_threshold=min(settings.review_threshold, settings.threshold))
        if not 0.0 <= settings.threshold <= 1.0:
            raise ValueError(f"threshold for {model} must be within [0, 1], got {settings.threshold}")
        if not 0.0 <= settings.review_threshold <= settings.threshold:  # type: ignore[operator]
            raise ValueError(f"review_threshold for {model} must be within [0, threshold={settings.threshold}], "
                             f"got {settings.review_threshold}")
        if settings.forward_batch < 0:
            raise ValueError(f"forward_batch for {model} must be >= 0, got {settings.forward_batch}")
        if settings.explain_grid < 1 or 224 % settings.explain_grid:  # registry.IMAGE_SIZE (torch-free import here)
            raise ValueError(f"explain_grid for {model} must divide 224, got {settings.explain_grid}")
        if settings.backend not in BACKENDS:
            raise ValueError(f"backend for {model} must be one of {', '.join(BACKENDS)}, got {settings.backend!r}")
        return settings

    def decode_limits(self) -> DecodeLimits:
        return DecodeLimits.from_env(fast_jpeg=self.fast_jpeg)
