"""The retry-or-DLQ decision, as a pure function (the bridge and the Spark consumer, streaming/process.py, share it).

Every failure of a record is described by where it happened (`Stage`), whether another try can succeed
(`Kind`), its reason and how many tries that stage has had. `decide` turns that into one `Decision`:

| stage          | permanent                         | transient, tries left | transient, tries used up   |
|----------------|-----------------------------------|-----------------------|----------------------------|
| fetch          | DLQ (the fetcher's reason)        | RETRY with backoff    | DLQ `retries_exhausted`    |
| inference      | DLQ (the handler's reason)        | RETRY with backoff    | DLQ `retries_exhausted`    |
| output produce | DLQ `output_rejected`             | RETRY with backoff    | DLQ `retries_exhausted`    |
| review produce | DLQ `output_rejected`             | RETRY with backoff    | DLQ `retries_exhausted`    |
| DLQ produce    | DLQ_BOUNDED (metadata, no payload)| RETRY with backoff    | STALL the partition        |
| bounded DLQ    | STALL the partition               | RETRY with backoff    | STALL the partition        |

A `fatal` Kafka error (e.g. the idempotent producer fenced) is EXIT everywhere: a restart resumes from the
last commit. STALL is the end of the line: the DLQ itself cannot take the record, so the record stays
unfinished (its partition stops committing and consuming) and the bridge says so in /readyz, in
`bridge_oldest_unfinished_age_seconds` and in the ImageModerationRecordStuck alert; it tries again every
`backoff_max_s` so the partition resumes by itself once the DLQ works.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from confluent_kafka import KafkaError


class Stage(StrEnum):
    FETCH = "fetch"  # fetching the image a record names by reference (s3://, https://)
    INFERENCE = "inference"
    OUTPUT = "output"  # producing the prediction
    REVIEW = "review"  # producing the review copy of a prediction (after the prediction is acknowledged)
    DLQ = "dlq"  # producing the full dead-letter copy
    DLQ_BOUNDED = "dlq_bounded"  # producing the metadata-only dead-letter record


class Kind(StrEnum):
    TRANSIENT = "transient"  # may succeed if tried again (timeouts, leader changes, broker down, 5xx)
    PERMANENT = "permanent"  # cannot succeed as is (too large, invalid record, authorization, unknown topic, 4xx)
    FATAL = "fatal"  # the client itself is unusable


class Action(StrEnum):
    RETRY = "retry"
    DLQ = "dlq"
    DLQ_BOUNDED = "dlq_bounded"
    STALL = "stall"
    EXIT = "exit"


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds of the retries of one stage: `max_attempts` tries, backoff doubling up to `backoff_max_s`."""

    max_attempts: int
    backoff_s: float
    backoff_max_s: float


@dataclass(frozen=True)
class Failure:
    stage: Stage
    kind: Kind
    reason: str  # stable reason: the handler's, http_503, MSG_SIZE_TOO_LARGE, ...
    attempts: int  # tries of this stage so far, the failed one included


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str  # DLQ error_class for DLQ/DLQ_BOUNDED; the failure's reason otherwise
    delay_s: float = 0.0  # before the retry (RETRY) or the next try of a stalled record (STALL)


def error_text(decision: Decision, reason: str, message: str) -> str:
    """The DLQ `error` of a failure: its message, prefixed by its own reason when the DLQ reason differs
    (`retries_exhausted` says why it stopped, the text keeps what failed last)."""
    return message if decision.reason == reason else f"{reason}: {message}"


def backoff(attempt: int, base_s: float, max_s: float, rand: Callable[[], float] = random.random) -> float:
    """Exponential backoff with full jitter: uniform(0, min(max, base * 2**(attempt-1)))."""
    return rand() * min(max_s, base_s * 2 ** max(0, attempt - 1))


def decide(failure: Failure, policy: RetryPolicy, rand: Callable[[], float] = random.random) -> Decision:
    """What to do next with a record whose `failure.stage` failed (table in the module docstring)."""
    if failure.kind is Kind.FATAL:
        return Decision(Action.EXIT, failure.reason)
    stage = failure.stage
    if failure.kind is Kind.TRANSIENT and failure.attempts < policy.max_attempts:
        return Decision(Action.RETRY, failure.reason, backoff(failure.attempts, policy.backoff_s,
                                                               policy.backoff_max_s, rand))
    if stage in (Stage.FETCH, Stage.INFERENCE):
        return Decision(Action.DLQ, failure.reason if failure.kind is Kind.PERMANENT else "retries_exhausted")
    if stage in (Stage.OUTPUT, Stage.REVIEW):  # the review copy is an output like the prediction: never dropped
        return Decision(Action.DLQ, "output_rejected" if failure.kind is Kind.PERMANENT else "retries_exhausted")
    if stage is Stage.DLQ and failure.kind is Kind.PERMANENT:
        return Decision(Action.DLQ_BOUNDED, failure.reason)
    return Decision(Action.STALL, failure.reason, policy.backoff_max_s)


