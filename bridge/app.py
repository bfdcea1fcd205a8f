"""The bridge: consume `image_data`, classify over HTTP, produce to `image_predictions` (and review decisions
also to `image_review`) or the DLQ.

Flow and guarantees (details in bridge/README.md):
- fetch: consume while fewer than BRIDGE_MAX_IN_FLIGHT records are unfinished and the endpoint is ready;
  otherwise the assigned partitions are paused (backpressure: memory stays bounded, the group stays joined).
  References whose image is not fetched yet have a cap of the same size of their own.
- dispatch: up to BRIDGE_MAX_CONCURRENCY requests in flight; a free slot takes every queued record up to
  BRIDGE_MAX_BATCH into one request, so batches grow exactly when the endpoint is busy.
- outcome: a prediction (a `review` decision also gets a copy on the review topic, produced once the prediction
  is acknowledged), or a DLQ record for permanent failures (the handler's 4xx, contract violations,
  retries exhausted). What follows a failure is `outcome.decide` (a pure function): transient failures retry
  with exponential backoff + full jitter up to a cap; "endpoint down" failures also stop fetching until the
  model's readiness endpoint answers again; a DLQ copy that cannot be written goes as metadata only; a
  record that cannot be dead-lettered at all stalls its partition, loudly (/readyz, metrics, alert).
- commit: a record is finished when the broker acknowledged its whole outcome (idempotent producer, acks=all);
  each partition is committed up to its first unfinished record (`offsets.OffsetTracker`).
- SIGTERM: stop fetching, let in-flight work finish for BRIDGE_SHUTDOWN_TIMEOUT_S, flush, commit, leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from bridge import metrics as m
from bridge.config import Config
from bridge.contract import (
    REVIEW,
    ContractError,
    ImageRecord,
    decision_of,
    dlq_headers,
    parse_record,
    prediction_headers,
    prediction_value,
)
from bridge.health import ClusterContact, HealthServer
from bridge.inference import EndpointError, InferenceClient
from bridge.kafka_poll import consume_available
from bridge.lag import LagProbe
from bridge.logs import PerRecord
from bridge.offsets import OffsetTracker
from bridge.outcome import (
    BOUNDED_HEADERS,
    Action,
    Decision,
    Failure,
    Kind,
    RetryPolicy,
    Stage,
    backoff,
    blame,
    bounded_record,
    decide,
    error_text,
    kafka_error_kind,
    record_size,
)
from handlers.envelopes import Prediction
from handlers.fetch import Fetcher, FetchError

log = logging.getLogger("bridge")
# Loop timings: internal cadences, not tuning knobs (those are BRIDGE_* settings in bridge/config.py). Each is short
# so that a loop notices a stop, a freed slot or a broker error within a fraction of a second.
FETCH_LINGER_S = 0.02  # longest a fetched image waits for the fetches beside it to fill a batch
PRODUCER_POLL_S = 0.1  # the producer thread's poll: how late a delivery report can reach the event loop
PRODUCE_RETRY_S = 0.1  # wait before producing again when librdkafka's local queue is full (BufferError)
ROOM_WAIT_S = 0.2  # longest the fetch loop waits for in-flight room before it polls Kafka again
CONSUME_TIMEOUT_S = 0.2  # one consume call's wait for a first record: an idle loop (and its heartbeat) turns this often
CONSUME_MAX = 500  # records per consume call at most (also bounded by the in-flight room)
CONSUME_ERROR_PAUSE_S = 0.5  # pause after a failed consume call, so a broker error does not spin the loop
PROBE_MIN_S, PROBE_MAX_S = 0.2, 5.0  # readiness probe backoff bounds while the endpoint is down
DRAIN_POLL_S = 0.05  # shutdown: how often the drain checks that consumed work has finished
T = TypeVar("T")


@dataclass(eq=False)
class Item:
    """One consumed record on its way to an outcome."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    timestamp_ms: int | None
    epoch: int
    received_at: float
    record: ImageRecord | None = None
    attempts: int = 0
    solo: bool = False  # send alone (after a multi-image 4xx without an index)
    fetch_attempts: int = 0  # tries of fetching the image a reference names
    awaiting_fetch: bool = False  # a reference whose image is not fetched yet (counted apart from in_flight's cap)
    produce_attempts: int = 0  # tries of the current produce stage
    dlq: tuple[str, str, int | None] | None = None  # (reason, error, status) once dead-lettering started

    @property
    def tp(self) -> tuple[str, int]:
        return (self.topic, self.partition)

    @property
    def source(self) -> tuple[str, int, int]:
        return (self.topic, self.partition, self.offset)

    @property
    def model(self) -> str | None:
        return self.record.model if self.record is not None and self.record.model else None

    @property
    def id(self) -> str:
        if self.record is not None:
            return self.record.id
        return self.key.decode("utf-8", "replace") if self.key else f"{self.topic}-{self.partition}-{self.offset}"

    def log_fields(self) -> dict[str, Any]:
        return {"image_id": self.id, "topic": self.topic, "partition": self.partition, "offset": self.offset}


