"""The Structured Streaming query: Kafka source `image_data` -> mapInArrow(moderate) -> Kafka sink (the topic of each
row: predictions, review copies, dead letters), checkpointed; restarted from its checkpoint when it fails.

mapInArrow rather than mapInPandas: the rows are binary values and nested header lists, which Arrow hands over as
they are, where pandas would convert them to object columns and back for nothing.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bridge import logs
from bridge.outcome import backoff
from handlers.fetch import Fetcher
from streaming.config import StreamingSettings
from streaming.process import Classifier, KafkaRecord, OutRecord, Pipeline

if TYPE_CHECKING:
    import pyarrow as pa
    from pyspark.sql import SparkSession
    from pyspark.sql.streaming import StreamingQuery

log = logging.getLogger("streaming")
QUERY_NAME = "image_moderation"
# What the Kafka sink reads: the topic per row, and headers as Kafka's (name, bytes) pairs.
OUT_SCHEMA = "topic string, key binary, value binary, headers array<struct<key:string,value:binary>>"
SASL_MODULES = {
    "PLAIN": "org.apache.kafka.common.security.plain.PlainLoginModule",
    "SCRAM-SHA-256": "org.apache.kafka.common.security.scram.ScramLoginModule",
    "SCRAM-SHA-512": "org.apache.kafka.common.security.scram.ScramLoginModule",
}


# ---- Kafka client options (the bridge's librdkafka settings, in the Java client's names) -----------------------
def _jaas_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def kafka_common(settings: StreamingSettings) -> dict[str, str]:
    """Bootstrap + security for source and sink, from the bridge's KAFKA_* variables, then STREAMING_KAFKA_OPTIONS."""
    cfg = settings.bridge
    sec = cfg.security
    out = {"kafka.bootstrap.servers": cfg.bootstrap_servers, "kafka.security.protocol": sec["security.protocol"]}
    mechanism = sec.get("sasl.mechanism")
    if mechanism:
        out["kafka.sasl.mechanism"] = mechanism
        if mechanism in SASL_MODULES and "sasl.username" in sec:
            out["kafka.sasl.jaas.config"] = (f"{SASL_MODULES[mechanism]} required username="
                                             f"{_jaas_quote(sec['sasl.username'])} password="
                                             f"{_jaas_quote(sec.get('sasl.password', ''))};")
    if "ssl.ca.location" in sec:
        out["kafka.ssl.truststore.type"] = "PEM"
        out["kafka.ssl.truststore.location"] = sec["ssl.ca.location"]
    if "ssl.certificate.location" in sec and "ssl.key.location" in sec:
        out["kafka.ssl.keystore.type"] = "PEM"
        out["kafka.ssl.keystore.certificate.chain"] = Path(sec["ssl.certificate.location"]).read_text()
        out["kafka.ssl.keystore.key"] = Path(sec["ssl.key.location"]).read_text()
    out.update({f"kafka.{k}": v for k, v in settings.kafka_options.items()})
    return out


def source_options(settings: StreamingSettings) -> dict[str, str]:
    cfg = settings.bridge
    return {
        **kafka_common(settings),
        "subscribe": cfg.input_topic,
        "includeHeaders": "true",
        "startingOffsets": settings.starting_offsets,
        "maxOffsetsPerTrigger": str(settings.max_offsets_per_trigger),
        # records deleted by retention before they were read fail the query loudly instead of being skipped
        "failOnDataLoss": "true",
        "kafka.max.partition.fetch.bytes": str(cfg.max_message_bytes),
        "kafka.fetch.max.bytes": str(cfg.max_message_bytes * 2),
    }


def sink_options(settings: StreamingSettings) -> dict[str, str]:
    """The bridge's producer guarantees: idempotent, acks from every in-sync replica, room for a full DLQ copy."""
    cfg = settings.bridge
    return {
        **kafka_common(settings),
        "kafka.acks": "all",
        "kafka.enable.idempotence": "true",
        "kafka.max.request.size": str(max(cfg.max_message_bytes, cfg.dlq_max_message_bytes) + 1024 * 1024),
        "kafka.linger.ms": "5",
        "kafka.compression.type": "none",
        "kafka.delivery.timeout.ms": str(cfg.delivery_timeout_ms),
    }


# ---- the transformation, run in the executors' Python workers --------------------------------------------------
_WORKERS: dict[str, tuple[asyncio.AbstractEventLoop, Pipeline]] = {}


def worker_pipeline(settings: StreamingSettings) -> tuple[asyncio.AbstractEventLoop, Pipeline]:
    """One event loop and pipeline per Python worker and settings: connections, the fetcher's S3 client and
    the in-process model are kept between micro-batches (Spark reuses its Python workers)."""
    key = repr(settings)
    if key not in _WORKERS:
        logs.setup(settings.bridge.log_level)
        if settings.inference == "inprocess":
            from streaming.inprocess import InProcessClassifier

            classifier: Classifier = InProcessClassifier(settings.model_store)
        else:
            from streaming.endpoint import EndpointClassifier

            classifier = EndpointClassifier(settings.bridge)
        pipeline = Pipeline(settings.bridge, classifier, Fetcher(settings.bridge.fetch))
        _WORKERS[key] = (asyncio.new_event_loop(), pipeline)
    return _WORKERS[key]


def _millis(ts: datetime | None) -> int | None:
    return None if ts is None else int(ts.timestamp() * 1000)


def record_of(row: dict[str, Any]) -> KafkaRecord:
    headers = [(h["key"], h["value"]) for h in row.get("headers") or ()]  # a null header value stays null
    return KafkaRecord(row["topic"], int(row["partition"]), int(row["offset"]), row["key"], row["value"],
                       headers, _millis(row["timestamp"]))


