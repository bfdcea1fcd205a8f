"""kafka-python (the reference system's client, pinned in pyproject.toml) against the real bridge, broker and
TorchServe: its KafkaProducer feeds both record forms of the contract, its KafkaConsumer reads the
predictions (checked against bridge/schema/) and the dead letters back; and bridge/README.md's
kafka-python example runs exactly as written."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import warnings
from collections import defaultdict
from pathlib import Path

import pytest

from tests.image_factory import jpeg, png
from tests.kafka_support import (
    MAX_BYTES,
    ROOT,
    BridgeProcess,
    Topics,
    check_prediction,
    kafka,  # noqa: F401  (fixture)
    topics,  # noqa: F401  (fixture)
)

with warnings.catch_warnings():  # kafka-python 3.0.12 loads its protocol schemas with the deprecated
    warnings.simplefilter("ignore", DeprecationWarning)  # importlib.resources.read_text/open_text (~100 lines)
    from kafka import KafkaConsumer, KafkaProducer
    from kafka import errors as kafka_errors

pytestmark = pytest.mark.usefixtures("serving")

README = ROOT / "bridge" / "README.md"
EXAMPLE_MARKER = "<!-- kafka-python example:"


def readme_example() -> str:
    """The ```python block that follows the kafka-python example marker in bridge/README.md."""
    _, marker, rest = README.read_text().partition(EXAMPLE_MARKER)
    assert marker, f"{README}: no {EXAMPLE_MARKER!r}"
    fence = "```python\n"
    return rest[rest.index(fence) + len(fence):].split("```", 1)[0]


def test_readme_kafka_python_example_runs_as_written(kafka: str, topics: Topics, serving: str,  # noqa: F811
                                                     tmp_path: Path) -> None:
    example = tmp_path / "example.py"
    example.write_text(readme_example())
    good, bad = tmp_path / "cat.jpg", tmp_path / "broken.png"
    good.write_bytes(jpeg(96, 72, seed=21))
    bad.write_bytes(b"\x89PNG but not really")
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": kafka, "KAFKA_INPUT_TOPIC": topics.input,
           "KAFKA_OUTPUT_TOPIC": topics.output, "KAFKA_DLQ_TOPIC": topics.dlq}
    earlier = KafkaProducer(bootstrap_servers=kafka)  # older dead letters, one keyless, one not UTF-8
    for key in (None, b"\xff\xfe"):
        earlier.send(topics.dlq, key=key, value=b"older", headers=[("error_class", b"empty")]).get(timeout=30)
    earlier.close()
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        run = subprocess.run([sys.executable, str(example), str(good), str(bad)], env=env, cwd=tmp_path,
                             capture_output=True, text=True, timeout=180)
    finally:
        bridge.stop_quietly()
    assert run.returncode == 0, run.stderr[-3000:]
    ok, dead = {}, {}
    for line in run.stdout.splitlines():
        kind, image_id, rest = line.split(" ", 2)
        (ok if kind == "OK" else dead)[image_id] = rest
    assert set(ok) == {"cat.jpg", "cat.jpg.json"} and set(dead) == {"broken.png", "broken.png.json"}, run.stdout
    for image_id, value in ok.items():
        doc = json.loads(value)
        check_prediction(doc, "mobilenet_v2")
        assert doc["id"] == image_id and doc["metadata"] == {"file": "cat.jpg"}
        assert doc["source"]["topic"] == topics.input
    assert json.loads(ok["cat.jpg"])["content_type"] == "image/jpeg"
    assert dead == {"broken.png": "not_an_image", "broken.png.json": "not_an_image"}


