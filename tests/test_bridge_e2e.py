"""End to end on the real broker and the real TorchServe stack: both models and protocols, poison records
to the DLQ while good ones flow, ≥10 MB records, interop with clients not written here (Debian's kcat, and
confluent-kafka used directly), graceful SIGTERM with committed offsets, the broker's own topic setup, and review
decisions copied to the review topic (on a KServe runtime started with a review band)."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from handlers.envelopes import predictions_from, v2_request
from handlers.model_io import DECISIONS
from handlers.stack import url
from tests.conftest import DEFAULT_RUNTIME, StackControl
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
from tests.runtime_support import kserve_runtime

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
    assert {"image_predictions", "image_review", "image_data.dlq"} <= set(meta)
    assert len(meta["image_review"].partitions) == len(meta["image_predictions"].partitions)  # keyed alike


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


# ---- the review band (issue 19): review decisions also on the review topic ------------------------------------
REVIEW_MODEL = "mobilenet_v2"


@dataclass(frozen=True)
class ReviewBand:
    """A private KServe runtime serving REVIEW_MODEL with thresholds that put the test's images in all three
    decisions, and those images."""

    url: str
    threshold: float
    review_threshold: float
    images: dict[str, bytes]


def _band_images() -> dict[str, bytes]:
    """The bundled sample photos plus generated pictures: scores spread enough to cut into thirds."""
    from demo.samples import skimage_photos

    images = {f"rv-photo-{p.stem}": p.read_bytes() for p in skimage_photos()}
    images |= {f"rv-gen-{n}": jpeg(64 + 16 * n, 48 + 8 * n, seed=100 + n) for n in range(8)}
    return images


def _cuts(scores: list[float]) -> tuple[float, float]:
    """(review_threshold, threshold): midpoints of the widest gap between sorted distinct scores in the lower and in
    the upper third, so each decision gets images and none sits near a cut (robust to float noise between runtimes)."""
    s = sorted(set(scores))
    assert len(s) >= 6, f"too few distinct scores to make three decisions: {s}"

    def widest(lo: int, hi: int) -> float:
        i = max(range(lo, hi), key=lambda i: s[i] - s[i - 1])
        return (s[i] + s[i - 1]) / 2

    n = len(s)
    return widest(max(1, n // 6), n // 2), widest(n // 2 + 1, min(n, n - n // 6 + 1))


@pytest.fixture(scope="module")
def review_band(stack_control: StackControl, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReviewBand]:
    """Score the images on the local stack, then start `python -m kserve_runtime` on free ports with
    MODERATION_THRESHOLD_/MODERATION_REVIEW_THRESHOLD_<MODEL> cutting those scores into thirds: the run-time
    variables a deployment sets (the chart's models.<m>.threshold / reviewThreshold)."""
    base = stack_control.ensure(DEFAULT_RUNTIME).base_url
    images = _band_images()
    body = v2_request(list(images.values()))
    res = httpx.post(f"{base}/v2/models/{REVIEW_MODEL}/infer", json=body, timeout=300)
    assert res.status_code == 200, res.text
    review_threshold, threshold = _cuts([p.harmful_score for p in predictions_from(res.json())])
    upper = REVIEW_MODEL.upper()
    env = {f"MODERATION_THRESHOLD_{upper}": repr(threshold),
           f"MODERATION_REVIEW_THRESHOLD_{upper}": repr(review_threshold)}
    with kserve_runtime(REVIEW_MODEL, tmp_path_factory.mktemp("review-runtime") / "unpacked",
                        "test-review-runtime.log", **env) as url_:
        yield ReviewBand(url_, threshold, review_threshold, images)


def _review_bridge(where: Topics, bootstrap: str, band: ReviewBand) -> BridgeProcess:
    return BridgeProcess(where, bootstrap, band.url, INFERENCE_MODEL=REVIEW_MODEL, INFERENCE_MODELS=REVIEW_MODEL)


def test_review_decisions_are_also_produced_to_the_review_topic(kafka: str, topics: Topics,  # noqa: F811
                                                                review_band: ReviewBand) -> None:
    """Block, review and allow all occur; every review prediction is on image_predictions and, with the same key,
    value and headers, on image_review; nothing else is on image_review; metrics and commits agree."""
    ids = set(review_band.images)
    bridge = _review_bridge(topics, kafka, review_band).start()
    try:
        produce(kafka, topics.input, [raw_record(i, img, {"i": i}) for i, img in review_band.images.items()])
        out = collect(kafka, topics, ids, timeout_s=180)
        assert out.seen() == ids and not out.dlq, out.report(ids, "review band")
        decisions = {i: docs[0]["decision"] for i, docs in out.predictions.items()}
        reviewed = {i for i, d in decisions.items() if d == "review"}
        # the copy follows the acknowledged prediction: wait for every one before stopping the bridge
        wait_for(lambda: bridge.metric("bridge_review_produced_total") >= len(reviewed), 60, "review copies")
        by_decision = {d: bridge.metric("bridge_predictions_produced_total", decision=d) for d in DECISIONS}
        assert bridge.metric("bridge_review_produced_total", model=REVIEW_MODEL) == len(reviewed)
        assert bridge.terminate() == 0
    finally:
        bridge.stop_quietly()
    out = collect(kafka, topics, ids, timeout_s=60, settle_s=1)  # everything, after the bridge flushed and left
    counts = {d: sum(v == d for v in decisions.values()) for d in DECISIONS}
    print(f"review band [{review_band.review_threshold:.4f}, {review_band.threshold:.4f}): {counts}, "
          f"{sum(map(len, out.review_records.values()))} review copies")
    assert set(decisions.values()) == set(DECISIONS), decisions
    for docs in out.predictions.values():
        check_prediction(docs[0], REVIEW_MODEL)
        assert docs[0]["threshold"] == pytest.approx(review_band.threshold, abs=1e-6)
        assert docs[0]["review_threshold"] == pytest.approx(review_band.review_threshold, abs=1e-6)
    assert set(out.review_records) == reviewed  # every review decision, and nothing else
    for image_id, copies in out.review_records.items():
        assert all(copy in out.prediction_records[image_id] for copy in copies), image_id  # key, value, headers
        assert json.loads(copies[0][1] or b"{}")["decision"] == "review"
    assert sum(map(len, out.review_records.values())) == sum(
        len(docs) for i, docs in out.predictions.items() if i in reviewed)
    assert by_decision == counts
    assert committed_total(kafka, topics) == len(ids)


def test_a_review_copy_the_review_topic_refuses_is_dead_lettered_not_lost(kafka: str,  # noqa: F811
                                                                          review_band: ReviewBand) -> None:
    """The review topic refuses every copy (max.message.bytes below a prediction's size): each review record
    still has its prediction, goes to the DLQ as output_rejected naming the review topic, and is committed only
    then; the other decisions are unaffected."""
    refusing = Topics.create(kafka, review_max_bytes=64)
    ids = set(review_band.images)
    bridge = _review_bridge(refusing, kafka, review_band).start()
    try:
        produce(kafka, refusing.input, [raw_record(i, img) for i, img in review_band.images.items()])
        out = collect(kafka, refusing, ids, timeout_s=180)
        reviewed = {i for i, docs in out.predictions.items() if docs[0]["decision"] == "review"}
        wait_for(lambda: bridge.metric("bridge_dlq_total", reason="output_rejected") >= len(reviewed), 60,
                 "dead letters of the refused copies")
        assert bridge.metric("bridge_review_produced_total") == 0
        assert bridge.terminate() == 0
    finally:
        bridge.stop_quietly()
    out = collect(kafka, refusing, ids, timeout_s=60, settle_s=1)
    assert reviewed and set(out.predictions) == ids, out.report(ids, "refused copies")
    assert set(out.dlq) == reviewed and not out.review_records
    for image_id in reviewed:
        h = out.dlq[image_id][0]
        assert h["error_class"] == "output_rejected" and refusing.review in h["error"], h
        assert out.dlq_values[image_id] == review_band.images[image_id]  # the input record, replayable
    assert committed_total(kafka, refusing) == len(ids)
