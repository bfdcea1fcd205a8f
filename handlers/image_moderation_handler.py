"""TorchServe handler for both moderation models (MobileNetV2, ResNet50).

Life cycle as in TorchServe's BaseHandler: initialize once per worker, then per server-side batch
preprocess -> inference -> postprocess. Unlike the stock kserve envelopes, every row of the batch is
parsed on its own (raw bytes, KServe v1 or v2), all images of all rows go through one forward pass (or
chunks of `forward_batch` images: large CPU batches are slower per image),
and a bad row gets its own 4xx while the other rows still get predictions.

Two interchangeable backends, picked by `handler.backend` in the model config: eager PyTorch on
model.pt, or ONNX Runtime on model.onnx (exported by `make models`; normalisation folded into the
graph, so the worker only resizes to uint8 pixels and never imports torchvision).

A request that TorchServe marks as an explanation (KServe v1 `:explain`, TorchServe `/explanations`) gets
an occlusion grid per image (handlers/explain.py) next to its prediction; TorchServe's describe call
(`GET /models/{m}?customized=true`) answers the weights' provenance (handlers/provenance.py).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.envelopes import ParsedRequest, Prediction, parse_request, render_response
from handlers.errors import ModerationError, error_body
from handlers.explain import explanation, occlusion_grid
from handlers.imaging import decode_image
from handlers.provenance import Provenance
from handlers.registry import (
    HARMFUL_INDEX,
    LABELS,
    build_model,
    input_array,
    input_transform,
    load_checkpoint,
    normalize,
)
from handlers.settings import HandlerSettings, graph_file
from handlers.telemetry import ModerationMetrics

logger = logging.getLogger(__name__)
CHECKPOINT_FILE = "model.pt"


def _body_and_content_type(row: dict[str, Any], context: Any, idx: int) -> tuple[Any, str | None]:
    """TorchServe puts the HTTP body under "body" (or "data") and its content type in per-parameter headers."""
    for name in ("body", "data"):
        if name in row:
            header = context.get_request_header(idx, name) if context is not None else None
            ctype = header.get("content-type") if isinstance(header, dict) else None
            return row[name], ctype
    raise ModerationError("malformed_request", "request has no body")


class ImageModerationHandler(BaseHandler):
    """Harmful/benign image classifier; model, threshold and speed switches come from the model config."""

    @dataclass
    class Batch:
        """One server-side batch after preprocessing: per-row outcome plus the pixels of good rows.

        Nested so the module exposes exactly one class, which TorchServe takes as the entry point.
        """

        rows: list[ParsedRequest | ModerationError | Exception] = field(default_factory=list)
        spans: list[tuple[int, int]] = field(default_factory=list)  # row -> [start, end) in pixels
        pixels: list[torch.Tensor | np.ndarray] = field(default_factory=list)
        seconds: Counter[str] = field(default_factory=Counter)  # stage -> seconds spent on this batch

    def initialize(self, context: Any) -> None:
        manifest = context.manifest["model"]
        self.model_name: str = manifest["modelName"]
        self.model_version: str = str(manifest.get("modelVersion", "1.0"))
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.settings = HandlerSettings.load(self.model_name, config)
        self.limits = self.settings.decode_limits()
        if self.settings.torch_threads > 0:
            torch.set_num_threads(self.settings.torch_threads)
        architecture = str(config.get("architecture", self.model_name))
        model_dir = context.system_properties["model_dir"]
        graph = graph_file(self.settings.backend)
        self._onnx = graph is not None  # decided once: _forward runs per chunk of every batch
        if graph is not None:
            self.model = self._onnx_session(os.path.join(model_dir, graph))
            self._to_pixels = input_array
        else:
            model = build_model(architecture)
            load_checkpoint(model, os.path.join(model_dir, CHECKPOINT_FILE))
            model.eval()
            if self.settings.channels_last:
                model = model.to(memory_format=torch.channels_last)
            self.model = model
            self._to_pixels = input_transform()
            self._normalize = normalize()
        self.provenance = Provenance.read(model_dir, self.model_name)
        self.metrics = ModerationMetrics(context.metrics, self.model_name)
        self.context = context
        self.initialized = True
        logger.info(
            "loaded %s (%s, version %s, backend %s, threshold %.4f, threads %d, weights: %s)",
            self.model_name, architecture, self.model_version, self.settings.backend, self.settings.threshold,
            torch.get_num_threads(), self.provenance.weights,
        )
        if self.provenance.warning:
            logger.warning("%s", self.provenance.warning)

    def _onnx_session(self, path: str) -> Any:
        """ONNX Runtime session; intra-op threads follow `torch_threads` so workers x threads still fits the CPU."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = max(self.settings.torch_threads, 0)
        return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])

    # -- life cycle ---------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        self.context = context
        if self._is_describe():
            return [json.dumps(asdict(self.provenance))]
        batch = self.preprocess(data)
        scores = self.inference(batch.pixels)
        responses = self.postprocess(batch, scores)
        for idx, row in enumerate(batch.rows):  # explanations ride in the same server-side batch as predictions
            if isinstance(row, ParsedRequest) and self._wants_explanation(idx):
                responses[idx] = self._explain(batch, idx, scores)
        return responses

    def _wants_explanation(self, idx: int) -> bool:
        """TorchServe sets the `explain` header on each request that came in through an explain route."""
        return self.context is not None and self.context.get_request_header(idx, "explain") == "True"

    def preprocess(self, data: list[dict[str, Any]]) -> ImageModerationHandler.Batch:
        batch = self.Batch()
        for idx, row in enumerate(data):
            start = len(batch.pixels)
            try:
                body, ctype = _body_and_content_type(row, self.context, idx)
                request = parse_request(body, ctype)
                batch.pixels.extend(self._pixels(request, batch.seconds))
                batch.rows.append(request)
            except ModerationError as err:
                del batch.pixels[start:]
                self.metrics.rejected(err.reason)
                batch.rows.append(err)
            except Exception as exc:  # noqa: BLE001 - a bug on one row must not fail its neighbours
                logger.exception("unexpected error preprocessing request %d", idx)
                del batch.pixels[start:]
                batch.rows.append(exc)
            batch.spans.append((start, len(batch.pixels)))
        for stage, seconds in batch.seconds.items():  # per batch, not per image: each is a worker log line
            self.metrics.stage(stage, seconds)
        return batch

    def _pixels(self, request: ParsedRequest, seconds: Counter[str]) -> list[torch.Tensor | np.ndarray]:
        """Decode + resize every image of one request, adding the time to `seconds`; the first bad image fails
        the request, naming its index."""
        out = []
        for i, raw in enumerate(request.images):
            t0 = time.perf_counter()
            try:
                image = decode_image(raw, self.limits)
            except ModerationError as err:
                raise err.at(i) if len(request.images) > 1 else err from None
            t1 = time.perf_counter()
            out.append(self._to_pixels(image))
            seconds["decode"] += t1 - t0
            seconds["preprocess"] += time.perf_counter() - t1
        return out

    def inference(self, pixels: list[torch.Tensor | np.ndarray], *args: Any, **kwargs: Any) -> torch.Tensor:
        """P(harmful) for every image of the batch: one forward pass, or chunks of `forward_batch` images."""
        if not pixels:
            return torch.empty(0)
        t0 = time.perf_counter()
        step = self.settings.forward_batch or len(pixels)
        scores = torch.cat([self._forward(pixels[i:i + step]) for i in range(0, len(pixels), step)])
        self.metrics.stage("inference", time.perf_counter() - t0)
        self.metrics.batch_images(len(pixels))
        return scores

    def _forward(self, pixels: list[torch.Tensor | np.ndarray]) -> torch.Tensor:
        if self._onnx:
            logits = self.model.run(None, {"pixels": np.stack(pixels)})[0]
            return torch.softmax(torch.from_numpy(logits).float(), dim=1)[:, HARMFUL_INDEX]
        x = self._normalize(torch.stack(pixels))
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            return torch.softmax(self.model(x).float(), dim=1)[:, HARMFUL_INDEX]

    def _prediction(self, score: float) -> Prediction:
        label = LABELS[HARMFUL_INDEX] if score >= self.settings.threshold else LABELS[1 - HARMFUL_INDEX]
        return Prediction(label, round(score, 6), self.settings.threshold, self.model_name, self.model_version)

    def _explain(self, batch: ImageModerationHandler.Batch, idx: int, scores: torch.Tensor) -> str:
        """{"explanations": [...]}: each image's prediction plus its occlusion grid, scored by the served graph."""
        start, end = batch.spans[idx]
        t0 = time.perf_counter()
        try:
            out = [
                explanation(asdict(self._prediction(float(scores[k]))),
                            occlusion_grid(self._score_floats, batch.pixels[k], self.settings.explain_grid))
                for k in range(start, end)
            ]
        except Exception as exc:  # noqa: BLE001 - a failed explanation must not fail the batch's predictions
            logger.exception("explanation of request %d failed", idx)
            self.context.set_response_status(500, "internal error", idx)
            return json.dumps(error_body("internal", f"explanation failed: {type(exc).__name__}"))
        logger.info("explained %d image(s) in %.2f s", end - start, time.perf_counter() - t0)
        return json.dumps({"explanations": out})

    def _score_floats(self, x: torch.Tensor) -> torch.Tensor:
        """P(harmful) of a float batch in the backend's pixel layout (what captum perturbs)."""
        pixels = x.round().clamp(0, 255).to(torch.uint8)
        return self._forward([p.numpy() if self._onnx else p for p in pixels])

    def postprocess(self, batch: ImageModerationHandler.Batch, scores: torch.Tensor) -> list[str]:
        responses: list[Any] = []
        label_counts: Counter[str] = Counter()
        for idx, (row, (start, end)) in enumerate(zip(batch.rows, batch.spans, strict=True)):
            self.context.set_response_content_type(idx, "application/json")
            if isinstance(row, ModerationError):
                self.context.set_response_status(row.status, row.message, idx)
                responses.append(json.dumps(row.to_dict()))
                continue
            if isinstance(row, Exception):
                self.context.set_response_status(500, "internal error", idx)
                responses.append(json.dumps(error_body("internal", f"internal error: {type(row).__name__}")))
                continue
            preds = [self._prediction(score) for score in scores[start:end].tolist()]
            label_counts.update(p.label for p in preds)
            if row.protocol == "v2" and row.request_id is None:
                row = ParsedRequest(row.protocol, row.images, self.context.get_request_id(idx))
            responses.append(json.dumps(render_response(row, preds, self.model_name, self.model_version)))
        for label, count in label_counts.items():  # one metric line per label and batch, not per image
            self.metrics.predicted(label, count)
        return responses  # compact JSON strings: TorchServe would pretty-print dicts
