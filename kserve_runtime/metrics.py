"""Prometheus metrics with TorchServe's names and labels, so the dashboard, alerts and recording rules work unchanged.

The handler's own metrics (`handlers.telemetry` names: moderation_* histograms and counters, label `ModelName`)
come from prometheus_client. TorchServe's frontend counters (`Requests2XX/4XX/5XX`, `ts_inference_requests_total`,
`ts_inference_latency_microseconds`, `ts_queue_latency_microseconds`) have names prometheus_client would suffix
with `_total`, so a small collector exposes them under their exact names. Served on the ModelServer's /metrics.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter as Tally
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram
from prometheus_client.core import Metric, UnknownMetricFamily
from prometheus_client.registry import Collector

from handlers.telemetry import (
    BATCH_SIZE_HISTOGRAM,
    DECISIONS_COUNTER,
    PREDICTIONS_COUNTER,
    REJECTED_COUNTER,
    STAGE_HISTOGRAMS,
)

HOSTNAME = socket.gethostname()


class FrontendCounters(Collector):
    """TorchServe's frontend counters under their exact names (values only ever grow)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._status: Tally[str] = Tally()  # "2XX" -> count
        self._inference: dict[tuple[str, str], list[float]] = {}  # (model, version) -> [requests, infer us, queue us]

    def request(self, status: int) -> None:
        with self._lock:
            self._status[f"{status // 100}XX"] += 1

    def inference(self, model: str, version: str, latency_us: float, queue_us: float) -> None:
        with self._lock:
            row = self._inference.setdefault((model, version), [0.0, 0.0, 0.0])
            row[0] += 1
            row[1] += latency_us
            row[2] += queue_us

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            status = dict(self._status)
            inference = {k: list(v) for k, v in self._inference.items()}
        for cls in ("2XX", "4XX", "5XX"):
            if cls in status or cls == "2XX":  # as TorchServe: 4XX/5XX appear with their first occurrence
                family = UnknownMetricFamily(f"Requests{cls}", f"Total number of requests with response in {cls} "
                                             "range", labels=["Level", "Hostname"])
                family.add_metric(["Host", HOSTNAME], status.get(cls, 0))
                yield family
        names = ("ts_inference_requests_total", "ts_inference_latency_microseconds", "ts_queue_latency_microseconds")
        for i, name in enumerate(names):
            family = UnknownMetricFamily(name, name.replace("_", " "),
                                         labels=["model_name", "model_version", "hostname"])
            for (model, version), row in inference.items():
                family.add_metric([model, version, HOSTNAME], row[i])
            yield family


class PrometheusModerationMetrics:
    """The handler's metrics (same interface as handlers.telemetry.ModerationMetrics) on prometheus_client."""

    def __init__(self, model_name: str, registry=REGISTRY) -> None:  # noqa: ANN001 - prometheus_client registry
        labels = ["ModelName", "Hostname"]
        self._labels = (model_name, HOSTNAME)
        self._stage = {stage: _histogram(name, labels, registry) for stage, name in STAGE_HISTOGRAMS.items()}
        self._batch = _histogram(BATCH_SIZE_HISTOGRAM, labels, registry)
        self._rejected = _counter(REJECTED_COUNTER, [*labels, "reason"], registry)
        self._predicted = _counter(PREDICTIONS_COUNTER, [*labels, "label"], registry)
        self._decided = _counter(DECISIONS_COUNTER, [*labels, "decision"], registry)

    def stage(self, stage: str, seconds: float) -> None:
        self._stage[stage].labels(*self._labels).observe(seconds)

    def batch_images(self, n: int) -> None:
        self._batch.labels(*self._labels).observe(n)

    def rejected(self, reason: str) -> None:
        self._rejected.labels(*self._labels, reason).inc()

    def predicted(self, label: str, count: int = 1) -> None:
        self._predicted.labels(*self._labels, label).inc(count)

    def decided(self, decision: str, count: int = 1) -> None:
        self._decided.labels(*self._labels, decision).inc(count)


_SHARED: dict[str, Histogram | Counter] = {}  # one collector per name, shared by the models of this process


def _histogram(name: str, labels: list[str], registry) -> Histogram:  # noqa: ANN001
    if name not in _SHARED:
        _SHARED[name] = Histogram(name, name.replace("_", " "), labels, registry=registry)
    return _SHARED[name]  # type: ignore[return-value]


def _counter(name: str, labels: list[str], registry) -> Counter:  # noqa: ANN001
    if name not in _SHARED:
        _SHARED[name] = Counter(name.removesuffix("_total"), name.replace("_", " "), labels, registry=registry)
    return _SHARED[name]  # type: ignore[return-value]


FRONTEND = FrontendCounters()


def install_frontend_counters(registry=REGISTRY) -> None:  # noqa: ANN001
    """Expose FRONTEND on the registry the ModelServer's /metrics serves (once, at server start)."""
    registry.register(FRONTEND)