@dataclass
class Stall:
    """A partition stopped because its record at `offset` could not even be dead-lettered."""

    offset: int
    stage: str
    error: str
    since: float


class Bridge:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.tracker = OffsetTracker()
        self.client = InferenceClient(cfg.inference_url, cfg.model, cfg.protocol, cfg.timeout_s, cfg.max_concurrency,
                                      cfg.ready_path)
        self.fetcher = Fetcher(cfg.fetch)
        self._fetching = 0  # references being fetched now
        self._linger: asyncio.TimerHandle | None = None
        self.queue: deque[Item] = deque()
        self.in_flight = 0
        # References not fetched yet: a few hundred bytes each, so they do not count against the in-flight cap,
        # which bounds the image bytes held; they have a cap of the same size of their own. Counted in it, a burst
        # of references filled the cap with records waiting for fetches while inference idled (loadtest/README.md).
        self.awaiting_fetch = 0
        self.stopping = False
        self.exit_code = 0
        self.contact = ClusterContact()
        self.heartbeat = time.monotonic()
        self._paused = False
        self._full_since: float | None = None
        self._room = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._retry_handles: set[asyncio.TimerHandle] = set()
        self._consumer_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer")
        self.lag = LagProbe({**cfg.client_settings(), "logger": logging.getLogger("rdkafka")}, cfg.group_id)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued = asyncio.Event()
        self._endpoint_ok = asyncio.Event()
        self._stop = asyncio.Event()
        self._probing = False
        self._producer_stop = threading.Event()
        self.consumer: Consumer | None = None
        self.producer: Producer | None = None
        self.inference_policy = RetryPolicy(cfg.retry_max_attempts, cfg.backoff_s, cfg.backoff_max_s)
        self.produce_policy = RetryPolicy(cfg.produce_max_attempts, cfg.backoff_s, cfg.backoff_max_s)
        self.warnings = PerRecord(cfg.log_repeat_interval_s)
        self.stalled: dict[tuple[str, int], Stall] = {}
        self.stuck: list[dict[str, Any]] = []  # partitions whose oldest unfinished record is too old (/readyz)
        self._pauses_dirty = False

    # ---- readiness -----------------------------------------------------------------------------
    @property
    def ready(self) -> bool:
        return self.contact.reachable and self._endpoint_ok.is_set() and not self.stopping and not self.stuck

    @property
    def endpoint_ok(self) -> bool:
        return self._endpoint_ok.is_set()

    @property
    def live(self) -> bool:
        """Not wedged: the fetch loop turns, no fatal error, Kafka answered recently and lists the consumer in its
        group (for at most BRIDGE_KAFKA_UNREACHABLE_RESTART_S otherwise).

        The group condition restarts a client that stopped rejoining: in `make e2e-chaos` (and once in `make test`)
        a consumer whose session timed out while the broker restarted never rejoined its group, though its poll
        loop turned and the broker answered every other client. A new process joins at once; nothing is lost (the
        offsets of unfinished records were never committed)."""
        now = time.monotonic()
        limit = self.cfg.kafka_unreachable_restart_s
        unreachable = limit > 0 and self.contact.lost_for(now) > limit
        return self.exit_code == 0 and now - self.heartbeat < self.cfg.liveness_timeout_s and not unreachable

    def _heard_from_cluster(self, ok: bool, member: bool | None = None) -> None:
        self.contact.answered(ok)
        if self.contact.listed(member):
            log.warning("the broker no longer lists the consumer in its group", extra={
                "group": self.cfg.group_id, "restart_after_s": self.cfg.kafka_unreachable_restart_s})

    def _update_ready(self) -> None:
        m.READY.set(1 if self.ready else 0)

    # ---- consumer thread -----------------------------------------------------------------------
    async def _consumer_call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Every consumer call runs on one thread: librdkafka consumers are not for concurrent use."""
        assert self._loop is not None
        return await self._loop.run_in_executor(self._consumer_pool, lambda: fn(*args, **kwargs))

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.tracker.assign([(p.topic, p.partition) for p in partitions])
        # librdkafka keeps a partition's pause flag across lose/re-assign: start every assignment unpaused
        # (the fetch loop pauses again if it still has to), or a re-assigned partition would stay stuck.
        consumer.assign(partitions)
        consumer.resume(partitions)
        self._paused = False
        self._full_since = None
        log.info("partitions assigned", extra={"partitions": [f"{p.topic}-{p.partition}" for p in partitions]})

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Commit what is finished before the partitions move to another member, then forget them."""
        tps = [(p.topic, p.partition) for p in partitions]
        offsets = self.tracker.committable(tps)
        if offsets:
            try:
                consumer.commit(offsets=[TopicPartition(t, p, o) for t, p, o in offsets], asynchronous=False)
                self.tracker.mark_committed(offsets)
            except KafkaException as exc:
                log.warning("commit on revoke failed", extra={"error": str(exc)})
        self.tracker.revoke(tps)
        self._forget_partitions(tps)
        log.info("partitions revoked", extra={"partitions": [f"{t}-{p}" for t, p in tps]})

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        tps = [(p.topic, p.partition) for p in partitions]
        self.tracker.revoke(tps)
        self._forget_partitions(tps)
        log.warning("partitions lost", extra={"partitions": [f"{p.topic}-{p.partition}" for p in partitions]})

    def _forget_partitions(self, tps: list[tuple[str, int]]) -> None:
        """Partitions moved away: their stalls and gauges belong to the next owner now."""
        for t, p in tps:
            self.stalled.pop((t, p), None)
            for gauge in (m.CONSUMER_LAG, m.OLDEST_UNFINISHED, m.STALLED):
                with contextlib.suppress(KeyError):
                    gauge.remove(t, str(p))

    def _on_kafka_error(self, err: KafkaError) -> None:
        if err.code() == KafkaError._ALL_BROKERS_DOWN:
            self._heard_from_cluster(False)
            self._update_ready()
        # Connection errors repeat every reconnect attempt and librdkafka logs them already.
        quiet = err.code() == KafkaError._TRANSPORT and not err.fatal()
        level = logging.ERROR if err.fatal() else logging.DEBUG if quiet else logging.WARNING
        log.log(level, "kafka client error", extra={"error": str(err)})

    # ---- producer thread -----------------------------------------------------------------------
    def _poll_producer(self) -> None:
        """Delivery reports are served here and handed to the event loop."""
        assert self.producer is not None
        while not self._producer_stop.is_set():
            self.producer.poll(PRODUCER_POLL_S)

    def _produce(self, item: Item, stage: Stage, topic: str, key: bytes | None, value: bytes | None,
                 headers: list[tuple[str, bytes]], on_ack: Callable[[], None],
                 then: Callable[[], None] | None = None) -> None:
        """Produce one record of `item`'s outcome. Once acknowledged: `on_ack`, then `then` (the next record of
        the same outcome, e.g. the review copy after the prediction) or, when there is none, the record is finished
        (committable). Failures go through `outcome.decide` for `stage`."""
        assert self.producer is not None and self._loop is not None
        loop = self._loop

        def delivered(err: KafkaError | None, _msg: Message) -> None:
            loop.call_soon_threadsafe(self._delivered, item, stage, err, topic, key, value, headers, on_ack, then)

        try:
            self.producer.produce(topic, value=value, key=key, headers=headers, on_delivery=delivered)
        except BufferError:
            self._later(PRODUCE_RETRY_S, lambda: self._produce(item, stage, topic, key, value, headers, on_ack, then))
        except KafkaException as exc:  # refused before sending (e.g. over the producer's message.max.bytes)
            self._delivered(item, stage, exc.args[0], topic, key, value, headers, on_ack, then)

    def _delivered(self, item: Item, stage: Stage, err: KafkaError | None, topic: str, key: bytes | None,
                   value: bytes | None, headers: list[tuple[str, bytes]], on_ack: Callable[[], None],
                   then: Callable[[], None] | None = None) -> None:
        if err is None:
            on_ack()
            if then is not None:
                then()
            else:
                self._finish(item)
            return
        kind = kafka_error_kind(err.code(), err.retriable(), err.fatal())
        if kind is not Kind.FATAL and not self.tracker.current(item.tp, item.epoch):
            self._drop(item)  # the partition moved: its new owner re-processes the record
            return
        item.produce_attempts += 1
        decision = decide(Failure(stage, kind, err.name(), item.produce_attempts), self.produce_policy)
        error = f"producing to {topic}: {err.name()}: {err.str()}"
        self._act(item, stage, decision, error, retry=lambda: self._produce(item, stage, topic, key, value,
                                                                            headers, on_ack, then))

    def _act(self, item: Item, stage: Stage, decision: Decision, error: str, retry: Callable[[], None],
             status: int | None = None) -> None:
        """Carry out `outcome.decide`'s decision for a record whose `stage` failed."""
        fields = {**item.log_fields(), "stage": str(stage), "reason": decision.reason, "error": error}
        if decision.action is Action.RETRY:
            before_output = stage in (Stage.FETCH, Stage.INFERENCE)
            m.RETRIES.labels(decision.reason if before_output else "produce").inc()
            self.warnings.log(log, logging.INFO if before_output else logging.WARNING,
                              (item.source, stage), f"{stage} failed, retrying",
                              {**fields, "attempts": item.produce_attempts or item.attempts or item.fetch_attempts,
                               "delay_s": round(decision.delay_s, 3)})
            self._later(decision.delay_s, retry)
        elif decision.action is Action.DLQ:
            self._to_dlq(item, decision.reason, error, status)
        elif decision.action is Action.DLQ_BOUNDED:
            self._to_dlq_bounded(item, error)
        elif decision.action is Action.STALL:
            self._stall(item, stage, error)
            self._later(decision.delay_s, retry)
        else:
            log.error("fatal Kafka error: exiting so a restart resumes from the last commit", extra=fields)
            self.exit_code = 1
            self._stop.set()

    def _stall(self, item: Item, stage: Stage, error: str) -> None:
        """The DLQ cannot take this record: stop its partition (no commit past it, no new fetches) and say so."""
        stall = self.stalled.get(item.tp)
        if stall is None or stall.offset != item.offset:
            self.stalled[item.tp] = Stall(item.offset, str(stage), error, time.monotonic())
            m.STALLED.labels(item.topic, str(item.partition)).set(1)
            self._pauses_dirty = True
            self._update_ready()
        self.warnings.log(log, logging.ERROR, (item.source, "stall"),
                          "partition stalled: record cannot be dead-lettered; retrying it every "
                          f"{self.cfg.backoff_max_s:g}s, nothing after it is committed",
                          {**item.log_fields(), "stage": str(stage), "error": error})

    def _finish(self, item: Item) -> None:
        self.tracker.done(item.tp, item.offset, item.epoch)
        for stage in Stage:
            self.warnings.forget((item.source, stage))
        self.warnings.forget((item.source, "stall"))
        stall = self.stalled.get(item.tp)
        if stall is not None and stall.offset == item.offset:
            del self.stalled[item.tp]
            m.STALLED.labels(item.topic, str(item.partition)).set(0)
            self._pauses_dirty = True
            log.warning("partition resumed: stalled record finished", extra=item.log_fields())
        self._release(item)

    def _drop(self, item: Item) -> None:
        """A record whose partition moved to another member: its new owner re-processes it."""
        self._release(item)

    def _release(self, item: Item) -> None:
        self._fetch_settled(item)
        self.in_flight -= 1
        m.IN_FLIGHT.set(self.in_flight)
        self._room.set()

    def room_left(self) -> int:
        """Records that may still be consumed: the in-flight cap counts records holding (or about to hold) image
        bytes; references waiting for their fetch have a cap of the same size of their own."""
        holding = self.in_flight - self.awaiting_fetch
        return self.cfg.max_in_flight - max(holding, self.awaiting_fetch)

    def _fetch_settled(self, item: Item) -> None:
        """The reference's fetch is over (image attached, dead-lettered or dropped): from now on the record counts
        against the in-flight cap like a record that carried its bytes."""
        if item.awaiting_fetch:
            item.awaiting_fetch = False
            self.awaiting_fetch -= 1
            self._room.set()

    def _later(self, delay: float, fn: Callable[[], None]) -> None:
        assert self._loop is not None
        handle: asyncio.TimerHandle

        def run() -> None:
            self._retry_handles.discard(handle)
            fn()

        handle = self._loop.call_later(delay, run)
        self._retry_handles.add(handle)

    # ---- outcomes ------------------------------------------------------------------------------
    def _dlq_headers(self, item: Item, original: list[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
        assert item.dlq is not None
        reason, error, status = item.dlq
        return dlq_headers(
            original, error=error, error_class=reason, status=status, attempts=item.attempts,
            model=item.model or self.cfg.model, source=item.source, source_timestamp_ms=item.timestamp_ms,
            failed_at=time.time(),
        )

    def _to_dlq(self, item: Item, reason: str, error: str, status: int | None = None) -> None:
        """The full copy (original key, value, headers + why), unless it cannot fit the DLQ topic."""
        log.warning("to DLQ", extra={**item.log_fields(), "reason": reason, "error": error, "status": status,
                                      "attempts": item.attempts})
        item.dlq = (reason, error, status)
        item.produce_attempts = 0
        headers = self._dlq_headers(item, item.headers)
        size = record_size(item.key, item.value, headers)
        if size > self.cfg.dlq_max_message_bytes:
            self._to_dlq_bounded(item, f"full copy of {size} B exceeds the DLQ limit of "
                                       f"{self.cfg.dlq_max_message_bytes} B (KAFKA_DLQ_MAX_MESSAGE_BYTES)")
            return
        self._produce(item, Stage.DLQ, self.cfg.dlq_topic, item.key, item.value, headers,
                      lambda: m.DLQ.labels(reason).inc())

    def _to_dlq_bounded(self, item: Item, why: str) -> None:
        """Metadata only (source coordinates, sizes, sha256, reason): it always fits; the payload stays in
        the source topic at that offset until retention removes it."""
        assert item.dlq is not None
        reason, error, _status = item.dlq
        item.produce_attempts = 0
        key, value = bounded_record(item.key, item.value, item.headers, source=item.source, reason=reason,
                                    error=error, dlq_error=why)
        headers = [*self._dlq_headers(item, None), *BOUNDED_HEADERS]
        log.warning("to DLQ without payload", extra={**item.log_fields(), "reason": reason, "why": why})

        def acked() -> None:
            m.DLQ.labels(reason).inc()
            m.DLQ_PAYLOAD_OMITTED.labels(reason).inc()

        self._produce(item, Stage.DLQ_BOUNDED, self.cfg.dlq_topic, key, value, headers, acked)

    def _to_output(self, item: Item, pred: Prediction, inference_ms: float, batch_size: int) -> None:
        assert item.record is not None
        now = time.time()
        start = item.timestamp_ms / 1000 if item.timestamp_ms else item.received_at
        value = prediction_value(
            item.record, pred, source=item.source, received_at=item.received_at, produced_at=now,
            inference_ms=inference_ms, batch_size=batch_size, end_to_end_ms=(now - start) * 1000,
            attempts=item.attempts + 1,
        )
        headers = prediction_headers(item.id)
        key = item.id.encode()
        decision, _review_threshold = decision_of(pred)

        def acked() -> None:
            m.PRODUCED.labels(pred.model, pred.label, decision).inc()
            m.END_TO_END.observe(max(0.0, time.time() - start))

        log.info("prediction", extra={**item.log_fields(), "label": pred.label, "decision": decision,
                                      "harmful_score": round(pred.harmful_score, 4), "model": pred.model,
                                      "inference_ms": round(inference_ms, 1), "batch_size": batch_size})
        then = None
        if decision == REVIEW and self.cfg.review_topic:
            then = functools.partial(self._to_review, item, pred.model, key, value, headers)
        item.produce_attempts = 0
        self._produce(item, Stage.OUTPUT, self.cfg.output_topic, key, value, headers, acked, then)

    def _to_review(self, item: Item, model: str, key: bytes, value: bytes, headers: list[tuple[str, bytes]]) -> None:
        """The review copy (same key, value and headers), produced once the prediction is acknowledged: the record
        is finished, so its offset committable, only when both are. Produced one after the other so each failure
        is that topic's own (retried alone; a permanent one dead-letters the record, whose prediction is out)."""
        item.produce_attempts = 0
        self._produce(item, Stage.REVIEW, self.cfg.review_topic, key, value, headers,
                      lambda: m.REVIEW_PRODUCED.labels(model).inc())

    # ---- fetch ---------------------------------------------------------------------------------
    async def _fetch_loop(self) -> None:
        assert self.consumer is not None
        while not self._stop.is_set():
            self.heartbeat = time.monotonic()
            room = self.room_left()
            down = not self._endpoint_ok.is_set()
            if room > 0:
                self._full_since = None
            elif not down and not self._paused:
                # At the in-flight cap: wait for room without pausing (a pause drops librdkafka's prefetched
                # records and costs a fetch round trip on resume); pause only if it lasts, so the consumer
                # keeps polling and stays in the group.
                self._full_since = self._full_since or time.monotonic()
                if time.monotonic() - self._full_since < self.cfg.pause_after_s:
                    self._room.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._room.wait(), ROOM_WAIT_S)
                    continue
            want_pause = down or room <= 0
            if want_pause != self._paused or self._pauses_dirty:
                await self._consumer_call(self._set_paused, want_pause)
            try:
                msgs = await self._consumer_call(consume_available, self.consumer, max(1, min(room, CONSUME_MAX)),
                                                 CONSUME_TIMEOUT_S)
            except KafkaException as exc:
                log.warning("consume failed", extra={"error": str(exc)})
                await asyncio.sleep(CONSUME_ERROR_PAUSE_S)
                continue
            for msg in msgs:
                self._accept(msg)

    def _set_paused(self, paused: bool) -> None:
        """Pause every partition (backpressure, endpoint down) or resume all but the stalled ones."""
        assert self.consumer is not None
        self._pauses_dirty = False
        parts = self.consumer.assignment()
        stalled = [p for p in parts if (p.topic, p.partition) in self.stalled]
        running = [p for p in parts if (p.topic, p.partition) not in self.stalled]
        if paused and parts:
            self.consumer.pause(parts)
        elif not paused:
            if running:
                self.consumer.resume(running)
            if stalled:
                self.consumer.pause(stalled)
        self._paused = paused
        # Routine backpressure (in-flight cap) is DEBUG; pausing for an endpoint outage is worth INFO.
        level = logging.DEBUG if self._endpoint_ok.is_set() else logging.INFO
        log.log(level, "consumption paused" if paused else "consumption resumed",
                extra={"in_flight": self.in_flight, "endpoint_ready": self._endpoint_ok.is_set()})

    def _accept(self, msg: Message) -> None:
        err = msg.error()
        if err is not None:
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("consumer error", extra={"error": str(err)})
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        epoch = self.tracker.add((topic, partition), offset)
        if epoch is None:
            return  # not (or no longer) assigned to us: redelivered to the owner
        ts_type, ts = msg.timestamp()
        item = Item(topic, partition, offset, msg.key(), msg.value(), msg.headers(),
                    ts if ts_type != 0 and ts > 0 else None, epoch, time.time())
        self.in_flight += 1
        m.IN_FLIGHT.set(self.in_flight)
        m.CONSUMED.labels(topic).inc()
        try:
            item.record = parse_record(item.key, item.value, item.headers, f"{topic}-{partition}-{offset}",
                                       self.cfg.models, self.cfg.model)
        except ContractError as exc:
            self._to_dlq(item, exc.reason, exc.message)
            return
        if item.record.reference is not None:
            item.awaiting_fetch = True
            self.awaiting_fetch += 1
            self._start_fetch(item)
            return
        self.queue.append(item)
        self._queued.set()

    # ---- references ----------------------------------------------------------------------------
    def _start_fetch(self, item: Item) -> None:
        self._fetching += 1
        task = asyncio.create_task(self._fetch_reference(item))
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            self._fetching -= 1
            self._wake_after_fetch()

        task.add_done_callback(done)

    def _wake_after_fetch(self) -> None:
        """Fetched images reach the queue one by one; waking the dispatcher for each would send them one per
        request. Wake it once a batch is full, once no fetch is left, or after FETCH_LINGER_S, whichever first."""
        if not self.queue:
            return
        if self._fetching == 0 or len(self.queue) >= self.cfg.max_batch:
            if self._linger is not None:
                self._linger.cancel()
                self._linger = None
            self._queued.set()
        elif self._linger is None:
            assert self._loop is not None

            def linger() -> None:
                self._linger = None
                if self.queue:
                    self._queued.set()

            self._linger = self._loop.call_later(FETCH_LINGER_S, linger)

    async def _fetch_reference(self, item: Item) -> None:
        """Fetch the image a record names (handlers/fetch.py: SSRF rules, byte cap, sniffed type), then queue it
        for inference like any other. Here, not in the predictor: a TorchServe worker that fetched would stall its
        whole batch. A permanent refusal dead-letters this record alone; a transient one is retried with backoff."""
        assert item.record is not None and item.record.reference is not None
        if not self.tracker.current(item.tp, item.epoch):
            self._drop(item)
            return
        t0 = time.perf_counter()
        try:
            fetched = await self.fetcher.fetch(item.record.reference)
        except FetchError as exc:
            if not self.tracker.current(item.tp, item.epoch):
                self._drop(item)
                return
            item.fetch_attempts += 1
            kind = Kind.TRANSIENT if exc.transient else Kind.PERMANENT
            decision = decide(Failure(Stage.FETCH, kind, exc.reason, item.fetch_attempts), self.inference_policy)
            error = error_text(decision, exc.reason, exc.message)
            if decision.action is not Action.RETRY:
                self._fetch_settled(item)
            self._act(item, Stage.FETCH, decision, error, retry=lambda: self._start_fetch(item))
            return
        except Exception as exc:  # a bug: the record is dead-lettered (nothing lost), the traceback logged
            log.exception("fetch failed unexpectedly", extra=item.log_fields())
            self._fetch_settled(item)
            self._to_dlq(item, "fetch_failed", f"unexpected error: {type(exc).__name__}")
            return
        scheme = fetched.reference.scheme
        m.FETCH_LATENCY.labels(scheme).observe(time.perf_counter() - t0)
        m.FETCHED_BYTES.labels(scheme).inc(len(fetched.data))
        if not self.tracker.current(item.tp, item.epoch):
            self._drop(item)
            return
        item.record.image = fetched.data
        item.record.content_type = fetched.content_type
        item.record.fetched = fetched.echo()
        self._fetch_settled(item)
        self.queue.append(item)  # the dispatcher is woken by _wake_after_fetch when this task is done

    # ---- dispatch ------------------------------------------------------------------------------
    def _take_batch(self) -> list[Item]:
        batch: list[Item] = []
        size = 0
        limit = self.cfg.max_batch if self.cfg.protocol in ("v2", "v1") else 1
        while self.queue and len(batch) < limit:
            item = self.queue[0]
            if not self.tracker.current(item.tp, item.epoch):
                self.queue.popleft()
                self._drop(item)
                continue
            assert item.record is not None
            n = len(item.record.image)
            if batch and (item.solo or batch[0].solo or size + n > self.cfg.max_batch_bytes
                          or item.model != batch[0].model):  # one request = one model
                break
            self.queue.popleft()
            batch.append(item)
            size += n
        if not self.queue:
            self._queued.clear()
        return batch

    async def _dispatch_loop(self) -> None:
        slots = asyncio.Semaphore(self.cfg.max_concurrency)
        while True:
            await slots.acquire()
            await self._queued.wait()
            await self._endpoint_ok.wait()
            batch = self._take_batch()
            if not batch:
                slots.release()
                continue
            task = asyncio.create_task(self._infer(batch))
            self._tasks.add(task)
            task.add_done_callback(lambda t: (self._tasks.discard(t), slots.release()))

    async def _infer(self, batch: list[Item]) -> None:
        assert all(it.record is not None for it in batch)
        m.BATCH_SIZE.observe(len(batch))
        t0 = time.perf_counter()
        model = batch[0].model or self.cfg.model
        try:
            preds = await self.client.infer([it.record.image for it in batch], batch[0].id,  # type: ignore[union-attr]
                                            model)
        except EndpointError as exc:
            self._failed(batch, exc)
            return
        elapsed = time.perf_counter() - t0
        m.INFERENCE_LATENCY.labels(model).observe(elapsed)
        for item, pred in zip(batch, preds, strict=True):
            self._to_output(item, pred, elapsed * 1000, len(batch))

    def _requeue_front(self, items: list[Item]) -> None:
        self.queue.extendleft(reversed(items))
        if self.queue:
            self._queued.set()

    def _failed(self, batch: list[Item], exc: EndpointError) -> None:
        charged = blame(len(batch), exc.transient, exc.index)
        if charged.solo:  # the endpoint did not say which image: find out one by one
            for it in batch:
                it.solo = True
            self._requeue_front(batch)
            return
        if charged.resend:  # innocent: send again at once
            self._requeue_front([batch[i] for i in charged.resend])
        if exc.transient and exc.endpoint_down:
            self._endpoint_down(exc)
        culprits = [batch[i] for i in charged.culprits]
        kind = Kind.TRANSIENT if exc.transient else Kind.PERMANENT
        for it in culprits:
            it.attempts += 1
            decision = decide(Failure(Stage.INFERENCE, kind, exc.reason, it.attempts), self.inference_policy)
            error = error_text(decision, exc.reason, exc.message)
            self._act(it, Stage.INFERENCE, decision, error, retry=lambda it=it: self._requeue_front([it]),
                      status=exc.status)

    # ---- endpoint readiness (circuit breaker) ---------------------------------------------------
    def _endpoint_down(self, exc: EndpointError) -> None:
        if self._endpoint_ok.is_set():
            log.warning("inference endpoint down: pausing consumption", extra={"reason": exc.reason,
                                                                               "error": exc.message})
            self._endpoint_ok.clear()
            self._update_ready()
        self._start_probe()

    def _start_probe(self) -> None:
        if self._probing or self._stop.is_set():
            return
        self._probing = True
        task = asyncio.create_task(self._probe())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _probe(self) -> None:
        """Poll the model's readiness with backoff until it answers; then resume fetching and sending."""
        try:
            attempt = 0
            while not self._stop.is_set():
                if await self.client.ready():
                    self._endpoint_ok.set()
                    self._update_ready()
                    log.info("inference endpoint ready", extra={"url": self.client.ready_url})
                    return
                attempt += 1
                delay = backoff(attempt, self.cfg.backoff_s, min(PROBE_MAX_S, self.cfg.backoff_max_s))
                await asyncio.sleep(max(PROBE_MIN_S, delay))
        finally:
            self._probing = False

    # ---- commits and lag -----------------------------------------------------------------------
    async def _commit(self) -> None:
        assert self.consumer is not None
        offsets = self.tracker.committable()
        if not offsets:
            return
        try:
            await self._consumer_call(
                self.consumer.commit, offsets=[TopicPartition(t, p, o) for t, p, o in offsets], asynchronous=False
            )
            self.tracker.mark_committed(offsets)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError._NO_OFFSET:
                log.warning("commit failed (retried next interval)", extra={"error": str(exc)})

    async def _commit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.commit_interval_s)
            await self._commit()
            self._watch_ages()

    def _watch_ages(self) -> None:
        """Per partition, the age of the oldest unfinished record (metric) and whether it is stuck (/readyz)."""
        stuck = []
        for (topic, partition), oldest in self.tracker.oldest().items():
            age = 0.0 if oldest is None else oldest[1]
            m.OLDEST_UNFINISHED.labels(topic, str(partition)).set(age)
            stall = self.stalled.get((topic, partition))
            if oldest is not None and (stall is not None or age >= self.cfg.stuck_after_s):
                stuck.append({"topic": topic, "partition": partition, "offset": oldest[0], "age_s": round(age, 1),
                              "state": "stalled" if stall else "slow",
                              **({"stage": stall.stage, "error": stall.error[:300]} if stall else {})})
        if stuck and not self.stuck:
            log.error("partitions stuck", extra={"stuck": stuck})
        self.stuck = stuck
        self._update_ready()

    async def _lag_loop(self) -> None:
        """Per-partition lag (high watermark minus the bridge's position, or the group's commit before the first
        record) and whether the cluster answers, every BRIDGE_LAG_INTERVAL_S, off the consumer's thread
        (bridge/lag.py says why)."""
        assert self._loop is not None
        while True:
            assigned = self.tracker.assigned()
            unknown = [tp for tp in assigned if self.tracker.position(tp) is None]
            try:
                assert self.consumer is not None
                member_id = await self._consumer_call(self.consumer.memberid)
                ok, high, committed, member = await self._loop.run_in_executor(
                    self.lag.pool, self.lag.measure, self.cfg.input_topic, assigned, unknown, member_id)
            except Exception as exc:  # a client bug must not end the loop (lag and reachability would freeze)
                log.warning("lag measurement failed", extra={"error": f"{type(exc).__name__}: {exc}"})
                await asyncio.sleep(self.cfg.lag_interval_s)
                continue
            self._heard_from_cluster(ok, member)
            for tp, end in high.items():
                pos = self.tracker.position(tp)
                pos = committed.get(tp) if pos is None else pos
                if pos is not None:
                    m.CONSUMER_LAG.labels(tp[0], str(tp[1])).set(max(0, end - pos))
            self._update_ready()
            await asyncio.sleep(self.cfg.lag_interval_s)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def run(self) -> int:
        self._loop = asyncio.get_running_loop()
        cfg = self.cfg
        m.READY.set(0)
        rdkafka_log = logging.getLogger("rdkafka")  # librdkafka's own logs as JSON lines too
        self.producer = Producer({**cfg.producer_settings(), "error_cb": self._on_kafka_error, "logger": rdkafka_log})
        self.consumer = Consumer({**cfg.consumer_settings(), "error_cb": self._on_kafka_error, "logger": rdkafka_log})
        producer_thread = threading.Thread(target=self._poll_producer, name="producer", daemon=True)
        producer_thread.start()
        await self._consumer_call(self.consumer.subscribe, [cfg.input_topic], on_assign=self._on_assign,
                                  on_revoke=self._on_revoke, on_lost=self._on_lost)
        health = HealthServer(self, cfg.host, cfg.port)
        await health.start()
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._loop.add_signal_handler(sig, self._signalled, sig)
        log.info("bridge started", extra={"bootstrap": cfg.bootstrap_servers, "input": cfg.input_topic,
                                          "output": cfg.output_topic, "review": cfg.review_topic or None,
                                          "dlq": cfg.dlq_topic, "group": cfg.group_id,
                                          "inference": self.client.infer_url, "port": cfg.port})
        self._start_probe()
        loops = [asyncio.create_task(c) for c in (self._fetch_loop(), self._dispatch_loop(), self._commit_loop(),
                                                   self._lag_loop())]
        await self._stop.wait()
        self.stopping = True
        self._update_ready()
        fetch = loops[0]
        await fetch  # stops at the next poll; nothing new is accepted after this
        await self._drain()
        for task in [*loops, *self._tasks]:
            task.cancel()
        await asyncio.gather(*loops, *self._tasks, return_exceptions=True)
        for handle in self._retry_handles:
            handle.cancel()
        remaining = await asyncio.to_thread(self.producer.flush, 10)
        await asyncio.sleep(0)  # run delivery reports queued by the flush
        await self._commit()
        handed_back = self.in_flight
        await self._consumer_call(self.consumer.close)
        self._producer_stop.set()
        producer_thread.join(5)
        await self.client.close()
        await self.fetcher.close()
        await health.stop()
        self._consumer_pool.shutdown(wait=True)
        self.lag.close()
        log.info("bridge stopped", extra={"handed_back": handed_back, "unflushed": remaining,
                                          "exit_code": self.exit_code})
        return self.exit_code

    async def _drain(self) -> None:
        """Let consumed work finish (bounded by BRIDGE_SHUTDOWN_TIMEOUT_S); the rest is re-delivered later."""
        deadline = time.monotonic() + self.cfg.shutdown_timeout_s
        while self.in_flight > 0 and time.monotonic() < deadline and self.exit_code == 0:
            await asyncio.sleep(DRAIN_POLL_S)

    def _signalled(self, sig: signal.Signals) -> None:
        log.info("signal received: draining", extra={"signal": sig.name, "in_flight": self.in_flight})
        self._stop.set()
