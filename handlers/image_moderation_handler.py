"""TorchServe handler for both moderation models (MobileNetV2, ResNet50).

Life cycle as in TorchServe's BaseHandler: initialize once per worker, then per server-side batch
preprocess -> inference -> postprocess. Unlike the stock kserve envelopes, every row of the batch is
parsed on its own (raw bytes, KServe v1 or v2), all images of all rows go through one forward pass (or
chunks of `forward_batch` images), and a bad row gets its own 4xx while the other rows still get predictions.

The model itself (backend, decoding, forward pass, threshold) is `handlers.scorer.Scorer`, shared with the
KServe runtime; this class only does TorchServe's context I/O and metrics around it. A request that TorchServe
marks as an explanation (KServe v1 `:explain`, TorchServe `/explanations`) gets an occlusion grid per image next
to its prediction; TorchServe's describe call (`GET /models/{m}?customized=true`) answers the weights'
provenance (handlers/provenance.py).
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from ts.torch_handler.base_handler import BaseHandler

from handlers.envelopes import ParsedRequest, parse_request, render_response
from handlers.errors import ModerationError, error_body
from handlers.scorer import Pixels, Scorer
from handlers.telemetry import ModerationMetrics

logger = logging.getLogger(__name__)


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
        pixels: list[Pixels] = field(default_factory=list)
        seconds: Counter[str] = field(default_factory=Counter)  # stage -> seconds spent on this batch

    def initialize(self, context: Any) -> None:
        manifest = context.manifest["model"]
        config = (getattr(context, "model_yaml_config", None) or {}).get("handler") or {}
        self.scorer = Scorer(manifest["modelName"], context.system_properties["model_dir"], config,
                             str(manifest.get("modelVersion", "1.0")))
        self.metrics = ModerationMetrics(context.metrics, self.scorer.model_name)
        self.context = context
        self.initialized = True
        logger.info("loaded %s, torch threads %d", self.scorer.describe(), torch.get_num_threads())
        if self.scorer.provenance.warning:
            logger.warning("%s", self.scorer.provenance.warning)

    # -- life cycle ---------------------------------------------------------------------------

    def handle(self, data: list[dict[str, Any]], context: Any) -> list[Any]:
        t0 = time.perf_counter()
        self.context = context
        if self._is_describe():
            return [json.dumps(asdict(self.scorer.provenance) | {"categories": list(self.scorer.categories)})]
        batch = self.preprocess(data)
        scores = self.inference(batch.pixels)
        responses = self.postprocess(batch, scores)
        for idx, row in enumerate(batch.rows):  # explanations ride in the same server-side batch as predictions
            if isinstance(row, ParsedRequest) and self._wants_explanation(idx):
                responses[idx] = self._explain(batch, idx, scores)
        self.metrics.handled(time.perf_counter() - t0)
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
                batch.pixels.extend(self.scorer.pixels(request.images, batch.seconds))
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

    def inference(self, pixels: list[Pixels], *args: Any, **kwargs: Any) -> np.ndarray:
        """P(harmful) for every image of the batch (Scorer: one forward pass or chunks of `forward_batch`)."""
        if not pixels:
            return np.empty(0, dtype=np.float32)
        t0 = time.perf_counter()
        scores = self.scorer.scores(pixels)
        self.metrics.stage("inference", time.perf_counter() - t0)
        self.metrics.batch_images(len(pixels))
        return scores

    def _explain(self, batch: ImageModerationHandler.Batch, idx: int, scores: np.ndarray) -> str:
        """{"explanations": [...]}: each image's prediction plus its occlusion grid, scored by the served graph."""
        start, end = batch.spans[idx]
        t0 = time.perf_counter()
        try:
            out = [self.scorer.explain(batch.pixels[k], scores[k]) for k in range(start, end)]
        except Exception as exc:  # noqa: BLE001 - a failed explanation must not fail the batch's predictions
            logger.exception("explanation of request %d failed", idx)
            self.context.set_response_status(500, "internal error", idx)
            return json.dumps(error_body("internal", f"explanation failed: {type(exc).__name__}"))
        logger.info("explained %d image(s) in %.2f s", end - start, time.perf_counter() - t0)
        return json.dumps({"explanations": out})

    def postprocess(self, batch: ImageModerationHandler.Batch, scores: np.ndarray) -> list[str]:
        responses: list[Any] = []
        label_counts: Counter[str] = Counter()
        decision_counts: Counter[str] = Counter()
        model, version = self.scorer.model_name, self.scorer.version
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
            preds = [self.scorer.prediction(row) for row in scores[start:end]]
            label_counts.update(p.label for p in preds)
            decision_counts.update(p.decision for p in preds if p.decision)
            if row.protocol == "v2" and row.request_id is None:
                row = ParsedRequest(row.protocol, row.images, self.context.get_request_id(idx))
            responses.append(json.dumps(render_response(row, preds, model, version)))
        for label, count in label_counts.items():  # one metric line per label and batch, not per image
            self.metrics.predicted(label, count)
        for decision, count in decision_counts.items():
            self.metrics.decided(decision, count)
        return responses  # compact JSON strings: TorchServe would pretty-print dicts
