"""Fixtures and helpers for the Kafka tests: the real broker (scripts/kafka.sh) and real bridge processes.

Every test gets its own topics (`<run>.image_data`, ...) and consumer group, so tests never see each
other's records and a bridge started by `make up` is left alone. Bridges run as subprocesses
(`python -m bridge`) so they can be SIGTERMed and SIGKILLed like in production.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import jsonschema
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from bridge.config import dlq_limit
from bridge.contract import schema
from bridge.topics import ensure_topics
from handlers.model_io import decision
from handlers.registry import LABELS
from handlers.stack import stack

ROOT = Path(__file__).resolve().parent.parent
KAFKA_SH = ROOT / "scripts" / "kafka.sh"
SERVING_SH = ROOT / "scripts" / "serving.sh"
LOG_DIR = ROOT / ".run" / "logs"
BOOTSTRAP = f"{stack()['STACK_HOST']}:{stack()['KAFKA_PORT']}"
MAX_BYTES = 16 * 1024 * 1024


def _broker_up() -> bool:
    try:
        AdminClient({"bootstrap.servers": BOOTSTRAP}).list_topics(timeout=3)
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def kafka() -> Iterator[str]:
    """Bootstrap address of the real single-node broker; started (and stopped) here unless already up."""
    started = False
    if not _broker_up():
        subprocess.run([str(KAFKA_SH), "start"], check=True)
        started = True
    yield BOOTSTRAP
    delete_session_topics(BOOTSTRAP)
    if started:
        subprocess.run([str(KAFKA_SH), "stop"], check=True)


_SESSION_TOPICS: list[str] = []  # every topic Topics.create made in this pytest session


def delete_session_topics(bootstrap: str) -> None:
    """Delete the topics this session created: the broker's data directory kept them (and loaded them at every
    start) until its time retention; one day of `make test` runs left 6,264 partition directories."""
    if not _SESSION_TOPICS or not _broker_up():
        return
    admin = AdminClient({"bootstrap.servers": bootstrap})
    existing = set(admin.list_topics(timeout=10).topics)
    doomed = [t for t in _SESSION_TOPICS if t in existing]
    for future in admin.delete_topics(doomed, operation_timeout=30).values() if doomed else ():
        future.result()
    _SESSION_TOPICS.clear()


@dataclass
class Topics:
    input: str
    output: str
    dlq: str
    group: str
    review: str = ""  # "" = the bridge writes no review copies (KAFKA_REVIEW_TOPIC empty)

    @classmethod
    def create(cls, bootstrap: str, partitions: int = 6, dlq_max_bytes: int | None = None,
               review_max_bytes: int | None = None) -> Topics:
        """Topics as `bridge.topics ensure` makes them (DLQ limit: config.dlq_limit), unless `dlq_max_bytes`;
        the review topic like the output topic, unless `review_max_bytes`."""
        run = f"t{uuid.uuid4().hex[:10]}"
        t = cls(f"{run}.image_data", f"{run}.image_predictions", f"{run}.image_data.dlq", f"{run}-bridge",
                f"{run}.image_review")
        ensure_topics(AdminClient({"bootstrap.servers": bootstrap}),
                      {t.input: partitions, t.output: partitions, t.review: partitions, t.dlq: 1}, MAX_BYTES,
                      {t.dlq: dlq_limit(MAX_BYTES) if dlq_max_bytes is None else dlq_max_bytes,
                       t.review: MAX_BYTES if review_max_bytes is None else review_max_bytes})
        _SESSION_TOPICS.extend((t.input, t.output, t.dlq, t.review))
        return t

    def env(self) -> dict[str, str]:
        """The consumers' variables naming these topics (bridge and Spark consumer alike)."""
        return {"KAFKA_INPUT_TOPIC": self.input, "KAFKA_OUTPUT_TOPIC": self.output, "KAFKA_DLQ_TOPIC": self.dlq,
                "KAFKA_REVIEW_TOPIC": self.review}