def row_of(out: OutRecord) -> dict[str, Any]:
    return {"topic": out.topic, "key": out.key, "value": out.value,
            "headers": [{"key": k, "value": v} for k, v in out.headers]}


def out_arrow_schema() -> pa.Schema:
    import pyarrow as pa

    header = pa.struct([("key", pa.string()), ("value", pa.binary())])
    return pa.schema([("topic", pa.string()), ("key", pa.binary()), ("value", pa.binary()),
                      ("headers", pa.list_(header))])


def moderate(settings: StreamingSettings) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    """The mapInArrow function: each Arrow batch of Kafka rows -> the rows to produce."""

    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        import pyarrow as pa

        loop, pipeline = worker_pipeline(settings)
        schema = out_arrow_schema()
        for batch in batches:
            out = loop.run_until_complete(pipeline.run([record_of(r) for r in batch.to_pylist()]))
            yield pa.RecordBatch.from_pylist([row_of(o) for o in out], schema=schema)

    return run


# ---- the query and its supervision ------------------------------------------------------------------------------
def start(spark: SparkSession, settings: StreamingSettings) -> StreamingQuery:
    source = spark.readStream.format("kafka").options(**source_options(settings)).load()
    rows = source.select("topic", "partition", "offset", "timestamp", "key", "value", "headers")
    writer = (rows.mapInArrow(moderate(settings), OUT_SCHEMA).writeStream.format("kafka")
              .options(**sink_options(settings)).option("checkpointLocation", settings.checkpoint_dir)
              .queryName(QUERY_NAME))
    if settings.trigger_interval_s > 0:
        writer = writer.trigger(processingTime=f"{settings.trigger_interval_s} seconds")
    return writer.start()


def progress_listener() -> Any:
    """One log line per micro-batch: rows in, input and processed rows/s, batch duration."""
    from pyspark.sql.streaming import StreamingQueryListener

    class ProgressLog(StreamingQueryListener):
        def onQueryStarted(self, event: Any) -> None:
            log.info("query started", extra={"event": "query_started", "query_id": str(event.id),
                                             "run_id": str(event.runId)})

        def onQueryProgress(self, event: Any) -> None:
            p = event.progress
            ms = int((p.durationMs or {}).get("triggerExecution", p.batchDuration or 0))
            rin, rout = p.inputRowsPerSecond or 0.0, p.processedRowsPerSecond or 0.0
            log.info(f"batch {p.batchId}: {p.numInputRows} records, input {rin:.1f}/s, processed {rout:.1f}/s, "
                     f"{ms} ms", extra={"event": "progress", "batch_id": p.batchId, "rows": p.numInputRows,
                                        "input_rows_per_s": round(rin, 2), "processed_rows_per_s": round(rout, 2),
                                        "batch_ms": ms})

        def onQueryIdle(self, event: Any) -> None:
            return None

        def onQueryTerminated(self, event: Any) -> None:
            log.info("query terminated", extra={"event": "query_terminated", "query_id": str(event.id),
                                                "error": event.exception})

    return ProgressLog()


class Supervisor:
    """Runs the query until SIGTERM/SIGINT; a failed query (a produce error, the broker gone) is restarted from its
    checkpoint after a backoff, so it resumes where the last committed micro-batch ended."""

    def __init__(self, spark: SparkSession, settings: StreamingSettings) -> None:
        self.spark = spark
        self.settings = settings
        self.stop = threading.Event()

    def _signalled(self, signum: int, _frame: Any) -> None:
        log.info("stopping", extra={"signal": signal.Signals(signum).name})
        self.stop.set()

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._signalled)
        signal.signal(signal.SIGINT, self._signalled)
        self.spark.streams.addListener(progress_listener())
        failures = 0
        while not self.stop.is_set():
            query = start(self.spark, self.settings)
            error = self._watch(query)
            if error is None:
                break
            failures += 1
            delay = max(1.0, backoff(failures, 2.0, self.settings.restart_backoff_max_s, lambda: 1.0))
            log.error("query failed: restarting from its checkpoint", extra={"error": error[:2000],
                                                                             "failures": failures,
                                                                             "restart_in_s": delay})
            self.stop.wait(delay)
        return 0

    def _watch(self, query: StreamingQuery) -> str | None:
        """Wait until the query ends (its error text) or a stop is asked (None, after a graceful stop)."""
        while not self.stop.is_set():
            if not query.isActive:
                exc = query.exception()
                return str(exc) if exc is not None else "query stopped by itself"
            query.awaitTermination(1)
        self._stop_gracefully(query)
        return None

    def _stop_gracefully(self, query: StreamingQuery) -> None:
        """Let the running micro-batch finish (up to BRIDGE_SHUTDOWN_TIMEOUT_S), so a stop repeats nothing."""
        deadline = time.monotonic() + self.settings.bridge.shutdown_timeout_s
        while query.isActive and query.status.get("isTriggerActive") and time.monotonic() < deadline:
            time.sleep(0.1)
        query.stop()


def run(settings: StreamingSettings) -> int:
    from streaming.session import session

    spark = session(settings, "image-moderation-streaming")
    log.info("streaming", extra={"event": "starting", "inference": settings.inference, "master": settings.master,
                                 "input": settings.bridge.input_topic, "checkpoint": settings.checkpoint_dir,
                                 "ui": spark.sparkContext.uiWebUrl})
    try:
        return Supervisor(spark, settings).run()
    finally:
        spark.stop()
