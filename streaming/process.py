"""One micro-batch partition of `image_data` records -> the records to produce, with the bridge's contract.

Spark-free on purpose: the Spark transformation (streaming/query.py) only converts Arrow rows to `KafkaRecord`
and back, so everything here is unit-testable and is exactly the bridge's behaviour:
- parsing and refusals: `bridge.contract.parse_record` (raw bytes + headers or the JSON envelope);
- references (envelope `url`/`s3`): `handlers.fetch.Fetcher`, transient failures retried by `bridge.outcome.decide`;
- inference: a `Classifier` (the endpoint, or the model in this process), failures charged by `outcome.blame`
  and decided by `outcome.decide` (retry with backoff, or DLQ with the same reasons as the bridge);
- outputs: `prediction_value` + `prediction_headers` (and the review copy), or the DLQ copy with `dlq_headers`
  (metadata only, `bounded_record`, when the full copy cannot fit the DLQ topic).

What differs from the bridge is only where at-least-once comes from: a record's outputs are rows of the Spark
Kafka sink, and the source offsets are checkpointed once the whole micro-batch is written. A produce failure
fails the micro-batch, which Spark runs again from the checkpoint (duplicates possible, losses not).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from bridge.config import Config
from bridge.contract import (
    REVIEW,
    ContractError,
    Headers,
    ImageRecord,
    decision_of,
    dlq_headers,
    parse_record,
    prediction_headers,
    prediction_value,
)
from bridge.outcome import (
    BOUNDED_HEADERS,
    Action,
    Failure,
    Kind,
    RetryPolicy,
    Stage,
    bounded_record,
    decide,
    error_text,
    record_size,
)
from handlers.envelopes import Prediction
from handlers.fetch import Fetcher, FetchError

log = logging.getLogger("streaming")
PRODUCER = "spark"


@dataclass(frozen=True)
class KafkaRecord:
    """One row of Spark's Kafka source."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers | None
    timestamp_ms: int | None

    @property
    def source(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    @property
    def fallback_id(self) -> str:
        return f"{self.topic}-{self.partition}-{self.offset}"


@dataclass(frozen=True)
class OutRecord:
    """One row for Spark's Kafka sink (its `topic` column picks the topic per row)."""

    topic: str
    key: bytes | None
    value: bytes | None
    headers: Headers


@dataclass(eq=False)
class Work:
    """One record on its way to an outcome: a prediction, or a DLQ reason."""

    rec: KafkaRecord
    received_at: float
    record: ImageRecord | None = None
    attempts: int = 0  # inference tries charged to this record
    fetch_attempts: int = 0
    solo: bool = False
    prediction: Prediction | None = None
    inference_ms: float = 0.0
    batch_size: int = 1
    dlq: tuple[str, str, int | None] | None = None  # (reason, error, status)

    @property
    def done(self) -> bool:
        return self.prediction is not None or self.dlq is not None

    @property
    def image(self) -> bytes:
        assert self.record is not None
        return self.record.image

    def fail(self, reason: str, error: str, status: int | None = None) -> None:
        log.warning("to DLQ", extra={"image_id": self.record.id if self.record else self.rec.fallback_id,
                                     "partition": self.rec.partition, "offset": self.rec.offset,
                                     "reason": reason, "error": error})
        self.dlq = (reason, error, status)

    def predicted(self, prediction: Prediction, inference_ms: float, batch_size: int) -> None:
        self.prediction, self.inference_ms, self.batch_size = prediction, inference_ms, batch_size


class Classifier(Protocol):
    """Classifies works of one model: sets `prediction` or `dlq` on every one of them."""

    models: Collection[str]  # the models it serves (a record naming another goes to the DLQ as unknown_model)

    async def classify(self, model: str, works: Sequence[Work]) -> None: ...


def policy(cfg: Config) -> RetryPolicy:
    """The bridge's retry bounds of fetches and inference requests."""
    return RetryPolicy(cfg.retry_max_attempts, cfg.backoff_s, cfg.backoff_max_s)


@dataclass
class Pipeline:
    """Turns a partition's records into the records to produce. One per executor process (it keeps the
    fetcher's and the classifier's connections between micro-batches)."""

    cfg: Config
    classifier: Classifier
    fetcher: Fetcher = field(default_factory=lambda: Fetcher())

    async def run(self, records: Sequence[KafkaRecord]) -> list[OutRecord]:
        now = time.time()
        works = [Work(rec, now) for rec in records]
        for w in works:
            self._parse(w)
        await asyncio.gather(*(self._fetch(w) for w in works if not w.done and w.record.reference))  # type: ignore[union-attr]
        by_model: dict[str, list[Work]] = {}
        for w in works:
            if not w.done:
                by_model.setdefault(w.record.model, []).append(w)  # type: ignore[union-attr]
        await asyncio.gather(*(self.classifier.classify(model, group) for model, group in by_model.items()))
        out: list[OutRecord] = []
        for w in works:
            out.extend(self._outputs(w))
        return out

    def _parse(self, w: Work) -> None:
        rec = w.rec
        try:
            w.record = parse_record(rec.key, rec.value, rec.headers, rec.fallback_id, self.classifier.models,
                                    self.cfg.model)
        except ContractError as exc:
            w.fail(exc.reason, exc.message)

    async def _fetch(self, w: Work) -> None:
        """The bridge's fetch step: a permanent refusal dead-letters this record alone, a transient one is retried
        with backoff until the retry policy says `retries_exhausted`."""
        assert w.record is not None and w.record.reference is not None
        while True:
            try:
                fetched = await self.fetcher.fetch(w.record.reference)
            except FetchError as exc:
                w.fetch_attempts += 1
                kind = Kind.TRANSIENT if exc.transient else Kind.PERMANENT
                decision = decide(Failure(Stage.FETCH, kind, exc.reason, w.fetch_attempts), policy(self.cfg))
                if decision.action is Action.RETRY:
                    await asyncio.sleep(decision.delay_s)
                    continue
                w.fail(decision.reason, error_text(decision, exc.reason, exc.message))
                return
            except Exception as exc:  # a bug: this record is dead-lettered (nothing lost), the traceback logged
                log.exception("fetch failed unexpectedly")
                w.fail("fetch_failed", f"unexpected error: {type(exc).__name__}")
                return
            w.record.image, w.record.content_type, w.record.fetched = fetched.data, fetched.content_type, fetched.echo()
            return

    def _outputs(self, w: Work) -> list[OutRecord]:
        if w.prediction is not None:
            return self._prediction(w, w.prediction)
        assert w.dlq is not None
        return [self._dead_letter(w)]

    def _prediction(self, w: Work, pred: Prediction) -> list[OutRecord]:
        assert w.record is not None
        now = time.time()
        start = w.rec.timestamp_ms / 1000 if w.rec.timestamp_ms else w.received_at
        value = prediction_value(
            w.record, pred, source=w.rec.source, received_at=w.received_at, produced_at=now,
            inference_ms=w.inference_ms, batch_size=w.batch_size, end_to_end_ms=(now - start) * 1000,
            attempts=w.attempts + 1, producer=PRODUCER,
        )
        key, headers = w.record.id.encode(), prediction_headers(w.record.id)
        out = [OutRecord(self.cfg.output_topic, key, value, headers)]
        if self.cfg.review_topic and decision_of(pred)[0] == REVIEW:
            out.append(OutRecord(self.cfg.review_topic, key, value, headers))
        return out

    def _dead_letter(self, w: Work) -> OutRecord:
        """The full copy (original key, value, headers + why), or metadata only when that cannot fit the DLQ."""
        assert w.dlq is not None
        reason, error, status = w.dlq
        rec = w.rec
        model = (w.record.model if w.record is not None and w.record.model else "") or self.cfg.model

        def headers(original: Headers | None) -> Headers:
            return dlq_headers(original, error=error, error_class=reason, status=status, attempts=w.attempts,
                               model=model, source=rec.source, source_timestamp_ms=rec.timestamp_ms,
                               failed_at=time.time(), producer=PRODUCER)

        full = headers(rec.headers)
        size = record_size(rec.key, rec.value, full)
        if size <= self.cfg.dlq_max_message_bytes:
            return OutRecord(self.cfg.dlq_topic, rec.key, rec.value, full)
        why = (f"full copy of {size} B exceeds the DLQ limit of {self.cfg.dlq_max_message_bytes} B "
               "(KAFKA_DLQ_MAX_MESSAGE_BYTES)")
        key, value = bounded_record(rec.key, rec.value, rec.headers, source=rec.source, reason=reason, error=error,
                                    dlq_error=why)
        return OutRecord(self.cfg.dlq_topic, key, value, [*headers(None), *BOUNDED_HEADERS])
