"""Prometheus metrics of the bridge (names are a contract: the Helm chart's dashboard and alerts use them)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60)
E2E_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2.5, 5, 10, 30, 60, 120, 300, 900)

CONSUMED = Counter("bridge_messages_consumed", "Records consumed from the input topic", ["topic"])
PRODUCED = Counter("bridge_predictions_produced", "Predictions acknowledged on the output topic, by label and decision",
                   ["model", "label", "decision"])
REVIEW_PRODUCED = Counter("bridge_review_produced",
                          "Copies of review decisions acknowledged on the review topic", ["model"])
DLQ = Counter("bridge_dlq", "Records acknowledged on the dead-letter topic, by reason", ["reason"])
RETRIES = Counter("bridge_retries", "Retries after transient failures, by reason", ["reason"])
IN_FLIGHT = Gauge("bridge_in_flight", "Records consumed and not yet finished (uncommitted work)")
INFERENCE_LATENCY = Histogram(
    "bridge_inference_latency_seconds", "Duration of successful inference requests", ["model"], buckets=LATENCY_BUCKETS
)
END_TO_END = Histogram(
    "bridge_end_to_end_latency_seconds", "Input record timestamp -> prediction acknowledged", buckets=E2E_BUCKETS
)
BATCH_SIZE = Histogram(
    "bridge_batch_size", "Images per inference request", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
)
CONSUMER_LAG = Gauge("bridge_consumer_lag", "High watermark minus the bridge's commit position", ["topic", "partition"])
READY = Gauge("bridge_ready", "1 when consuming and the inference endpoint is ready, else 0")
OLDEST_UNFINISHED = Gauge(
    "bridge_oldest_unfinished_age_seconds",
    "Seconds since the oldest unfinished record of a partition was consumed (0 when none): it holds the commit back",
    ["topic", "partition"],
)
STALLED = Gauge("bridge_partition_stalled", "1 while a partition is stopped: a record could not even be dead-lettered",
                ["topic", "partition"])
FETCH_LATENCY = Histogram("bridge_fetch_latency_seconds", "Duration of successful reference fetches (s3, http, https)",
                          ["scheme"], buckets=LATENCY_BUCKETS)
FETCHED_BYTES = Counter("bridge_fetched_bytes", "Image bytes fetched for records that carry a reference", ["scheme"])
DLQ_PAYLOAD_OMITTED = Counter("bridge_dlq_payload_omitted",
                              "Dead letters written as metadata only (the full copy did not fit the DLQ), by reason",
                              ["reason"])
