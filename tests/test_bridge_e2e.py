"""End to end on the real broker and the real TorchServe stack: both models and protocols, poison records
to the DLQ while good ones flow, ≥10 MB records, interop with clients not written here (Debian's kcat, and
confluent-kafka used directly), graceful SIGTERM with committed offsets, and the broker's own topic setup."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from handlers.stack import url
from tests.conftest import StackControl
from tests.image_factory import jpeg, png, refused_variants
from tests.kafka_support import (
    KAFKA_SH,
    MAX_BYTES,
    BridgeProcess,
    Topics,
    check_prediction,
    collect,
    committed_total,
    kafka,  # noqa: F401  (fixture)
    produce,
    raw_record,
    topics,  # noqa: F401  (fixture)
    wait_for,
)

pytestmark = pytest.mark.usefixtures("serving")


def test_the_bridge_works_unchanged_against_the_kserve_runtime(kafka: str, topics: Topics,  # noqa: F811
                                                               stack_control: StackControl) -> None:
    """Same bridge, same settings as against the gateway: v2 requests, model readiness, a poison record to the DLQ."""
    runtime = stack_control.ensure("kserve")
    ids = {f"k-{n}" for n in range(10)}
    records = [raw_record(f"k-{n}", jpeg(160, 120, seed=n), {"n": n}) for n in range(10)]
    records.append(raw_record("k-poison", b"not an image at all"))
    bridge = BridgeProcess(topics, kafka, runtime.base_url, INFERENCE_MODEL="resnet50").start()
    try:
        produce(kafka, topics.input, records)
        out = collect(kafka, topics, ids | {"k-poison"}, timeout_s=120)
        assert set(out.predictions) == ids, out.report(ids, "kserve")
        for docs in out.predictions.values():
            check_prediction(docs[0], "resnet50")
        assert out.dlq["k-poison"][0]["error_class"] == "not_an_image"
        assert bridge.terminate() == 0
    finally:
        bridge.stop_quietly()


def test_broker_topics_are_created_idempotently(kafka: str) -> None:  # noqa: F811
    subprocess.run([str(KAFKA_SH), "topics"], check=True, capture_output=True)  # second run: nothing to do
    meta = AdminClient({"bootstrap.servers": kafka}).list_topics(timeout=10).topics
    assert len(meta["image_data"].partitions) >= 3
    assert {"image_predictions", "image_data.dlq"} <= set(meta)


@pytest.mark.parametrize(("model", "protocol"), [("mobilenet_v2", "v2"), ("resnet50", "v1")])
def test_both_models_end_to_end(kafka: str, topics: Topics, serving: str, model: str, protocol: str) -> None:  # noqa: F811
    ids = {f"{model}-{n}" for n in range(12)}
    records = [raw_record(f"{model}-{n}", jpeg(96, 96, seed=n), {"n": n}) for n in range(12)]
    bridge = BridgeProcess(topics, kafka, serving, INFERENCE_MODEL=model, INFERENCE_PROTOCOL=protocol).start()
    try:
        produce(kafka, topics.input, records)
        out = collect(kafka, topics, ids, timeout_s=180)
        assert out.seen() == ids and not out.dlq, out.report(ids, model)
        for image_id, docs in out.predictions.items():
            check_prediction(docs[0], model)
            assert docs[0]["id"] == image_id and docs[0]["metadata"] == {"n": int(image_id.rsplit("-", 1)[1])}
        assert bridge.terminate() == 0
    finally:
        bridge.stop_quietly()
    assert committed_total(kafka, topics) == len(ids)  # SIGTERM committed everything finished


def test_poison_records_go_to_dlq_with_reasons_while_good_ones_flow(kafka: str, topics: Topics,  # noqa: F811
                                                                    serving: str) -> None:
    good = [raw_record(f"good-{i}", jpeg(80, 80, seed=i)) for i in range(16)]
    envelope_ok = ("good-envelope", json.dumps({"id": "ignored", "image_b64": base64.b64encode(png(64, 64)).decode(),
                                                "metadata": {"via": "envelope"}}).encode(),
                   [("content-type", b"application/json")])
    poison = {
        # rejected by the handler (4xx naming the image) ...
        **{f"bad-{name}": (payload, [("content-type", b"image/jpeg")], reason)
           for name, (payload, reason) in refused_variants().items()},
        # ... or by the bridge's contract before any request
        "bad-envelope": (b'{"image_b64": 42}', [("content-type", b"application/json")], "invalid_envelope"),
        "bad-base64": (b'{"image_b64": "%%%%"}', [], "bad_base64"),
        "bad-type": (b"GIF89a", [("content-type", b"text/html")], "unsupported_content_type"),
        "bad-metadata": (jpeg(40, 40), [("metadata", b"{oops")], "invalid_metadata"),
    }
    records = [*good, envelope_ok]
    # Poison interleaved with good images, so micro-batches mix them.
    for n, (image_id, (value, headers, _)) in enumerate(poison.items()):
        records.insert(2 * n + 1, (image_id, value, headers))
    bridge = BridgeProcess(topics, kafka, serving, BRIDGE_MAX_BATCH="8").start()
    try:
        produce(kafka, topics.input, records)
        expected = {r[0] for r in records}
        out = collect(kafka, topics, expected, timeout_s=180)
        assert out.seen() == expected, out.report(expected, "poison")
        assert set(out.predictions) == {r[0] for r in good} | {"good-envelope"}
        assert out.predictions["good-envelope"][0]["metadata"] == {"via": "envelope"}
        for image_id, (value, _headers, reason) in poison.items():
            h = out.dlq[image_id][0]
            assert h["error_class"] == reason, (image_id, h)
            assert h["error"] and h["source_topic"] == topics.input and int(h["source_offset"]) >= 0
            assert out.dlq_values[image_id] == value  # original record, unchanged
        wait_for(lambda: bridge.metric("bridge_dlq_total") == len(poison), 10, "DLQ metric")
        assert bridge.metric("bridge_messages_consumed_total") >= len(records)
    finally:
        bridge.stop_quietly()


def test_large_records_round_trip_through_broker_and_bridge(kafka: str, topics: Topics,  # noqa: F811
                                                           serving: str) -> None:
    """≥10 MB on both sides: an 8 MiB payload as a base64 envelope is an ~11 MB record."""
    blob = os.urandom(8 * 1024 * 1024)
    value = json.dumps({"image_b64": base64.b64encode(blob).decode()}).encode()
    assert 10_000_000 < len(value) < MAX_BYTES
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        produce(kafka, topics.input, [("huge", value, [("content-type", b"application/json")]),
                                      raw_record("small", jpeg(64, 64))])
        out = collect(kafka, topics, {"huge", "small"}, timeout_s=180)
        assert "small" in out.predictions
        assert out.dlq["huge"][0]["error_class"] in ("not_an_image", "too_large")
        assert out.dlq_values["huge"] == value
    finally:
        bridge.stop_quietly()


def test_interop_with_a_plain_confluent_kafka_producer_and_consumer(kafka: str, topics: Topics,  # noqa: F811
                                                                    serving: str) -> None:
    """A producer and consumer written only from the documented contract (no bridge code)."""
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        p = Producer({"bootstrap.servers": kafka})
        p.produce(topics.input, key=b"interop-raw", value=jpeg(64, 64, seed=3),
                  headers={"content-type": b"image/jpeg", "metadata": b'{"camera": "front"}'})
        p.produce(topics.input, key=b"interop-json", value=json.dumps(
            {"id": "interop-json", "image_b64": base64.b64encode(jpeg(64, 64, seed=4)).decode(),
             "content_type": "image/jpeg", "metadata": {"camera": "back"}}).encode())
        assert p.flush(30) == 0
        c = Consumer({"bootstrap.servers": kafka, "group.id": f"{topics.group}-interop",
                      "auto.offset.reset": "earliest"})
        c.subscribe([topics.output])
        got: dict[str, dict] = {}
        for _ in range(240):
            msg = c.poll(0.5)
            if msg is not None and not msg.error():
                got[msg.key().decode()] = json.loads(msg.value())
            if len(got) == 2:
                break
        c.close()
        assert got["interop-raw"]["metadata"] == {"camera": "front"}
        assert got["interop-json"]["metadata"] == {"camera": "back"}
        for doc in got.values():
            check_prediction(doc, "mobilenet_v2")
    finally:
        bridge.stop_quietly()


def test_interop_with_kcat_producer_and_consumer(kafka: str, topics: Topics, serving: str,  # noqa: F811
                                                 tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Debian's kcat (librdkafka's CLI, `make kcat`) produces raw files with headers and reads the predictions."""
    kcat = shutil.which("kcat")
    assert kcat, "kcat missing: `make kcat` installs Debian's package"
    good, bad = tmp_path / "cat.jpg", tmp_path / "notes.txt"
    good.write_bytes(jpeg(96, 64, seed=11))
    bad.write_text("not an image at all")
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        for key, path, ctype in (("kcat-good", good, "image/jpeg"), ("kcat-bad", bad, "image/jpeg")):
            subprocess.run([kcat, "-P", "-b", kafka, "-t", topics.input, "-k", key, "-H", f"content-type={ctype}",
                            "-H", 'metadata={"via": "kcat"}', str(path)], check=True, timeout=60)
        out = {}
        for topic in (topics.output, topics.dlq):
            res = subprocess.run([kcat, "-C", "-b", kafka, "-t", topic, "-o", "beginning", "-c", "1", "-J"],
                                 check=True, capture_output=True, text=True, timeout=120)
            out[topic] = json.loads(res.stdout.splitlines()[0])
        pred = out[topics.output]
        assert pred["key"] == "kcat-good"
        doc = json.loads(pred["payload"])
        check_prediction(doc, "mobilenet_v2")
        assert doc["id"] == "kcat-good" and doc["metadata"] == {"via": "kcat"}
        dead = out[topics.dlq]
        assert dead["key"] == "kcat-bad" and dead["payload"] == "not an image at all"
        headers = dict(zip(dead["headers"][::2], dead["headers"][1::2], strict=True))
        assert headers["error_class"] == "not_an_image", headers
        assert headers["content-type"] == "image/jpeg"
    finally:
        bridge.stop_quietly()


def test_bridge_on_a_bare_torchserve_as_the_chart_deploys_it(kafka: str, topics: Topics) -> None:  # noqa: F811
    """On the cluster the bridge talks to TorchServe itself (no gateway: /v2/models/{m}/ready is a 404
    there), so the chart sets INFERENCE_READY_PATH=/ping. Same here, against TorchServe's own port."""
    bare = url("TORCHSERVE_INFERENCE_PORT")
    assert httpx.get(f"{bare}/v2/models/mobilenet_v2/ready", timeout=10).status_code == 404  # why /ping
    bridge = BridgeProcess(topics, kafka, bare, INFERENCE_READY_PATH="/ping").start()
    try:
        ids = {f"bare-{i}" for i in range(6)}
        produce(kafka, topics.input, [raw_record(i, jpeg(80, 60, seed=n)) for n, i in enumerate(sorted(ids))])
        out = collect(kafka, topics, ids, timeout_s=120)
        assert out.seen() == ids and not out.dlq, out.report(ids, "bare")
        for doc in out.predictions.values():
            check_prediction(doc[0], "mobilenet_v2")
    finally:
        bridge.stop_quietly()