@pytest.fixture
def topics(kafka: str) -> Topics:
    return Topics.create(kafka)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProcess:
    """`python -m bridge` on the test's topics; start/terminate/kill like an orchestrator would."""

    def __init__(self, topics: Topics, bootstrap: str, inference_url: str, **env: str) -> None:
        self.port = free_port()
        self.log_path = LOG_DIR / f"test-bridge-{topics.group}.log"
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.env = {
            **os.environ,
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            **topics.env(),
            "KAFKA_GROUP_ID": topics.group,
            "KAFKA_SESSION_TIMEOUT_MS": "8000",
            "INFERENCE_URL": inference_url,
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_COMMIT_INTERVAL_S": "0.5",
            "LOG_LEVEL": os.environ.get("BRIDGE_TEST_LOG_LEVEL", "INFO"),
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout_s: float = 120) -> BridgeProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bridge"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        if wait_ready:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 120, path: str = "/readyz") -> None:
        """Until `path` answers 200 (`/livez`: the HTTP side is up, also while the bridge is not ready)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bridge exited {self.proc.returncode}: {self.tail()}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise AssertionError(f"bridge: no 200 on {path} after {timeout_s}s: {self.tail()}")

    def metric(self, name: str, **labels: str) -> float:
        """Sum of a metric's samples on /metrics (0 when absent), only those with `labels` when given."""
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        wanted = [f'{k}="{v}"' for k, v in labels.items()]
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and (line[len(name)] in " {") and all(w in line for w in wanted):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def terminate(self, timeout_s: float = 60) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout_s)

    def kill(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def stop_quietly(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate(30)
            except subprocess.TimeoutExpired:
                self.kill()

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:]) if self.log_path.exists() else ""


def produce(bootstrap: str, topic: str, records: list[tuple[str, bytes, list[tuple[str, bytes]]]]) -> None:
    """Write (key, value, headers) records with an idempotent producer; fail unless all are acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "message.max.bytes": MAX_BYTES, "linger.ms": 5})
    errors: list[str] = []
    for key, value, headers in records:
        producer.produce(topic, key=key.encode(), value=value, headers=headers,
                         on_delivery=lambda err, _m: errors.append(str(err)) if err else None)
        producer.poll(0)
    assert producer.flush(60) == 0, "records not delivered"
    assert not errors, errors[:5]


def raw_record(image_id: str, image: bytes, metadata: dict | None = None,
               content_type: str = "image/jpeg") -> tuple[str, bytes, list[tuple[str, bytes]]]:
    return image_id, image, [("content-type", content_type.encode()),
                             ("metadata", json.dumps(metadata or {"id": image_id}).encode())]


def check_prediction(doc: dict, model: str) -> None:
    """An `image_predictions` value valid against its JSON Schema, from `model`, its label and decision matching
    its score and thresholds."""
    jsonschema.validate(doc, schema("image_predictions"))
    assert doc["model"] == model and doc["label"] in LABELS
    assert (doc["label"] == "harmful") == (doc["harmful_score"] >= doc["threshold"])
    assert doc["review_threshold"] <= doc["threshold"]
    assert doc["decision"] == decision(doc["harmful_score"], doc["threshold"], doc["review_threshold"]), doc


Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]


@dataclass
class Outcomes:
    """Everything that came out for a set of ids: predictions and DLQ records, with repeats."""

    predictions: dict[str, list[dict]] = field(default_factory=lambda: defaultdict(list))
    dlq: dict[str, list[dict[str, str]]] = field(default_factory=lambda: defaultdict(list))
    dlq_values: dict[str, bytes] = field(default_factory=dict)
    # (key, value, headers) as produced: predictions on the output topic and copies on the review topic
    prediction_records: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))
    review_records: dict[str, list[Record]] = field(default_factory=lambda: defaultdict(list))

    def seen(self) -> set[str]:
        return set(self.predictions) | set(self.dlq)

    def duplicates(self) -> int:
        """Outcomes beyond the first per id (at-least-once repeats)."""
        return sum(len(v) for v in self.predictions.values()) + sum(len(v) for v in self.dlq.values()) - len(
            self.seen())

    def report(self, expected: set[str], label: str) -> str:
        lost = expected - self.seen()
        return (f"{label}: {len(expected)} ids, {len(self.predictions)} predicted, {len(self.dlq)} dead-lettered, "
                f"lost {len(lost)}, duplicates {self.duplicates()}")


def collect(bootstrap: str, topics: Topics, expected: set[str], timeout_s: float,
            settle_s: float = 2.0) -> Outcomes:
    """Read output + DLQ (+ review, if the topics have one) from the beginning until every expected id is there
    (then `settle_s` more)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topics.group}-check",
                         "enable.auto.commit": False, "fetch.max.bytes": MAX_BYTES * 2,
                         "max.partition.fetch.bytes": MAX_BYTES, "receive.message.max.bytes": MAX_BYTES * 3})
    meta = consumer.list_topics(timeout=10)
    consumer.assign([TopicPartition(t, p, OFFSET_BEGINNING) for t in (topics.output, topics.dlq, topics.review)
                     if t for p in meta.topics[t].partitions])
    out = Outcomes()
    deadline = time.monotonic() + timeout_s
    done_at: float | None = None
    try:
        while time.monotonic() < deadline:
            if done_at is None and expected <= out.seen():
                done_at = time.monotonic()
            if done_at is not None and time.monotonic() - done_at > settle_s:
                break
            for msg in consumer.consume(500, 0.5):
                if msg.error():
                    continue
                headers = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
                key = record_id(msg.key(), headers)
                if msg.topic() == topics.dlq:
                    out.dlq[key].append(headers)
                    out.dlq_values[key] = msg.value()
                elif msg.topic() == topics.review:
                    out.review_records[key].append((msg.key(), msg.value(), list(msg.headers() or [])))
                else:
                    out.predictions[key].append(json.loads(msg.value()))
                    out.prediction_records[key].append((msg.key(), msg.value(), list(msg.headers() or [])))
    finally:
        consumer.close()
    return out