@dataclass(frozen=True)
class Blame:
    """Whom a failed multi-image inference request charges (positions in the request)."""

    culprits: tuple[int, ...]  # charged one attempt each, then `decide` says retry or DLQ
    resend: tuple[int, ...]  # innocent: sent again at once, uncharged
    solo: bool = False  # a 4xx that named no image: resend each image alone to find which one it was


def blame(size: int, transient: bool, index: int | None) -> Blame:
    """A transient failure is every image's; a permanent one is the image the handler named (`index`), the
    only image of the request, or, when the handler named none, found by sending each alone."""
    if transient:
        return Blame(tuple(range(size)), ())
    if index is not None and 0 <= index < size:
        return Blame((index,), tuple(i for i in range(size) if i != index))
    if size == 1:
        return Blame((0,), ())
    return Blame((), tuple(range(size)), solo=True)


# librdkafka errors that another try can fix although `retriable()` may be False on a delivery report
# (librdkafka reports them after its own retries ran out, e.g. _MSG_TIMED_OUT after delivery.timeout.ms).
TRANSIENT_KAFKA_ERRORS = frozenset({
    KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
    KafkaError._QUEUE_FULL, KafkaError._RESOLVE, KafkaError._WAIT_COORD, KafkaError._PURGE_QUEUE,
    KafkaError._PURGE_INFLIGHT, KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE, KafkaError.NOT_ENOUGH_REPLICAS, KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND,
    KafkaError.NETWORK_EXCEPTION, KafkaError.BROKER_NOT_AVAILABLE, KafkaError.REPLICA_NOT_AVAILABLE,
    KafkaError.KAFKA_STORAGE_ERROR, KafkaError.THROTTLING_QUOTA_EXCEEDED,
})


def kafka_error_kind(code: int, retriable: bool, fatal: bool) -> Kind:
    """librdkafka error -> Kind. Anything not known to be transient is permanent: a bounded fallback
    (bounded DLQ record, then a loud stall) is safe for an unknown error, an endless retry loop is not."""
    if fatal:
        return Kind.FATAL
    if retriable or code in TRANSIENT_KAFKA_ERRORS:
        return Kind.TRANSIENT
    return Kind.PERMANENT


# ---- the bounded dead-letter record ---------------------------------------------------------------------
KEY_KEEP_BYTES = 1024  # a longer key is replaced by its size and sha256 in the bounded record
BOUNDED_VALUE_TYPE = "application/vnd.image-moderation.dlq-metadata+json"
# Added to the DLQ headers (bridge.contract.dlq_headers) of a metadata-only record.
BOUNDED_HEADERS = [("content-type", BOUNDED_VALUE_TYPE.encode()), ("dlq_payload", b"omitted")]


def record_size(key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> int:
    """Bytes a record takes on the wire, near enough to compare with max.message.bytes (plus 512 B framing)."""
    size = len(key or b"") + len(value or b"") + 512
    for name, data in headers or ():
        size += len(name.encode("utf-8", "surrogatepass")) + len(data or b"") + 10
    return size


def bounded_record(
    key: bytes | None,
    value: bytes | None,
    headers: list[tuple[str, bytes]] | None,
    *,
    source: tuple[str, int, int],
    reason: str,
    error: str,
    dlq_error: str,
) -> tuple[bytes | None, bytes]:
    """(key, value) of the metadata-only DLQ record: everything needed to find the original (still in the
    source topic at that offset until retention removes it) and to check it is the same bytes (sha256)."""
    topic, partition, offset = source
    keep_key = key is not None and len(key) <= KEY_KEEP_BYTES
    doc = {
        "payload": "omitted",
        "why_omitted": dlq_error[:500],
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "key_b64": None if not keep_key or key is None else base64.b64encode(key).decode(),
        "key_size": None if key is None else len(key),
        "key_sha256": None if key is None else hashlib.sha256(key).hexdigest(),
        "value_size": None if value is None else len(value),
        "value_sha256": None if value is None else hashlib.sha256(value).hexdigest(),
        "headers_count": len(headers or ()),
        "headers_size": sum(len(k) + len(v or b"") for k, v in headers or ()),
        "reason": reason,
        "error": error[:2000],
        "replay": f"read {topic} partition {partition} offset {offset} (e.g. kcat -C -t {topic} "
                  f"-p {partition} -o {offset} -c 1)",
    }
    return (key if keep_key else None), json.dumps(doc, separators=(",", ":")).encode()
