"""Unit tests of the bridge's pure parts: offset tracking, the message contract, failure classification,
backoff and configuration. (Broker and TorchServe behaviour is tested in test_bridge_e2e/test_bridge_chaos.)"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import jsonschema
import pytest

from bridge.app import Bridge, backoff
from bridge.config import Config, security_settings
from bridge.contract import ContractError, decision_of, dlq_headers, parse_record, prediction_value, schema
from bridge.inference import classify
from bridge.offsets import OffsetTracker
from handlers.envelopes import Prediction
from handlers.model_io import CATEGORIES, DECISIONS
from tests.image_factory import jpeg

TP = ("image_data", 0)


# ---- offsets -----------------------------------------------------------------------------------
def test_commit_never_passes_an_unfinished_earlier_offset() -> None:
    t = OffsetTracker()
    t.assign([TP])
    epoch = t.add(TP, 10)
    assert epoch is not None
    for off in (11, 12, 13):
        t.add(TP, off)
    for off in (11, 12, 13):  # later records finish first
        assert t.done(TP, off, epoch)
    assert t.committable() == [("image_data", 0, 10)]  # still waiting for 10
    t.mark_committed(t.committable())
    assert t.committable() == []  # nothing new
    t.done(TP, 10, epoch)
    assert t.committable() == [("image_data", 0, 14)]  # one past the highest, all finished


def test_gaps_in_offsets_and_partitions_are_independent() -> None:
    t = OffsetTracker()
    t.assign([TP, ("image_data", 1)])
    e0 = t.add(TP, 5)
    e1 = t.add(("image_data", 1), 100)
    t.add(TP, 9)  # compaction / transaction markers leave gaps
    t.done(TP, 9, e0)
    t.done(("image_data", 1), 100, e1)
    assert sorted(t.committable()) == [("image_data", 0, 5), ("image_data", 1, 101)]
    t.done(TP, 5, e0)
    assert ("image_data", 0, 10) in t.committable()
    assert t.in_flight() == 0


def test_revoked_or_reassigned_partition_ignores_stale_work() -> None:
    t = OffsetTracker()
    t.assign([TP])
    old = t.add(TP, 1)
    assert old is not None
    t.revoke([TP])
    assert t.add(TP, 2) is None  # not ours any more
    assert not t.done(TP, 1, old)
    t.assign([TP])  # back again, new epoch
    new = t.add(TP, 7)
    assert new != old and not t.current(TP, old) and t.current(TP, new)
    assert not t.done(TP, 1, old)
    assert t.committable() == [("image_data", 0, 7)]


# ---- contract ----------------------------------------------------------------------------------
def test_raw_record_with_headers() -> None:
    img = jpeg(32, 32)
    rec = parse_record(b"img-1", img, [("content-type", b"image/jpeg"), ("metadata", b'{"user": 7}')], "fb")
    assert (rec.id, rec.image, rec.content_type, rec.metadata, rec.envelope) == (
        "img-1", img, "image/jpeg", {"user": 7}, False)


def test_raw_record_without_key_or_headers_gets_fallback_id() -> None:
    rec = parse_record(None, b"\xff\xd8\xff...", None, "image_data-3-42")
    assert rec.id == "image_data-3-42" and rec.metadata == {} and rec.content_type is None


def test_json_envelope_typed_and_untyped() -> None:
    img = jpeg(32, 32)
    body = {"id": "e-1", "image_b64": base64.b64encode(img).decode(), "content_type": "image/jpeg",
            "metadata": {"source": "upload"}}
    for headers in ([("content-type", b"application/json")], None):
        rec = parse_record(None, json.dumps(body).encode(), headers, "fb")
        assert (rec.id, rec.image, rec.metadata, rec.envelope) == ("e-1", img, {"source": "upload"}, True)
    # the record key wins over the envelope's id
    assert parse_record(b"key-id", json.dumps(body).encode(), None, "fb").id == "key-id"


@pytest.mark.parametrize(
    ("value", "headers", "reason"),
    [
        (b"", None, "empty"),
        (None, None, "empty"),
        (b"{not json", [("content-type", b"application/json")], "invalid_envelope"),
        (b'{"id": "x"}', None, "invalid_envelope"),  # no image_b64
        (b'{"image_b64": 5}', None, "invalid_envelope"),
        (b'{"image_b64": "@@@not-base64@@@"}', None, "bad_base64"),
        (b'{"image_b64": "AAAA", "metadata": [1]}', None, "invalid_envelope"),
        (b"\xff\xd8", [("content-type", b"text/plain")], "unsupported_content_type"),
        (b"\xff\xd8", [("metadata", b"not json")], "invalid_metadata"),
        (b"\xff\xd8", [("metadata", b"[1, 2]")], "invalid_metadata"),
    ],
)
def test_contract_violations_name_a_reason(value: bytes | None, headers: list | None, reason: str) -> None:
    with pytest.raises(ContractError) as err:
        parse_record(b"k", value, headers, "fb")
    assert err.value.reason == reason and err.value.message


def test_prediction_value_matches_the_published_schema() -> None:
    rec = parse_record(b"img-9", b"\xff\xd8", [("metadata", b'{"a": 1}')], "fb")
    value = prediction_value(rec, Prediction("harmful", 0.91, 0.5, "mobilenet_v2", "1.0"),
                             source=("image_data", 2, 17), received_at=1.7e9, produced_at=1.7e9 + 0.2,
                             inference_ms=120.5, batch_size=4, end_to_end_ms=300.25, attempts=1)
    doc = json.loads(value)
    jsonschema.validate(doc, schema("image_predictions"))
    assert doc["id"] == "img-9" and doc["metadata"] == {"a": 1} and doc["source"]["offset"] == 17
    assert doc["received_at"].endswith("Z")


def _record_of(pred: Prediction) -> dict:
    rec = parse_record(b"img-9", b"\xff\xd8", None, "fb")
    value = prediction_value(rec, pred, source=("image_data", 0, 1), received_at=1.7e9, produced_at=1.7e9,
                             inference_ms=1.0, batch_size=1, end_to_end_ms=2.0, attempts=1)
    doc = json.loads(value)
    jsonschema.validate(doc, schema("image_predictions"))
    return doc


def test_prediction_record_carries_decision_review_threshold_and_categories() -> None:
    """A current server's fields are copied as sent; categories only when the model has a category head."""
    cats = {"firearm": 0.8123456789, "blade": 0.1, "violence": 0.05, "fire_smoke": 0.0}
    doc = _record_of(Prediction("benign", 0.3, 0.5, "mobilenet_v2", "2.0", "review", 0.2, cats))
    assert (doc["decision"], doc["review_threshold"]) == ("review", 0.2)
    assert list(doc["categories"]) == list(CATEGORIES) and doc["categories"]["firearm"] == 0.812346
    no_head = _record_of(Prediction("harmful", 0.9, 0.5, "resnet50", "1.0", "block", 0.5))
    assert "categories" not in no_head and no_head["decision"] == "block"


