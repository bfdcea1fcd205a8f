"""The Spark consumer (`python -m streaming`) end to end on the real broker and the real serving stack.

- The same check, written only from the documented contract (a plain confluent-kafka producer and consumer,
  200 good + 10 poison records), passes against the bridge, Spark in endpoint mode and Spark in in-process mode,
  and their records are indistinguishable apart from `producer`.
- A SIGKILL of the Spark driver mid-stream, then a restart from its checkpoint: nothing lost, and the repeats are
  bounded by the micro-batch that was running (at-least-once, duplicates counted).
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter, defaultdict
from pathlib import Path

import jsonschema
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from bridge.contract import schema
from tests.image_factory import jpeg, png_bomb
from tests.kafka_support import (
    MAX_BYTES,
    BridgeProcess,
    Topics,
    check_prediction,
    collect,
    kafka,  # noqa: F401  (fixture)
    topics,  # noqa: F401  (fixture)
    wait_for,
)
from tests.spark_support import SparkProcess

pytestmark = pytest.mark.usefixtures("serving")
CONSUMERS = ("bridge", "spark-endpoint", "spark-inprocess")


def poison() -> dict[str, tuple[bytes, dict[str, bytes], str]]:
    """10 records that can never be classified -> (value, headers, DLQ error_class)."""
    good = jpeg(64, 64, seed=1)
    return {
        "p-not-an-image": (b"this is not an image" * 20, {"content-type": b"image/jpeg"}, "not_an_image"),
        "p-truncated": (good[: len(good) // 2], {"content-type": b"image/jpeg"}, "truncated"),
        "p-bomb": (png_bomb(), {"content-type": b"image/png"}, "too_many_pixels"),
        "p-svg": (b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg"/>', {}, "not_an_image"),
        "p-empty": (b"", {"content-type": b"image/jpeg"}, "empty"),
        "p-envelope": (b'{"image_b64": 42}', {"content-type": b"application/json"}, "invalid_envelope"),
        "p-base64": (b'{"image_b64": "%%%%"}', {}, "bad_base64"),
        "p-type": (good, {"content-type": b"text/html"}, "unsupported_content_type"),
        "p-metadata": (good, {"metadata": b"{oops"}, "invalid_metadata"),
        "p-model": (good, {"model": b"no_such_model"}, "unknown_model"),
    }


def start_consumer(kind: str, topics: Topics, kafka: str, serving: str, checkpoint: Path,  # noqa: F811
                   **env: str) -> BridgeProcess | SparkProcess:
    if kind == "bridge":
        return BridgeProcess(topics, kafka, serving, **env).start()
    return SparkProcess(topics, kafka, serving, checkpoint, kind.removeprefix("spark-"), **env).start()


@pytest.mark.parametrize("kind", CONSUMERS)
def test_the_contract_check_passes_against_the_bridge_and_both_spark_modes(
        kind: str, kafka: str, topics: Topics, serving: str, tmp_path: Path) -> None:  # noqa: F811
    bad = poison()
    producer = Producer({"bootstrap.servers": kafka, "message.max.bytes": MAX_BYTES})
    expected: set[str] = set()
    for i in range(200):
        image = jpeg(72, 72, seed=100 + i)
        if i % 4 == 0:  # every fourth as the JSON envelope
            producer.produce(topics.input, key=f"g-{i}".encode(), value=json.dumps(
                {"id": f"g-{i}", "image_b64": base64.b64encode(image).decode(), "metadata": {"n": i}}).encode(),
                headers={"content-type": b"application/json"})
        else:
            producer.produce(topics.input, key=f"g-{i}".encode(), value=image,
                             headers={"content-type": b"image/jpeg", "metadata": json.dumps({"n": i}).encode()})
        expected.add(f"g-{i}")
        if i % 20 == 10:  # one poison record after every 20 good ones, so batches mix them
            name = list(bad)[i // 20]
            value, headers, _ = bad[name]
            producer.produce(topics.input, key=name.encode(), value=value, headers=headers)
            expected.add(name)
    assert producer.flush(60) == 0
    assert len(expected) == 210

    consumer = start_consumer(kind, topics, kafka, serving, tmp_path / "checkpoint")
    try:
        reader = Consumer({"bootstrap.servers": kafka, "group.id": f"{topics.group}-contract",
                           "auto.offset.reset": "earliest", "max.partition.fetch.bytes": MAX_BYTES})
        reader.subscribe([topics.output, topics.dlq, topics.review])
        predictions: dict[str, list[dict]] = defaultdict(list)
        reviews: dict[str, bytes] = {}
        dead: dict[str, dict[str, str]] = {}
        dead_values: dict[str, bytes] = {}
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and set(predictions) | set(dead) != expected:
            msg = reader.poll(0.5)
            if msg is None or msg.error():
                continue
            key = msg.key().decode()
            if msg.topic() == topics.dlq:
                dead[key] = {k: v.decode() for k, v in msg.headers() or []}
                dead_values[key] = msg.value()
            elif msg.topic() == topics.review:
                reviews[key] = msg.value()
            else:
                predictions[key].append(json.loads(msg.value()))
        time.sleep(2)  # review copies follow their predictions
        for msg in reader.consume(500, 2):
            if not msg.error() and msg.topic() == topics.review:
                reviews[msg.key().decode()] = msg.value()
        reader.close()
    finally:
        consumer.stop_quietly()

    assert set(predictions) | set(dead) == expected, f"lost: {sorted(expected - set(predictions) - set(dead))}"
    assert set(predictions) == {e for e in expected if e.startswith("g-")}
    producer_name = "bridge" if kind == "bridge" else "spark"
    for image_id, docs in predictions.items():
        doc = docs[0]
        check_prediction(doc, "mobilenet_v2")
        assert doc["id"] == image_id and doc["metadata"] == {"n": int(image_id[2:])}
        assert doc["producer"] == producer_name and doc["source"]["topic"] == topics.input
        if doc["decision"] == "review":
            assert json.loads(reviews[image_id]) == doc  # the review copy is the prediction itself
    assert set(reviews) == {i for i, docs in predictions.items() if docs[0]["decision"] == "review"}
    for name, (value, _headers, reason) in bad.items():
        headers = dead[name]
        assert headers["error_class"] == reason, (name, headers)
        assert headers["producer"] == producer_name and headers["source_topic"] == topics.input
        assert dead_values[name] == value  # the original record, unchanged
    for doc in (d[0] for d in predictions.values()):
        jsonschema.validate(doc, schema("image_predictions"))


def output_count(kafka: str, topic: str) -> int:  # noqa: F811
    c = Consumer({"bootstrap.servers": kafka, "group.id": "watermarks"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


@pytest.mark.parametrize("mode", ["endpoint", "inprocess"])
def test_sigkill_of_the_driver_mid_stream_then_restart_loses_nothing(
        mode: str, kafka: str, topics: Topics, serving: str, tmp_path: Path) -> None:  # noqa: F811
    n, per_batch = 400, 20
    producer = Producer({"bootstrap.servers": kafka, "enable.idempotence": True, "acks": "all"})
    for i in range(n):
        producer.produce(topics.input, key=f"k-{i}".encode(), value=jpeg(96, 96, seed=i),
                         headers={"content-type": b"image/jpeg"})
    producer.produce(topics.input, key=b"k-poison", value=b"not an image" * 30)
    assert producer.flush(60) == 0
    expected = {f"k-{i}" for i in range(n)} | {"k-poison"}

    checkpoint = tmp_path / "checkpoint"
    env = {"STREAMING_MAX_OFFSETS_PER_TRIGGER": str(per_batch)}
    spark = SparkProcess(topics, kafka, serving, checkpoint, mode, **env).start()
    try:
        wait_for(lambda: output_count(kafka, topics.output) >= 3 * per_batch, 180, "the first outputs")
        spark.kill()
        before = output_count(kafka, topics.output)
        assert before < n, "everything was done before the kill: the test proves nothing"
        spark.start()
        out = collect(kafka, topics, expected, timeout_s=300)
    finally:
        spark.stop_quietly()
    print(out.report(expected, f"spark {mode}, SIGKILL after {before} outputs"))
    assert out.seen() == expected, out.report(expected, "after restart")
    assert out.dlq["k-poison"][0]["error_class"] == "not_an_image"
    for docs in out.predictions.values():
        check_prediction(docs[0], "mobilenet_v2")
    # The restart resumed from the checkpoint: only the micro-batches in flight at the kill ran twice.
    assert out.duplicates() <= 2 * per_batch, out.report(expected, "after restart")
    repeats = Counter(len(v) for v in out.predictions.values())
    assert set(repeats) <= {1, 2}, repeats
