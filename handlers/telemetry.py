"""Handler-side Prometheus metrics, emitted through TorchServe's metrics API.

TorchServe's own latency metrics are cumulative counters (no percentiles), so the handler adds
histograms per stage. They only reach `/metrics` in Prometheus mode when declared under
`model_metrics` in the metrics config (model-archive/config/metrics.yaml); names are defined here once.
Stage times are observed once per server-side batch (all its images): TorchServe ships every observation
from the worker to the Java frontend as a log line that the frontend parses, so per-image observations
cost two lines per image on both sides (3.4 % of worker samples and ~20 % of the frontend's in a profile).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

STAGE_HISTOGRAMS: dict[str, str] = {
    "decode": "moderation_decode_seconds",
    "preprocess": "moderation_preprocess_seconds",
    "inference": "moderation_inference_seconds",
}
REJECTED_COUNTER = "moderation_rejected_total"
PREDICTIONS_COUNTER = "moderation_predictions_total"
DECISIONS_COUNTER = "moderation_decisions_total"  # block / review / allow: the review rate's numerator
BATCH_SIZE_HISTOGRAM = "moderation_batch_images"
HANDLER_TIME = "HandlerTime"  # TorchServe's name (declared in metrics.yaml like BaseHandler's)


class ModerationMetrics:
    """Thin wrapper so the handler states *what* happened; unknown metrics degrade to a logged no-op."""

    def __init__(self, cache: Any, model_name: str) -> None:
        from ts.metrics.metric_type_enum import MetricTypes  # TorchServe-only import

        self._model = model_name
        self._cache = cache
        self._metrics: dict[str, Any] = {}
        wanted = {name: MetricTypes.HISTOGRAM for name in (*STAGE_HISTOGRAMS.values(), BATCH_SIZE_HISTOGRAM)}
        wanted |= {name: MetricTypes.COUNTER for name in (REJECTED_COUNTER, PREDICTIONS_COUNTER, DECISIONS_COUNTER)}
        for name, kind in wanted.items():
            try:
                self._metrics[name] = cache.get_metric(name, kind)
            except Exception:  # noqa: BLE001 - a missing declaration must not stop the model from serving
                logger.warning("metric %s is not declared in the metrics config; it will not be exported", name)

    def _emit(self, name: str, value: float, *dims: str) -> None:
        metric = self._metrics.get(name)
        if metric is not None:
            metric.add_or_update(value, [self._model, *dims])

    def handled(self, seconds: float) -> None:
        """TorchServe's own `HandlerTime` gauge (ms per server-side batch), which BaseHandler.handle emits and
        a handler that overrides `handle` must emit itself."""
        self._cache.add_time(HANDLER_TIME, round(seconds * 1000, 2), None, "ms")

    def stage(self, stage: str, seconds: float) -> None:
        self._emit(STAGE_HISTOGRAMS[stage], seconds)

    def batch_images(self, n: int) -> None:
        self._emit(BATCH_SIZE_HISTOGRAM, n)

    def rejected(self, reason: str) -> None:
        self._emit(REJECTED_COUNTER, 1, reason)

    def predicted(self, label: str, count: int = 1) -> None:
        self._emit(PREDICTIONS_COUNTER, count, label)

    def decided(self, decision: str, count: int = 1) -> None:
        self._emit(DECISIONS_COUNTER, count, decision)