@pytest.mark.parametrize(
    ("score", "threshold", "review_threshold", "expected"),
    [
        (0.91, 0.5, None, "block"),  # an older server: no band, the review threshold is the threshold
        (0.5, 0.5, None, "block"),  # at the threshold: harmful, as the label says
        (0.49, 0.5, None, "allow"),
        (0.3, 0.5, 0.2, "review"),  # a review threshold without a decision: the band is applied here
        (0.2, 0.5, 0.2, "review"),
        (0.19, 0.5, 0.2, "allow"),
    ],
)
def test_decision_derived_when_the_server_sends_none(score: float, threshold: float, review_threshold: float | None,
                                                     expected: str) -> None:
    """Every record has a decision: a server older than issue 19 sends none, so the bridge applies the handler's
    rule (handlers.model_io.decision) to the score; the label stays the server's."""
    label = "harmful" if score >= threshold else "benign"
    doc = _record_of(Prediction(label, score, threshold, "mobilenet_v2", "1.0", None, review_threshold))
    assert doc["decision"] == expected
    assert doc["review_threshold"] == (threshold if review_threshold is None else review_threshold)
    assert decision_of(Prediction(label, score, threshold, "m", "1", None, review_threshold)) == (
        expected, doc["review_threshold"])


def test_prediction_schema_documents_the_decision_fields() -> None:
    """decision and review_threshold are required (the bridge always writes them); categories are the handler's."""
    s = schema("image_predictions")
    assert {"decision", "review_threshold"} <= set(s["required"]) and "categories" not in s["required"]
    assert s["properties"]["decision"]["enum"] == list(DECISIONS)
    assert s["properties"]["categories"]["required"] == list(CATEGORIES)
    good = _record_of(Prediction("benign", 0.1, 0.5, "mobilenet_v2", "1.0", "allow", 0.05,
                                 dict.fromkeys(CATEGORIES, 0.5)))
    for broken in ({**good, "decision": "maybe"}, {k: v for k, v in good.items() if k != "decision"},
                   {**good, "categories": {**good["categories"], "firearm": 1.5}},
                   {**good, "categories": {**good["categories"], "drugs": 0.1}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(broken, s)


def test_review_topic_is_configurable_and_can_be_disabled() -> None:
    from bridge.topics import default_topics

    cfg = Config.from_env({})
    assert cfg.review_topic == "image_review"
    assert default_topics(cfg, 6) == {"image_data": 6, "image_predictions": 6, "image_review": 6, "image_data.dlq": 1}
    assert Config.from_env({"KAFKA_REVIEW_TOPIC": "mod.review"}).review_topic == "mod.review"
    off = Config.from_env({"KAFKA_REVIEW_TOPIC": ""})  # set but empty: no review copies, no topic
    assert off.review_topic == "" and "image_review" not in default_topics(off)


def test_dlq_headers_keep_the_original_and_say_why() -> None:
    h = dict(dlq_headers([("content-type", b"image/png"), ("trace", b"abc")], error="image 0: not an image",
                         error_class="not_an_image", status=400, attempts=1, model="resnet50",
                         source=("image_data", 1, 5), source_timestamp_ms=123, failed_at=1.7e9))
    assert h["content-type"] == b"image/png" and h["trace"] == b"abc"
    assert h["error_class"] == b"not_an_image" and h["error_status"] == b"400"
    assert (h["source_partition"], h["source_offset"], h["attempts"]) == (b"1", b"5", b"1")


# ---- failure classification and backoff -------------------------------------------------------------
@pytest.mark.parametrize(
    ("status", "body", "transient", "reason", "index"),
    [
        (400, b'{"error": "image 3: not an image", "reason": "not_an_image", "index": 3}', False, "not_an_image", 3),
        (413, b'{"error": "too big", "reason": "too_large", "index": 0}', False, "too_large", 0),
        (415, b'{"error": "x", "reason": "unsupported_content_type"}', False, "unsupported_content_type", None),
        (400, b"plain text", False, "http_400", None),
        (429, b"slow down", True, "http_429", None),
        (500, b'{"error": "worker died"}', True, "http_500", None),
        (503, b'{"error": "inference server unavailable"}', True, "http_503", None),
        (404, b'{"error": "model not found"}', True, "http_404", None),
        (408, b"", True, "http_408", None),
    ],
)
def test_classify_http_failures(status: int, body: bytes, transient: bool, reason: str, index: int | None) -> None:
    err = classify(status, body)
    assert (err.transient, err.reason, err.index, err.status) == (transient, reason, index, status)


def test_endpoint_down_only_for_unavailability() -> None:
    assert classify(503, b"").endpoint_down and classify(404, b"").endpoint_down
    assert not classify(500, b"").endpoint_down and not classify(429, b"").endpoint_down


def test_readiness_url_follows_protocol_unless_a_path_is_set() -> None:
    from bridge.inference import InferenceClient

    def ready(protocol: str, path: str = "") -> str:
        return InferenceClient("http://h:80/", "resnet50", protocol, 1, 1, path).ready_url

    assert ready("v2") == "http://h:80/v2/models/resnet50/ready"
    assert ready("v1") == "http://h:80/v1/models/resnet50"
    assert ready("v2", "/ping") == ready("v1", "ping") == "http://h:80/ping"


def test_backoff_is_exponential_capped_and_jittered() -> None:
    samples = [backoff(a, 0.5, 30) for a in range(1, 12) for _ in range(50)]
    assert all(0 <= s <= 30 for s in samples)
    assert max(backoff(1, 0.5, 30) for _ in range(200)) <= 0.5
    assert max(backoff(10, 0.5, 30) for _ in range(200)) > 5  # grew well past the base
    assert len({round(backoff(5, 0.5, 30), 6) for _ in range(20)}) > 1  # jitter


# ---- configuration -----------------------------------------------------------------------------------
def test_defaults_fit_the_local_stack() -> None:
    cfg = Config.from_env({})
    assert cfg.bootstrap_servers == "127.0.0.1:9092" and cfg.inference_url == "http://127.0.0.1:8080"
    assert (cfg.input_topic, cfg.output_topic, cfg.dlq_topic) == ("image_data", "image_predictions", "image_data.dlq")
    assert cfg.protocol == "v2" and cfg.model == "mobilenet_v2" and cfg.port == 8090
    p = cfg.producer_settings()
    assert p["enable.idempotence"] is True and p["acks"] == "all" and p["message.max.bytes"] == 16777216 + 65536
    c = cfg.consumer_settings()
    assert c["enable.auto.commit"] is False and c["max.partition.fetch.bytes"] >= 16777216


def test_security_settings_and_secret_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    env = {"KAFKA_SECURITY_PROTOCOL": "sasl_ssl", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
           "KAFKA_SASL_USERNAME": "bridge", "KAFKA_SASL_PASSWORD": "ignored", "KAFKA_SASL_PASSWORD_FILE": str(secret),
           "KAFKA_SSL_CAFILE": "/etc/ca.pem"}
    assert security_settings(env) == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                                      "sasl.username": "bridge", "sasl.password": "s3cret",
                                      "ssl.ca.location": "/etc/ca.pem"}
    with pytest.raises(ValueError):
        Config.from_env({"INFERENCE_PROTOCOL": "grpc"})


def test_every_setting_and_metric_is_documented() -> None:
    from pathlib import Path

    from bridge import metrics
    from bridge.config import DEFAULTS

    readme = (Path(__file__).resolve().parent.parent / "bridge" / "README.md").read_text()
    assert [name for name in DEFAULTS if f"`{name}`" not in readme] == []
    names = [m._name for m in vars(metrics).values() if hasattr(m, "_name") and hasattr(m, "_type")]
    assert names and [n for n in names if n not in readme] == []


# ---- retry-or-DLQ decision (bridge.outcome, shared with a future Spark consumer) ----------------------
from bridge.outcome import (  # noqa: E402
    Action,
    Failure,
    Kind,
    RetryPolicy,
    Stage,
    bounded_record,
    decide,
    kafka_error_kind,
    record_size,
)

POLICY = RetryPolicy(max_attempts=3, backoff_s=0.5, backoff_max_s=30)


@pytest.mark.parametrize(
    ("stage", "kind", "attempts", "action", "reason"),
    [
        (Stage.INFERENCE, Kind.PERMANENT, 1, Action.DLQ, "r"),
        (Stage.INFERENCE, Kind.TRANSIENT, 2, Action.RETRY, "r"),
        (Stage.INFERENCE, Kind.TRANSIENT, 3, Action.DLQ, "retries_exhausted"),
        (Stage.OUTPUT, Kind.PERMANENT, 1, Action.DLQ, "output_rejected"),
        (Stage.OUTPUT, Kind.TRANSIENT, 1, Action.RETRY, "r"),
        (Stage.OUTPUT, Kind.TRANSIENT, 3, Action.DLQ, "retries_exhausted"),
        (Stage.REVIEW, Kind.PERMANENT, 1, Action.DLQ, "output_rejected"),  # the review copy is never dropped
        (Stage.REVIEW, Kind.TRANSIENT, 2, Action.RETRY, "r"),
        (Stage.REVIEW, Kind.TRANSIENT, 3, Action.DLQ, "retries_exhausted"),
        (Stage.DLQ, Kind.PERMANENT, 1, Action.DLQ_BOUNDED, "r"),  # e.g. MSG_SIZE_TOO_LARGE: never retried
        (Stage.DLQ, Kind.TRANSIENT, 1, Action.RETRY, "r"),
        (Stage.DLQ, Kind.TRANSIENT, 3, Action.STALL, "r"),
        (Stage.DLQ_BOUNDED, Kind.PERMANENT, 1, Action.STALL, "r"),
        (Stage.DLQ_BOUNDED, Kind.TRANSIENT, 3, Action.STALL, "r"),
        (Stage.OUTPUT, Kind.FATAL, 1, Action.EXIT, "r"),
    ],
)
def test_decide_table(stage: Stage, kind: Kind, attempts: int, action: Action, reason: str) -> None:
    d = decide(Failure(stage, kind, "r", attempts), POLICY, rand=lambda: 1.0)
    assert (d.action, d.reason) == (action, reason)
    if action is Action.RETRY:
        assert d.delay_s == min(30, 0.5 * 2 ** (attempts - 1))
    if action is Action.STALL:
        assert d.delay_s == POLICY.backoff_max_s  # a stalled record is tried again at the cap, no faster


def test_permanent_failures_never_loop() -> None:
    """Following decisions from any permanent failure ends in at most two more steps, never in RETRY."""
    stage = Stage.OUTPUT
    seen = []
    for _ in range(5):
        d = decide(Failure(stage, Kind.PERMANENT, "MSG_SIZE_TOO_LARGE", 1), POLICY)
        seen.append(d.action)
        if d.action is Action.STALL:
            break
        stage = {Action.DLQ: Stage.DLQ, Action.DLQ_BOUNDED: Stage.DLQ_BOUNDED}[d.action]
    assert seen == [Action.DLQ, Action.DLQ_BOUNDED, Action.STALL]


def test_kafka_error_classes() -> None:
    from confluent_kafka import KafkaError

    for code in (KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_RECORD, KafkaError.TOPIC_AUTHORIZATION_FAILED,
                 KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.INVALID_MSG, KafkaError.RECORD_LIST_TOO_LARGE):
        assert kafka_error_kind(code, False, False) is Kind.PERMANENT, code
    for code in (KafkaError._MSG_TIMED_OUT, KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError._ALL_BROKERS_DOWN,
                 KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_ENOUGH_REPLICAS):
        assert kafka_error_kind(code, False, False) is Kind.TRANSIENT, code
    assert kafka_error_kind(KafkaError.INVALID_RECORD, True, False) is Kind.TRANSIENT  # librdkafka's own flag
    assert kafka_error_kind(KafkaError._MSG_TIMED_OUT, True, True) is Kind.FATAL


def test_bounded_record_always_fits_and_says_where_the_payload_is() -> None:
    import hashlib

    value = b"\x00" * (16 * 1024 * 1024 - 300)
    headers = [(f"h{i}", b"x" * 100) for i in range(100)] + [("big", b"y" * 1_000_000)]
    for key in (b"k\xff", b"K" * 5000, None):
        k, v = bounded_record(key, value, headers, source=("image_data", 0, 51), reason="not_an_image",
                              error="e" * 10_000, dlq_error="MSG_SIZE_TOO_LARGE")
        doc = json.loads(v)
        assert record_size(k, v, None) < 8192
        assert doc["source"] == {"topic": "image_data", "partition": 0, "offset": 51}
        assert doc["value_size"] == len(value) and doc["value_sha256"] == hashlib.sha256(value).hexdigest()
        assert doc["reason"] == "not_an_image" and doc["headers_count"] == 101 and doc["payload"] == "omitted"
        assert k == (key if key is not None and len(key) <= 1024 else None)
        if key is not None:
            assert doc["key_sha256"] == hashlib.sha256(key).hexdigest() and doc["key_size"] == len(key)
    assert record_size(b"k", value, headers) > len(value) + 1_000_000


def test_per_record_warning_is_rate_limited_with_a_count() -> None:
    import logging

    from bridge.logs import PerRecord

    now = [0.0]
    limiter = PerRecord(30, clock=lambda: now[0])
    lines: list[logging.LogRecord] = []
    logger = logging.getLogger("test-per-record")
    handler = logging.Handler()
    handler.emit = lines.append  # type: ignore[method-assign]
    logger.addHandler(handler)
    try:
        for _ in range(120):  # four a second for 30 s
            limiter.log(logger, logging.WARNING, "rec", "produce failed", {"offset": 1})
            now[0] += 0.25
        limiter.log(logger, logging.WARNING, "rec", "produce failed", {"offset": 1})
        limiter.log(logger, logging.WARNING, "other", "produce failed", {"offset": 2})
    finally:
        logger.removeHandler(handler)
    assert [(r.offset, r.repeats) for r in lines] == [(1, 0), (1, 119), (2, 0)]  # type: ignore[attr-defined]


def test_oldest_unfinished_age_per_partition() -> None:
    t = OffsetTracker()
    t.assign([TP, ("image_data", 1)])
    e = t.add(TP, 5, now=100.0)
    t.add(TP, 6, now=101.0)
    assert e is not None
    assert t.oldest(now=110.0) == {TP: (5, 10.0), ("image_data", 1): None}
    t.done(TP, 5, e)
    assert t.oldest(now=110.0)[TP] == (6, 9.0)


def test_model_from_envelope_or_header_validated_against_served_models() -> None:
    served = ("mobilenet_v2", "resnet50")
    img = base64.b64encode(jpeg(16, 16)).decode()
    env = json.dumps({"image_b64": img, "model": "resnet50"}).encode()
    assert parse_record(b"k", env, None, "fb", served, "mobilenet_v2").model == "resnet50"
    assert parse_record(b"k", b"\xff\xd8", [("model", b"resnet50")], "fb", served, "mobilenet_v2").model == "resnet50"
    assert parse_record(b"k", b"\xff\xd8", None, "fb", served, "mobilenet_v2").model == "mobilenet_v2"
    for value, headers in ((json.dumps({"image_b64": img, "model": "no_such_model"}).encode(), None),
                           (b"\xff\xd8", [("model", b"no_such_model")])):
        with pytest.raises(ContractError) as err:
            parse_record(b"k", value, headers, "fb", served, "mobilenet_v2")
        assert err.value.reason == "unknown_model" and "no_such_model" in err.value.message
    with pytest.raises(ContractError) as err:
        parse_record(b"k", b"\xff\xd8", [("model", b"\xff")], "fb", served, "mobilenet_v2")
    assert err.value.reason == "invalid_header"


def test_unknown_envelope_fields_are_rejected() -> None:
    img = base64.b64encode(jpeg(16, 16)).decode()
    with pytest.raises(ContractError) as err:
        parse_record(b"k", json.dumps({"image_b64": img, "modle": "resnet50"}).encode(), None, "fb")
    assert err.value.reason == "invalid_envelope" and "modle" in err.value.message
    assert "additionalProperties" in json.dumps(schema("image_data.envelope"))


def test_dlq_limit_leaves_room_for_the_dlq_headers() -> None:
    cfg = Config.from_env({"KAFKA_MAX_MESSAGE_BYTES": "1000000"})
    h = dlq_headers([("content-type", b"image/png")], error="x" * 5000, error_class="retries_exhausted", status=503,
                    attempts=10, model="mobilenet_v2", source=("a" * 249, 99, 2**62), source_timestamp_ms=2**41,
                    failed_at=1.7e9)
    assert record_size(b"k" * 100, b"v" * (1000000 - 100 - 512), h) <= cfg.dlq_max_message_bytes
    assert cfg.producer_settings()["message.max.bytes"] == cfg.dlq_max_message_bytes


def test_liveness_fails_when_kafka_stays_unreachable() -> None:
    """A consumer that cannot reach Kafka for BRIDGE_KAFKA_UNREACHABLE_RESTART_S is not live (the kubelet then
    replaces the process): seen in make e2e-chaos, a client that never rejoined after a broker restart."""
    async def check() -> None:
        bridge = Bridge(Config.from_env({"BRIDGE_KAFKA_UNREACHABLE_RESTART_S": "30"}))
        contact = bridge.contact
        assert bridge.live and not contact.reachable  # not reached yet, but not for long
        contact.answered(True)
        assert bridge.live and contact.unreachable_since is None
        contact.answered(False)
        first = contact.unreachable_since
        contact.answered(False)  # a repeated failure keeps the first moment
        assert first is not None and contact.unreachable_since == first and bridge.live
        contact.unreachable_since = first - 31
        assert not bridge.live and 31 <= contact.lost_for(time.monotonic()) < 40
        contact.answered(True)
        assert bridge.live and contact.unreachable_since is None and contact.lost_for(time.monotonic()) == 0
        never = Bridge(Config.from_env({"BRIDGE_KAFKA_UNREACHABLE_RESTART_S": "0"}))
        never.contact.unreachable_since = time.monotonic() - 10_000
        assert never.live

    asyncio.run(check())


def test_liveness_fails_when_the_broker_keeps_the_consumer_out_of_its_group() -> None:
    """Kafka answers, the poll loop turns, yet the broker does not list the consumer in its group: after
    BRIDGE_KAFKA_UNREACHABLE_RESTART_S the process is not live. Joining at start is not a failure, and a broker
    that does not answer the question teaches nothing."""
    async def check() -> None:
        bridge = Bridge(Config.from_env({"BRIDGE_KAFKA_UNREACHABLE_RESTART_S": "30"}))
        contact = bridge.contact
        bridge._heard_from_cluster(True, False)  # still joining
        first = contact.out_of_group_since
        assert first is not None and bridge.live
        assert not contact.listed(None) and not contact.listed(False)  # nothing learnt; still not in: no drop-out
        assert contact.out_of_group_since == first and bridge.live
        contact.out_of_group_since = first - 31
        assert not bridge.live and contact.reachable  # reachable, and still not live
        assert not contact.listed(True)
        assert bridge.live and contact.out_of_group_since is None and contact.in_group is True
        assert not contact.listed(None)  # no answer: the last word stands
        assert contact.in_group is True and contact.out_of_group_since is None
        assert contact.listed(False)  # in the group, then out of it: a drop-out (logged by the bridge)
        assert contact.in_group is False and contact.out_of_group_since is not None

    asyncio.run(check())


# ---- images by reference (envelope `s3` / `url`) -----------------------------------------------------
def test_references_waiting_for_their_fetch_have_a_cap_of_their_own() -> None:
    """An unfetched reference holds no image: it does not use the in-flight cap (which bounds image bytes), so a
    burst of references keeps inference fed; the references waiting have the same cap of their own."""
    from bridge.app import Item

    async def check() -> None:
        bridge = Bridge(Config.from_env({"BRIDGE_MAX_IN_FLIGHT": "4"}))
        items = [Item("image_data", 0, i, None, b"{}", None, None, 1, 0.0) for i in range(4)]
        for item in items:  # as _accept counts a reference
            bridge.in_flight += 1
            item.awaiting_fetch = True
            bridge.awaiting_fetch += 1
        assert bridge.room_left() == 0  # four references waiting: their own cap is full
        bridge._fetch_settled(items[0])
        bridge._fetch_settled(items[0])  # settling twice counts once
        assert (bridge.awaiting_fetch, bridge.room_left()) == (3, 1)
        bridge._fetch_settled(items[1])
        assert bridge.room_left() == 2  # two images held, two references waiting
        bridge._release(items[2])  # dropped while waiting for its fetch: leaves both counts
        assert (bridge.in_flight, bridge.awaiting_fetch, bridge.room_left()) == (3, 1, 2)
        bridge._fetch_settled(items[3])
        bridge._release(items[0])
        assert (bridge.in_flight, bridge.awaiting_fetch, bridge.room_left()) == (2, 0, 2)
        for _ in range(2):  # two records that carried their bytes: the cap is full again
            bridge.in_flight += 1
        assert bridge.room_left() == 0

    asyncio.run(check())


# ---- images by reference (envelope `s3` / `url`) -----------------------------------------------------
def test_reference_envelopes_parse_and_exactly_one_image_field_is_allowed() -> None:
    for field, ref in (("s3", "s3://uploads/2026/cat.jpg"), ("url", "https://img.example.com/cat.jpg")):
        rec = parse_record(b"k", json.dumps({field: ref, "metadata": {"u": 1}}).encode(), None, "fb")
        assert (rec.reference, rec.image, rec.metadata) == (ref, b"", {"u": 1})
    for body in ({"s3": "s3://b/k", "image_b64": "AAAA"}, {"s3": "s3://b/k", "url": "https://h/k"}, {"id": "x"},
                 {"s3": ""}, {"url": 7}):
        with pytest.raises(ContractError) as info:
            parse_record(b"k", json.dumps(body).encode(), None, "fb")
        assert info.value.reason == "invalid_envelope", body


def test_prediction_of_a_reference_echoes_it_and_fits_the_schema() -> None:
    rec = parse_record(b"k", json.dumps({"s3": "s3://uploads/cat.jpg"}).encode(), None, "fb")
    rec.fetched = {"ref": "s3://uploads/cat.jpg", "size": 1234, "etag": '"abc"', "version_id": "v7"}
    value = prediction_value(rec, Prediction("benign", 0.1, 0.5, "mobilenet_v2", "1.0"),
                             source=("image_data", 0, 1), received_at=1.7e9, produced_at=1.7e9, inference_ms=1.0,
                             batch_size=1, end_to_end_ms=2.0, attempts=1)
    doc = json.loads(value)
    jsonschema.validate(doc, schema("image_predictions"))
    assert doc["reference"] == rec.fetched
    assert "reference" not in _record_of(Prediction("benign", 0.1, 0.5, "mobilenet_v2", "1.0"))


def test_fetch_failures_follow_the_inference_table() -> None:
    assert decide(Failure(Stage.FETCH, Kind.PERMANENT, "reference_forbidden", 1), POLICY).action is Action.DLQ
    retry = decide(Failure(Stage.FETCH, Kind.TRANSIENT, "fetch_failed", 1), POLICY, rand=lambda: 1.0)
    assert retry.action is Action.RETRY and retry.delay_s == 0.5
    exhausted = decide(Failure(Stage.FETCH, Kind.TRANSIENT, "fetch_failed", 3), POLICY)
    assert (exhausted.action, exhausted.reason) == (Action.DLQ, "retries_exhausted")
