"""Per-model serving settings: model-config `handler:` section, overridden by environment variables.

TorchServe packs `model-archive/config/<model>.yaml` into the .mar; its `handler:` section holds what
is ours (decision threshold, threads, fast paths). A platform engineer can still override any of it per
deployment without rebuilding the archive, through `MODERATION_<KEY>_<MODEL>` or `MODERATION_<KEY>`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields, replace
from typing import Any, get_type_hints

BACKENDS: tuple[str, ...] = ("eager", "onnx", "onnx_int8")
ONNX_FILE = "model.onnx"  # packed into the .mar next to model.pt when the config asks for an ONNX backend
INT8_ONNX_FILE = "model.int8.onnx"  # calibrated by `make quantize` (models/<model>/), packed for backend: onnx_int8
# The int8 graph scores differently from the fp32 weights, so it has its own decision threshold, picked on
# validation by `make quantize`; it is served exactly when backend is onnx_int8.
INT8_THRESHOLD_KEY = "threshold_int8"
REVIEW_THRESHOLD_KEY = "review_threshold"
INT8_REVIEW_THRESHOLD_KEY = "review_threshold_int8"
# Where a model's thresholds were picked, i.e. which photos their recall promise is about. "validation": the
# validation split, photos of the sources the model was trained on (the unprefixed keys above). "out_of_source":
# the source folds' predictions, photos of sources the model never saw (`make train` writes the same four keys
# prefixed `out_of_source_`); it keeps its recall on new sources at the price of many more benign photos flagged.
OPERATING_POINTS: tuple[str, ...] = ("validation", "out_of_source")


def threshold_keys(operating_point: str, backend: str) -> tuple[str, str]:
    """The model-config keys of the decision and review thresholds served at an operating point and backend."""
    prefix = "" if operating_point == "validation" else f"{operating_point}_"
    suffix = "_int8" if backend == "onnx_int8" else ""
    return f"{prefix}threshold{suffix}", f"{prefix}{REVIEW_THRESHOLD_KEY}{suffix}"


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
    # Which of the archive's threshold pairs is served (OPERATING_POINTS): "validation" (the promise holds on photos
    # like the training sources') or "out_of_source" (it holds on photos of unseen sources; many more flagged).
    operating_point: str = "validation"
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
        parse: dict[Any, Callable[[Any], Any]] = {bool: _as_bool, int: int, str: lambda v: str(v).strip().lower()}
        hints = get_type_hints(cls)  # the fields' real types (annotations are strings under `from __future__`)
        for f in fields(cls):
            raw = _env(f.name, model, env)
            if raw is None and config is not None:
                raw = config.get(f.name)
            if raw is None:
                continue
            values[f.name] = parse.get(hints[f.name], float)(raw)  # float and `float | None` thresholds
        settings = cls(**values)
        settings = replace(settings, operating_point=settings.operating_point.replace("-", "_"))
        if settings.operating_point not in OPERATING_POINTS:
            raise ValueError(f"operating_point for {model} must be one of {', '.join(OPERATING_POINTS)}, "
                             f"got {settings.operating_point!r}")
        decision_key, review_key = threshold_keys(settings.operating_point, settings.backend)
        if decision_key != "threshold" and _env("threshold", model, env) is None:
            picked = (config or {}).get(decision_key)
            if picked is None:
                raise ValueError(f"backend {settings.backend} at operating point {settings.operating_point} for "
                                 f"{model} needs handler.{decision_key} (written by `make train` / `make quantize`)")
            settings = replace(settings, threshold=float(picked))
        if review_key != REVIEW_THRESHOLD_KEY and _env("review_threshold", model, env) is None:
            picked = (config or {}).get(review_key)
            settings = replace(settings, review_threshold=None if picked is None else float(picked))
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