def record_id(key: bytes | None, dlq_headers: dict[str, str]) -> str:
    """The id the bridge gives a record: UTF-8 key, else its hex, else topic-partition-offset (as the bridge)."""
    if key:
        try:
            return key.decode("utf-8")
        except UnicodeDecodeError:
            return key.hex()
    return f"{dlq_headers.get('source_topic')}-{dlq_headers.get('source_partition')}-{dlq_headers.get('source_offset')}"


def wait_for(predicate, timeout_s: float, what: str, interval: float = 0.25) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def committed_total(bootstrap: str, topics: Topics) -> int:
    """Sum of the group's committed offsets on the input topic (what a restart would skip)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topics.group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topics.input, timeout=10).topics[topics.input].partitions
        tps = consumer.committed([TopicPartition(topics.input, p) for p in parts], timeout=10)
        return sum(max(0, tp.offset) for tp in tps)
    finally:
        consumer.close()


def committed(bootstrap: str, topics: Topics) -> dict[int, int]:
    """The group's committed offset per input partition (-1001: none yet)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": topics.group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(topics.input, timeout=10).topics[topics.input].partitions
        return {tp.partition: tp.offset
                for tp in consumer.committed([TopicPartition(topics.input, p) for p in parts], timeout=10)}
    finally:
        consumer.close()


def produce_to(bootstrap: str, topic: str,
               records: list[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]]) -> list[int]:
    """Write (key, value, headers, partition) records as a plain client would; returns their offsets in order."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "message.max.bytes": MAX_BYTES, "linger.ms": 5})
    offsets: dict[int, int] = {}
    errors: list[str] = []

    def done(n: int) -> object:
        return lambda err, msg: errors.append(str(err)) if err else offsets.__setitem__(n, msg.offset())

    for n, (key, value, headers, partition) in enumerate(records):
        kw = {} if partition is None else {"partition": partition}
        producer.produce(topic, key=key, value=value, headers=headers, on_delivery=done(n), **kw)
        producer.poll(0)
    assert producer.flush(120) == 0, "records not delivered"
    assert not errors, errors[:5]
    return [offsets[n] for n in range(len(records))]