def test_kafka_python_producer_and_consumer_speak_the_bridge_contract(kafka: str, topics: Topics,  # noqa: F811
                                                                     serving: str) -> None:
    """Both record forms, keyed and keyless, a repeated header, gzip batches, >1 MiB records; every outcome
    read back with KafkaConsumer and tied to the input record's partition and offset."""
    envelope = {"id": "ignored: the key wins", "image_b64": base64.b64encode(png(64, 64, seed=2)).decode(),
                "content_type": "image/png", "metadata": {"via": "envelope"}, "model": "resnet50"}
    keyless = {"id": "kp-envelope-keyless", "image_b64": base64.b64encode(jpeg(64, 48, seed=3)).decode()}
    blob = os.urandom(1536 * 1024)  # above kafka-python's 1 MiB defaults (max_request_size, fetch sizes)
    # key -> (value, headers, model the prediction must come from | None for the DLQ reason)
    good: dict[bytes | None, tuple[bytes, list[tuple[str, bytes]], str]] = {
        b"kp-raw": (jpeg(80, 60, seed=1), [("content-type", b"image/jpeg"), ("metadata", b'{"camera": "front"}'),
                                           ("model", b"resnet50")], "resnet50"),
        b"kp-raw-untyped": (png(48, 48, seed=4), [], "mobilenet_v2"),
        b"kp-envelope": (json.dumps(envelope).encode(), [("content-type", b"application/json")], "resnet50"),
        b"kp-repeated-header": (jpeg(40, 40, seed=5), [("model", b"resnet50"), ("model", b"mobilenet_v2")],
                                "mobilenet_v2"),  # the last of a repeated header wins
    }
    poison = {
        b"kp-not-an-image": (b"hello, not a jpeg", [("content-type", b"image/jpeg"), ("metadata", b'{"n": 1}')],
                             "not_an_image"),
        b"kp-unknown-model": (jpeg(40, 40, seed=6), [("model", b"vgg16")], "unknown_model"),
        b"kp-big-blob": (blob, [("content-type", b"image/jpeg")], "not_an_image"),
    }
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        small = KafkaProducer(bootstrap_servers=kafka)
        assert small.config["api_version"] >= (4, 0), small.config["api_version"]  # negotiated with Kafka 4.x
        with pytest.raises(TypeError):  # a dict, as confluent-kafka takes, is refused: list of (str, bytes)
            small.send(topics.input, key=b"x", value=b"x", headers={"content-type": b"image/jpeg"})
        with pytest.raises(kafka_errors.MessageSizeTooLargeError):  # default max_request_size: 1 MiB
            small.send(topics.input, key=b"x", value=blob).get(timeout=30)
        small.close()

        producer = KafkaProducer(bootstrap_servers=kafka, max_request_size=MAX_BYTES, compression_type="gzip",
                                 linger_ms=5)
        futures = {key: producer.send(topics.input, key=key, value=value, headers=headers)
                   for key, (value, headers, _) in {**good, **poison}.items()}
        keyless_futures = {
            "envelope": producer.send(topics.input, value=json.dumps(keyless).encode()),  # untyped, starts with {
            "raw": producer.send(topics.input, value=jpeg(56, 56, seed=7), headers=[("content-type", b"image/jpeg")]),
        }
        sent = {key.decode(): f.get(timeout=30) for key, f in futures.items()}
        raw_md = keyless_futures["raw"].get(timeout=30)
        keyless_md = keyless_futures["envelope"].get(timeout=30)
        producer.close()
        raw_id = f"{topics.input}-{raw_md.partition}-{raw_md.offset}"
        sent[keyless["id"]] = keyless_md
        sent[raw_id] = raw_md
        expected_models = {**{k.decode(): m for k, (_, _, m) in good.items()},
                           keyless["id"]: "mobilenet_v2", raw_id: "mobilenet_v2"}

        consumer = KafkaConsumer(topics.output, topics.dlq, bootstrap_servers=kafka,
                                 group_id=f"{topics.group}-kafka-python", auto_offset_reset="earliest",
                                 enable_auto_commit=False)
        got: dict[str, list] = defaultdict(list)
        expected = set(expected_models) | {k.decode() for k in poison}
        deadline = time.monotonic() + 120
        while not expected <= got.keys() and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    got[record.key.decode()].append(record)
        consumer.close()
    finally:
        bridge.stop_quietly()
    assert expected <= got.keys(), f"missing {sorted(expected - got.keys())}: {bridge.tail()}"
    assert got.keys() == expected, sorted(got.keys() - expected)

    for image_id, model in expected_models.items():
        record = got[image_id][0]
        assert record.topic == topics.output, (image_id, record.headers)
        headers = dict(record.headers)
        assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in record.headers)
        assert headers == {"content-type": b"application/json", "id": image_id.encode()}
        doc = json.loads(record.value)
        check_prediction(doc, model)
        md = sent[image_id]
        assert doc["id"] == image_id
        assert doc["source"] == {"topic": topics.input, "partition": md.partition, "offset": md.offset}
    docs = {i: json.loads(got[i][0].value) for i in expected_models}
    assert docs["kp-raw"]["metadata"] == {"camera": "front"} and docs["kp-raw"]["content_type"] == "image/jpeg"
    assert docs["kp-raw-untyped"]["metadata"] == {} and docs["kp-raw-untyped"]["content_type"] is None
    assert docs["kp-envelope"]["metadata"] == {"via": "envelope"}
    assert docs["kp-envelope"]["content_type"] == "image/png"
    assert docs[raw_id]["content_type"] == "image/jpeg"

    for key, (value, headers, reason) in poison.items():
        image_id = key.decode()
        record = got[image_id][0]
        assert record.topic == topics.dlq and record.value == value  # the original record, whole
        dlq = {k: v.decode() for k, v in record.headers}
        assert dlq["error_class"] == reason and dlq["error"], dlq
        md = sent[image_id]
        assert (dlq["source_topic"], int(dlq["source_partition"]), int(dlq["source_offset"])) == (
            topics.input, md.partition, md.offset)
        assert int(dlq["source_timestamp"]) == md.timestamp
        kept = [(k, v) for k, v in headers if k != "model"]  # the DLQ's own `model` header replaces the input's
        assert record.headers[:len(kept)] == kept
