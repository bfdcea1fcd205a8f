"""Units of the Spark consumer that need no Spark: settings, Kafka option mapping, batching, the shared failure
rules, and the DLQ record shapes (the end-to-end behaviour is tests/test_spark_streaming.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from pathlib import Path

import pytest

from bridge.contract import DLQ_HEADERS
from bridge.outcome import BOUNDED_VALUE_TYPE, Blame, blame
from streaming.config import StreamingSettings
from streaming.endpoint import batches
from streaming.process import KafkaRecord, Pipeline, Work
from streaming.query import kafka_common, sink_options, source_options


def test_blame_charges_the_image_the_handler_named_or_finds_it() -> None:
    assert blame(3, True, None) == Blame((0, 1, 2), ())  # transient: everyone's
    assert blame(3, True, 1) == Blame((0, 1, 2), ())
    assert blame(3, False, 1) == Blame((1,), (0, 2))  # the named image; the others resent at once
    assert blame(1, False, None) == Blame((0,), ())
    assert blame(3, False, None) == Blame((), (0, 1, 2), solo=True)  # unnamed: one by one
    assert blame(3, False, 7) == Blame((), (0, 1, 2), solo=True)  # an index outside the request is no name


def test_settings_defaults_and_refusals() -> None:
    s = StreamingSettings.from_env({})
    assert s.inference == "endpoint" and s.master == "local[*]" and s.max_offsets_per_trigger == 256
    assert Path(s.checkpoint_dir).is_absolute() and s.checkpoint_dir.endswith(".run/spark/checkpoint")
    assert StreamingSettings.from_env({"STREAMING_CHECKPOINT_DIR": "s3a://b/ckpt"}).checkpoint_dir == "s3a://b/ckpt"
    with pytest.raises(ValueError, match="STREAMING_INFERENCE"):
        StreamingSettings.from_env({"STREAMING_INFERENCE": "gpu"})
    with pytest.raises(ValueError, match="STREAMING_STARTING_OFFSETS"):
        StreamingSettings.from_env({"STREAMING_STARTING_OFFSETS": "yesterday"})
    with pytest.raises(ValueError, match="JSON object"):
        StreamingSettings.from_env({"STREAMING_KAFKA_OPTIONS": "[1]"})


def test_kafka_options_carry_the_bridge_guarantees_and_security(tmp_path: Path) -> None:
    cert, key = tmp_path / "c.pem", tmp_path / "k.pem"
    cert.write_text("CERT")
    key.write_text("KEY")
    s = StreamingSettings.from_env({
        "KAFKA_BOOTSTRAP_SERVERS": "k:9093", "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512", "KAFKA_SASL_USERNAME": "mod", "KAFKA_SASL_PASSWORD": 'p"w\\x',
        "KAFKA_SSL_CAFILE": "/ca.pem", "KAFKA_SSL_CERTFILE": str(cert), "KAFKA_SSL_KEYFILE": str(key),
        "STREAMING_KAFKA_OPTIONS": json.dumps({"client.dns.lookup": "use_all_dns_ips"}),
    })
    common = kafka_common(s)
    assert common["kafka.bootstrap.servers"] == "k:9093" and common["kafka.security.protocol"] == "SASL_SSL"
    assert common["kafka.sasl.jaas.config"] == ('org.apache.kafka.common.security.scram.ScramLoginModule required '
                                                'username="mod" password="p\\"w\\\\x";')
    assert common["kafka.ssl.truststore.type"] == "PEM" and common["kafka.ssl.truststore.location"] == "/ca.pem"
    assert common["kafka.ssl.keystore.certificate.chain"] == "CERT" and common["kafka.ssl.keystore.key"] == "KEY"
    assert common["kafka.client.dns.lookup"] == "use_all_dns_ips"
    sink = sink_options(s)
    assert sink["kafka.acks"] == "all" and sink["kafka.enable.idempotence"] == "true"
    assert int(sink["kafka.max.request.size"]) > s.bridge.dlq_max_message_bytes  # a full DLQ copy fits
    source = source_options(s)
    assert source["subscribe"] == "image_data" and source["includeHeaders"] == "true"
    assert source["failOnDataLoss"] == "true" and source["maxOffsetsPerTrigger"] == "256"


def _work(size: int) -> Work:
    w = Work(KafkaRecord("t", 0, 0, b"k", b"x" * size, None, None), 0.0)
    from bridge.contract import ImageRecord

    w.record = ImageRecord("k", b"x" * size, "image/jpeg")
    return w


def test_batches_respect_count_and_bytes() -> None:
    works = [_work(n) for n in (10, 10, 10, 10, 100, 10)]
    assert [len(b) for b in batches(works, 3, 1000)] == [3, 3]
    assert [len(b) for b in batches(works, 8, 50)] == [4, 1, 1]  # the large one alone


class NoInference:
    models = ("mobilenet_v2",)

    async def classify(self, model: str, works: Sequence[Work]) -> None:
        raise AssertionError("records the contract refuses are never sent")


def test_a_refused_record_too_large_for_the_dlq_is_dead_lettered_as_metadata() -> None:
    s = StreamingSettings.from_env({"KAFKA_DLQ_MAX_MESSAGE_BYTES": "2048"})
    pipeline = Pipeline(s.bridge, NoInference())
    big = KafkaRecord("image_data", 2, 41, b"big", b'{"image_b64": 1, "pad": "' + b"x" * 5000 + b'"}',
                      [("content-type", b"application/json")], 1_700_000_000_000)
    small = KafkaRecord("image_data", 2, 42, b"small", b"GIF89a", [("content-type", b"text/html")], None)
    out = asyncio.run(pipeline.run([big, small]))
    assert [o.topic for o in out] == ["image_data.dlq", "image_data.dlq"]
    bounded, full = out
    headers = dict(bounded.headers)
    assert headers["content-type"] == BOUNDED_VALUE_TYPE.encode() and headers["dlq_payload"] == b"omitted"
    assert headers["error_class"] == b"invalid_envelope" and headers["producer"] == b"spark"
    doc = json.loads(bounded.value)
    assert doc["source"] == {"topic": "image_data", "partition": 2, "offset": 41} and doc["value_size"] > 5000
    assert full.value == b"GIF89a" and full.key == b"small"
    names = [k for k, _ in full.headers]
    assert names[0] == "content-type" and set(DLQ_HEADERS) <= set(names)
    assert dict(full.headers)["error_class"] == b"unsupported_content_type"


def test_the_readme_documents_every_setting_with_its_default() -> None:
    from streaming.config import DEFAULTS

    readme = (Path(__file__).resolve().parent.parent / "streaming" / "README.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2].strip() for line in readme.splitlines()
            if line.startswith("| `STREAMING_")}
    documented = {name.strip("` ") for key in rows for name in key.split("/")}
    assert documented == set(DEFAULTS)
    for key, default in rows.items():
        names = [n.strip("` ") for n in key.split("/")]
        if len(names) == 1:
            assert default.strip("`") == DEFAULTS[names[0]][0], (key, default)
