"""Bridge configuration from environment variables (12-factor); the Helm chart mirrors these names.

Every variable has a documented default that works against the local stack (`stack.env`). Secrets may
come from files: `KAFKA_SASL_PASSWORD_FILE` etc. win over the plain variable (Kubernetes secret mounts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handlers.env import optional_env as _optional_env
from handlers.env import reader
from handlers.fetch import FETCH_DEFAULTS, FetchSettings
from handlers.stack import stack

# name -> (default, description). The README table and Helm values are generated from / checked against it.
DEFAULTS: dict[str, tuple[str, str]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("", "Kafka bootstrap servers (default: 127.0.0.1:$KAFKA_PORT from stack.env)"),
    "KAFKA_INPUT_TOPIC": ("image_data", "topic of images to classify"),
    "KAFKA_OUTPUT_TOPIC": ("image_predictions", "topic the predictions are written to"),
    "KAFKA_DLQ_TOPIC": ("image_data.dlq", "dead-letter topic: original record + why it failed"),
    "KAFKA_REVIEW_TOPIC": ("image_review", "topic that also gets every prediction whose decision is review (same "
                                           "key, value and headers), for human moderators; set empty to disable"),
    "KAFKA_GROUP_ID": ("image-moderation-bridge", "consumer group (scale out = more replicas, same group)"),
    "KAFKA_SECURITY_PROTOCOL": ("PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    "KAFKA_SASL_MECHANISM": ("", "PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER"),
    "KAFKA_SASL_USERNAME": ("", "SASL user (or KAFKA_SASL_USERNAME_FILE)"),
    "KAFKA_SASL_PASSWORD": ("", "SASL password (or KAFKA_SASL_PASSWORD_FILE)"),
    "KAFKA_SSL_CAFILE": ("", "CA bundle (PEM) to verify the brokers"),
    "KAFKA_SSL_CERTFILE": ("", "client certificate (PEM) for mutual TLS"),
    "KAFKA_SSL_KEYFILE": ("", "client key (PEM) for mutual TLS"),
    "KAFKA_SESSION_TIMEOUT_MS": ("30000", "consumer group session timeout: how soon a dead replica's partitions move"),
    "KAFKA_MAX_MESSAGE_BYTES": ("16777216", "largest record (bytes); the broker's message.max.bytes must match"),
    "KAFKA_DLQ_MAX_MESSAGE_BYTES": ("", "largest DLQ record (bytes; default KAFKA_MAX_MESSAGE_BYTES + 65536, so an "
                                        "input record plus the DLQ headers fits); a bigger copy is dead-lettered "
                                        "as metadata only"),
    "KAFKA_DELIVERY_TIMEOUT_MS": ("120000", "librdkafka's own retries of one produce (delivery.timeout.ms) before the "
                                            "bridge sees a transient produce error"),
    "INFERENCE_URL": ("", "inference endpoint base URL (default: http://127.0.0.1:$INFERENCE_PORT)"),
    "INFERENCE_MODEL": ("mobilenet_v2", "model name on the endpoint (mobilenet_v2 or resnet50)"),
    "INFERENCE_MODELS": ("mobilenet_v2,resnet50", "models the endpoint serves (comma-separated): a record may pick "
                                                    "one with its model field or header; others go to the DLQ as "
                                                    "unknown_model"),
    "INFERENCE_PROTOCOL": ("v2", "v2 (Open Inference Protocol) or v1 (KServe v1)"),
    "INFERENCE_TIMEOUT_S": ("30", "timeout of one inference request (seconds)"),
    "INFERENCE_READY_PATH": ("", "readiness path polled before consuming (default: the protocol's model "
                                 "readiness, /v2/models/{model}/ready or /v1/models/{model}; /ping for a bare "
                                 "TorchServe, as the Helm chart sets)"),
    "BRIDGE_MAX_IN_FLIGHT": ("64", "records consumed but not yet committed (bounds memory); references waiting "
                                   "for their fetch are capped apart, at the same number"),
    "BRIDGE_MAX_CONCURRENCY": ("4", "inference requests in flight at once"),
    "BRIDGE_MAX_BATCH": ("8", "images per inference request when the endpoint is busy (1 = no batching)"),
    "BRIDGE_MAX_BATCH_BYTES": ("8388608", "raw image bytes per inference request (one larger image goes alone)"),
    "BRIDGE_RETRY_MAX_ATTEMPTS": ("10", "transient failures of one record before it goes to the DLQ"),
    "BRIDGE_RETRY_BACKOFF_S": ("0.5", "first retry delay (seconds); doubles per attempt, full jitter"),
    "BRIDGE_RETRY_BACKOFF_MAX_S": ("30", "cap of the retry delay (seconds)"),
    "BRIDGE_PRODUCE_MAX_ATTEMPTS": ("3", "transient produce failures of one record before it goes to the DLQ as "
                                         "retries_exhausted (or, for the DLQ itself, its partition stalls)"),
    "BRIDGE_STUCK_AFTER_S": ("300", "a record unfinished this long (seconds) marks its partition stuck: /readyz "
                                    "503 naming partition and offset; the chart's alert uses the same threshold"),
    "BRIDGE_LOG_REPEAT_INTERVAL_S": ("30", "a repeated warning about one record is logged once per interval "
                                           "(seconds), with the count of repeats"),
    "BRIDGE_LAG_INTERVAL_S": ("5", "how often consumer lag and Kafka reachability are measured (seconds)"),
    "BRIDGE_PAUSE_AFTER_S": ("5", "at the in-flight cap, how long to wait for room before pausing the partitions "
                                  "(seconds; a pause drops librdkafka's prefetched records)"),
    "BRIDGE_LIVENESS_TIMEOUT_S": ("60", "/livez fails when the fetch loop has not turned for this long (seconds)"),
    "BRIDGE_KAFKA_UNREACHABLE_RESTART_S": ("120", "/livez fails when Kafka has not answered, or the broker has not "
                                           "listed the consumer in its group, for this long (seconds; 0: never), so "
                                           "a wedged client is replaced by a fresh process"),
    "BRIDGE_COMMIT_INTERVAL_S": ("1", "how often finished offsets are committed (seconds)"),
    "BRIDGE_SHUTDOWN_TIMEOUT_S": ("20", "on SIGTERM, how long in-flight work may finish before it is handed back"),
    "BRIDGE_PORT": ("", "port of /livez /readyz /metrics (default: $BRIDGE_PORT from stack.env)"),
    "BRIDGE_HOST": ("", "address to bind (default: $STACK_HOST; 0.0.0.0 in a container)"),
    "LOG_LEVEL": ("INFO", "DEBUG, INFO, WARNING or ERROR (JSON lines on stderr)"),
    # Records that name their image by reference (envelope `url`/`s3`): the shared fetcher's settings.
    **FETCH_DEFAULTS,
}


def optional_env(name: str, environ: Mapping[str, str] | None = None) -> str:
    """A bridge setting whose variable set to "" stays "" (switches off a feature with a non-empty default)."""
    return _optional_env(name, environ, DEFAULTS)


@dataclass(frozen=True)
class Config:
    bootstrap_servers: str
    input_topic: str
    output_topic: str
    dlq_topic: str
    review_topic: str  # "" = no review copies
    group_id: str
    security: dict[str, str]
    max_message_bytes: int
    dlq_max_message_bytes: int
    delivery_timeout_ms: int
    session_timeout_ms: int
    inference_url: str
    model: str
    models: tuple[str, ...]
    protocol: str
    timeout_s: float
    ready_path: str
    max_in_flight: int
    max_concurrency: int
    max_batch: int
    max_batch_bytes: int
    retry_max_attempts: int
    backoff_s: float
    backoff_max_s: float
    produce_max_attempts: int
    stuck_after_s: float
    log_repeat_interval_s: float
    lag_interval_s: float
    pause_after_s: float
    liveness_timeout_s: float
    kafka_unreachable_restart_s: float
    commit_interval_s: float
    shutdown_timeout_s: float
    host: str
    port: int
    log_level: str
    fetch: FetchSettings

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Config:
        e = reader(environ, DEFAULTS)
        s = stack()
        protocol = e("INFERENCE_PROTOCOL").lower()
        if protocol not in ("v1", "v2"):
            raise ValueError(f"INFERENCE_PROTOCOL must be v1 or v2, not {protocol!r}")
        return cls(
            bootstrap_servers=e("KAFKA_BOOTSTRAP_SERVERS") or f"{s['STACK_HOST']}:{s['KAFKA_PORT']}",
            input_topic=e("KAFKA_INPUT_TOPIC"),
            output_topic=e("KAFKA_OUTPUT_TOPIC"),
            dlq_topic=e("KAFKA_DLQ_TOPIC"),
            review_topic=optional_env("KAFKA_REVIEW_TOPIC", environ),
            group_id=e("KAFKA_GROUP_ID"),
            security=security_settings(environ),
            max_message_bytes=int(e("KAFKA_MAX_MESSAGE_BYTES")),
            dlq_max_message_bytes=int(e("KAFKA_DLQ_MAX_MESSAGE_BYTES") or dlq_limit(int(e("KAFKA_MAX_MESSAGE_BYTES")))),
            delivery_timeout_ms=int(e("KAFKA_DELIVERY_TIMEOUT_MS")),
            session_timeout_ms=int(e("KAFKA_SESSION_TIMEOUT_MS")),
            inference_url=(e("INFERENCE_URL") or f"http://{s['STACK_HOST']}:{s['INFERENCE_PORT']}").rstrip("/"),
            model=e("INFERENCE_MODEL"),
            models=tuple(dict.fromkeys([e("INFERENCE_MODEL"), *(m.strip() for m in e("INFERENCE_MODELS").split(",")
                                                                 if m.strip())])),
            protocol=protocol,
            timeout_s=float(e("INFERENCE_TIMEOUT_S")),
            ready_path=e("INFERENCE_READY_PATH"),
            max_in_flight=max(1, int(e("BRIDGE_MAX_IN_FLIGHT"))),
            max_concurrency=max(1, int(e("BRIDGE_MAX_CONCURRENCY"))),
            max_batch=max(1, int(e("BRIDGE_MAX_BATCH"))),
            max_batch_bytes=max(1, int(e("BRIDGE_MAX_BATCH_BYTES"))),
            retry_max_attempts=max(1, int(e("BRIDGE_RETRY_MAX_ATTEMPTS"))),
            backoff_s=float(e("BRIDGE_RETRY_BACKOFF_S")),
            backoff_max_s=float(e("BRIDGE_RETRY_BACKOFF_MAX_S")),
            produce_max_attempts=max(1, int(e("BRIDGE_PRODUCE_MAX_ATTEMPTS"))),
            stuck_after_s=float(e("BRIDGE_STUCK_AFTER_S")),
            log_repeat_interval_s=float(e("BRIDGE_LOG_REPEAT_INTERVAL_S")),
            lag_interval_s=float(e("BRIDGE_LAG_INTERVAL_S")),
            pause_after_s=float(e("BRIDGE_PAUSE_AFTER_S")),
            liveness_timeout_s=float(e("BRIDGE_LIVENESS_TIMEOUT_S")),
            kafka_unreachable_restart_s=float(e("BRIDGE_KAFKA_UNREACHABLE_RESTART_S")),
            commit_interval_s=float(e("BRIDGE_COMMIT_INTERVAL_S")),
            shutdown_timeout_s=float(e("BRIDGE_SHUTDOWN_TIMEOUT_S")),
            host=e("BRIDGE_HOST") or s["STACK_HOST"],
            port=int(e("BRIDGE_PORT") or s["BRIDGE_PORT"]),
            log_level=e("LOG_LEVEL").upper(),
            fetch=FetchSettings.from_env(environ),
        )

    def client_settings(self) -> dict[str, Any]:
        """librdkafka settings shared by consumer, producer and admin (bootstrap + security)."""
        return {"bootstrap.servers": self.bootstrap_servers, **self.security}

    def consumer_settings(self) -> dict[str, Any]:
        """At-least-once: no auto commit, no auto offset store; we commit what is finished ourselves."""
        return {
            **self.client_settings(),
            "group.id": self.group_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "max.partition.fetch.bytes": self.max_message_bytes,
            "fetch.max.bytes": self.max_message_bytes * 2,
            "receive.message.max.bytes": self.max_message_bytes * 2 + 1024 * 1024,
            # Bounded prefetch: librdkafka's local queue, in KiB (the bridge's own bound is max_in_flight).
            "queued.max.messages.kbytes": max(1024, self.max_message_bytes // 1024 * 2),
            "session.timeout.ms": self.session_timeout_ms,
            "max.poll.interval.ms": 300000,
        }

    def producer_settings(self) -> dict[str, Any]:
        """Idempotent producer, acks from every in-sync replica: no duplicates or gaps from producer retries."""
        return {
            **self.client_settings(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 5,
            # The DLQ limit is the larger one: a full dead-letter copy is the biggest record produced.
            "message.max.bytes": max(self.max_message_bytes, self.dlq_max_message_bytes),
            "receive.message.max.bytes": self.max_message_bytes * 2 + 1024 * 1024,
            "delivery.timeout.ms": self.delivery_timeout_ms,
            "compression.type": "none",
        }


DLQ_HEADROOM_BYTES = 65536  # the bridge's DLQ headers take < 3 KiB (error text is cut at 2000 characters)


def dlq_limit(input_limit: int) -> int:
    """max.message.bytes of the DLQ topic: the input's plus room for the DLQ headers, so a record that fit the
    input topic also fits as a full dead-letter copy (bridge.topics creates it so)."""
    return input_limit + DLQ_HEADROOM_BYTES


def security_settings(environ: dict[str, str] | None = None) -> dict[str, str]:
    """KAFKA_SECURITY_PROTOCOL / SASL / SSL variables -> librdkafka settings (only those that are set)."""
    e = reader(environ, DEFAULTS)
    out: dict[str, str] = {"security.protocol": e("KAFKA_SECURITY_PROTOCOL").upper()}
    mapping = {
        "KAFKA_SASL_MECHANISM": "sasl.mechanism",
        "KAFKA_SASL_USERNAME": "sasl.username",
        "KAFKA_SASL_PASSWORD": "sasl.password",
        "KAFKA_SSL_CAFILE": "ssl.ca.location",
        "KAFKA_SSL_CERTFILE": "ssl.certificate.location",
        "KAFKA_SSL_KEYFILE": "ssl.key.location",
    }
    for name, key in mapping.items():
        value = e(name)
        if value:
            out[key] = value
    return out
