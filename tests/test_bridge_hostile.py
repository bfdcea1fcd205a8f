"""Issue 18: a hostile producer's battery against the real broker and the real TorchServe stack.

Every kind of record a careless or hostile producer can write ends exactly once on `image_predictions` or
`image_data.dlq` (with the expected reason) within a time bound; a near-limit poison record, whose full
dead-letter copy cannot fit the DLQ topic, is dead-lettered as metadata only within seconds and its
partition keeps committing; a restart re-delivers nothing that was finished. A second test holds a
partition stuck on purpose (a DLQ topic that refuses every record) and watches the new metric, /readyz and
the chart's ImageModerationRecordStuck alert in a real Prometheus fire, then recover.

The table of where each kind ended is printed (`pytest -rP tests/test_bridge_hostile.py`) and appended
to `.run/logs/hostile-report.txt`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource
from PIL import Image

from tests import k8s_support as k
from tests.image_factory import jpeg, png_bomb
from tests.kafka_support import (
    LOG_DIR,
    MAX_BYTES,
    BridgeProcess,
    Topics,
    collect,
    committed,
    kafka,  # noqa: F401  (fixture)
    produce_to,
    wait_for,
)

pytestmark = pytest.mark.usefixtures("serving")

POISON_BYTES = MAX_BYTES - 300  # 300 B under the input topic's limit, as in the issue
OUTCOME_BOUND_S = 420  # every record of the battery has its outcome by then (2 shared cores, 16 MB records)
REPORT = LOG_DIR / "hostile-report.txt"

Record = tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int | None]


def noise_jpeg(target_bytes: int, seed: int) -> bytes:
    """A real JPEG photo of about `target_bytes` (random noise at quality 95 takes ~1.17 B per pixel)."""
    side = int(math.sqrt(target_bytes / 1.17))
    pixels = np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def envelope(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def battery() -> tuple[dict[str, tuple[Record, str, set[str]]], list[str]]:
    """id -> (record, expected topic "predictions"/"dlq", allowed reasons or models); and the ids, in order,
    of the good records written to partition 0 after the poison record."""
    good = jpeg(96, 96, seed=1)
    img = [("content-type", b"image/jpeg")]
    as_json = [("content-type", b"application/json")]
    kinds: dict[str, tuple[Record, str, set[str]]] = {
        "empty": ((b"empty", b"", img, None), "dlq", {"empty"}),
        "null": ((b"null", None, [], None), "dlq", {"empty"}),
        "random-1k": ((b"random-1k", os.urandom(1024), img, None), "dlq", {"not_an_image"}),
        "random-untyped": ((b"random-untyped", b"\x00" + os.urandom(4096), [], None), "dlq", {"not_an_image"}),
        "truncated-jpeg": ((b"truncated-jpeg", good[: len(good) // 2], img, None), "dlq", {"truncated"}),
        "png-bomb": ((b"png-bomb", png_bomb(12000), [("content-type", b"image/png")], None), "dlq",
                     {"too_many_pixels"}),
        "svg": ((b"svg", b'<svg xmlns="http://www.w3.org/2000/svg" width="9"/>', img, None), "dlq", {"not_an_image"}),
        "html-typed": ((b"html-typed", b"<html></html>", [("content-type", b"text/html")], None), "dlq",
                       {"unsupported_content_type"}),
        "env-not-json": ((b"env-not-json", b"{not json", as_json, None), "dlq", {"invalid_envelope"}),
        "env-untyped-garbage": ((b"env-untyped-garbage", b"{\xff\xfe", [], None), "dlq", {"invalid_envelope"}),
        "env-no-image": ((b"env-no-image", envelope(id="x"), as_json, None), "dlq", {"invalid_envelope"}),
        "env-image-not-string": ((b"env-image-not-string", envelope(image_b64=42), as_json, None), "dlq",
                                 {"invalid_envelope"}),
        "env-empty-image": ((b"env-empty-image", envelope(image_b64=""), as_json, None), "dlq", {"invalid_envelope"}),
        "env-bad-base64": ((b"env-bad-base64", envelope(image_b64="%%%%"), as_json, None), "dlq", {"bad_base64"}),
        "env-metadata-array": ((b"env-metadata-array", envelope(image_b64=b64(good), metadata=[1]), as_json, None),
                               "dlq", {"invalid_envelope"}),
        "env-unknown-field": ((b"env-unknown-field", envelope(image_b64=b64(good), modle="resnet50"), as_json, None),
                              "dlq", {"invalid_envelope"}),
        "env-text-image": ((b"env-text-image", envelope(image_b64=b64(b"just words")), as_json, None), "dlq",
                           {"not_an_image"}),
        "env-unknown-model": ((b"env-unknown-model", envelope(image_b64=b64(good), model="no_such_model"), as_json,
                               None), "dlq", {"unknown_model"}),
        "header-unknown-model": ((b"header-unknown-model", good, [*img, ("model", b"no_such_model")], None), "dlq",
                                 {"unknown_model"}),
        "env-resnet50": ((b"env-resnet50", envelope(image_b64=b64(good), model="resnet50"), as_json, None),
                         "predictions", {"resnet50"}),
        "header-resnet50": ((b"header-resnet50", good, [*img, ("model", b"resnet50")], None), "predictions",
                            {"resnet50"}),
        "metadata-not-json": ((b"metadata-not-json", good, [*img, ("metadata", b"{oops")], None), "dlq",
                              {"invalid_metadata"}),
        "metadata-not-object": ((b"metadata-not-object", good, [*img, ("metadata", b"[1]")], None), "dlq",
                                {"invalid_metadata"}),
        "headers-100": ((b"headers-100", good, [*img, *((f"x-h{i}", b"v" * 20) for i in range(100))], None),
                        "predictions", {"mobilenet_v2"}),
        "header-1mb": ((b"header-1mb", good, [*img, ("x-big", b"b" * 1_000_000)], None), "predictions",
                       {"mobilenet_v2"}),
        "key-not-utf8": ((b"\xff\xfekey", good, img, None), "predictions", {"mobilenet_v2"}),
        "content-type-not-utf8": ((b"content-type-not-utf8", good, [("content-type", b"image/\xff")], None), "dlq",
                                  {"invalid_header"}),
        "metadata-not-utf8": ((b"metadata-not-utf8", good, [*img, ("metadata", b'{"a": "\xff"}')], None), "dlq",
                              {"invalid_metadata"}),
        "other-header-not-utf8": ((b"other-header-not-utf8", good, [*img, ("x-trace", b"\xff\xfe")], None),
                                  "predictions", {"mobilenet_v2"}),
        "photo-8mb": ((b"photo-8mb", noise_jpeg(8_000_000, 8), img, None), "predictions", {"mobilenet_v2"}),
        "photo-15mb": ((b"photo-15mb", noise_jpeg(15_000_000, 15), img, None), "predictions", {"mobilenet_v2"}),
    }
    # The poison pill of the issue on partition 0, then good records behind it on the same partition.
    kinds["poison-near-limit"] = ((b"poison-near-limit", os.urandom(POISON_BYTES), img, 0), "dlq",
                                  {"not_an_image", "too_large"})
    after = []
    for n in range(8):
        after.append(f"good-after-poison-{n}")
        kinds[after[-1]] = ((after[-1].encode(), jpeg(80, 80, seed=100 + n), img, 0), "predictions", {"mobilenet_v2"})
    for n in range(12):
        kinds[f"good-{n}"] = ((f"good-{n}".encode(), jpeg(90, 70, seed=n), img, None), "predictions",
                              {"mobilenet_v2"})
    return kinds, after


def id_of(key: bytes | None) -> str:
    assert key is not None
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        return key.hex()


def log_lines(bridge: BridgeProcess, needle: str) -> list[dict]:
    out = []
    for line in bridge.log_path.read_text(errors="replace").splitlines():
        if needle in line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def test_hostile_battery_each_record_ends_exactly_once_and_partitions_keep_committing(
        kafka: str, serving: str) -> None:  # noqa: F811
    # A DLQ created before this fix, with the input's own limit (as in the issue): the poison's full copy
    # (value + original headers + DLQ headers) is over it, so only the metadata-only form can be written.
    topics = Topics.create(kafka, dlq_max_bytes=MAX_BYTES)
    kinds, after = battery()
    names = {id_of(rec[0]): name for name, (rec, _, _) in kinds.items()}
    expected = set(names)
    env = {"KAFKA_DLQ_MAX_MESSAGE_BYTES": str(MAX_BYTES), "BRIDGE_LOG_REPEAT_INTERVAL_S": "5"}
    bridge = BridgeProcess(topics, kafka, serving, **env).start()
    try:
        t0 = time.monotonic()
        offsets = produce_to(kafka, topics.input, [rec for rec, _, _ in kinds.values()])
        poison_offset = offsets[list(kinds).index("poison-near-limit")]
        out = collect(kafka, topics, expected, timeout_s=OUTCOME_BOUND_S, settle_s=3)
        elapsed = time.monotonic() - t0
        assert out.seen() == expected, out.report(expected, "hostile")
        assert out.duplicates() == 0, out.report(expected, "hostile")
        rows = []
        for image_id, name in names.items():
            _rec, where, allowed = kinds[name]
            if image_id in out.predictions:
                got, detail = "predictions", out.predictions[image_id][0]["model"]
            else:
                got, detail = "dlq", out.dlq[image_id][0]["error_class"]
            assert (got, detail in allowed) == (where, True), (name, got, detail, out.dlq.get(image_id))
            omitted = got == "dlq" and out.dlq[image_id][0].get("dlq_payload") == "omitted"
            rows.append((name, got, detail + (" (metadata only: payload omitted)" if omitted else "")))
        # The poison: metadata only, within seconds of the bridge seeing it, with everything to find it again.
        poison = out.dlq["poison-near-limit"][0]
        assert poison["dlq_payload"] == "omitted" and poison["source_offset"] == str(poison_offset)
        doc = json.loads(out.dlq_values["poison-near-limit"])
        value = kinds["poison-near-limit"][0][1]
        assert doc["value_size"] == POISON_BYTES and doc["value_sha256"] == hashlib.sha256(value or b"").hexdigest()
        assert doc["source"] == {"topic": topics.input, "partition": 0, "offset": poison_offset}
        assert len(out.dlq_values["poison-near-limit"]) < 4096
        # Good records behind the poison on partition 0 are committed: every partition reaches its end.
        ends = {p: max(o for o, (rec, _, _) in zip(offsets, kinds.values(), strict=True) if rec[3] == p) + 1
                for p in (0,)}
        wait_for(lambda: committed(kafka, topics).get(0, -1) >= ends[0], 30, "partition 0 committed past the poison")
        assert all(h[0]["source_partition"] == "0" for i, h in out.dlq.items() if i == "poison-near-limit")
        assert all(out.predictions[i][0]["source"]["partition"] == 0 for i in after)
        # No retry loop: no produce was retried, no line about one.
        assert 'bridge_retries_total{reason="produce"}' not in httpx.get(f"{bridge.url}/metrics", timeout=5).text
        assert bridge.metric("bridge_dlq_payload_omitted_total") == 1
        assert not log_lines(bridge, "dlq failed") and not log_lines(bridge, "output failed")
        wait_for(lambda: httpx.get(f"{bridge.url}/readyz", timeout=5).status_code == 200, 20, "ready")
        wait_for(lambda: sum(max(0, o) for o in committed(kafka, topics).values()) == len(kinds), 30,
                 "every partition committed to its end")
        assert bridge.terminate() == 0
        # A restart re-delivers nothing already finished: no outcome is written twice.
        again = BridgeProcess(topics, kafka, serving, **env).start()
        try:
            time.sleep(8)
            assert again.metric("bridge_messages_consumed_total") == 0
        finally:
            again.stop_quietly()
        assert collect(kafka, topics, expected, timeout_s=60, settle_s=2).duplicates() == 0
    finally:
        bridge.stop_quietly()
    table = "\n".join(f"| {name} | {'image_predictions' if got == 'predictions' else 'image_data.dlq'} | {detail} |"
                      for name, got, detail in rows)
    n_kinds = len({n for n in kinds if not n.startswith("good")}) + 2  # good-* and good-after-poison-*
    report = (f"hostile battery: {len(kinds)} records of {n_kinds} kinds, all outcomes in {elapsed:.1f}s, "
              f"{len(out.predictions)} predicted, {len(out.dlq)} dead-lettered, duplicates 0\n"
              f"| record | ended in | model / reason |\n|---|---|---|\n{table}\n")
    print(report)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(report)


@pytest.mark.parametrize("dlq", ["created-by-ensure", "legacy-input-limit"])
def test_near_limit_record_with_a_dlq_created_with_or_without_headroom(kafka: str, serving: str,  # noqa: F811
                                                                       dlq: str) -> None:
    """`bridge.topics ensure` gives the DLQ 64 KiB more than the input: the issue's poison keeps its payload.
    A DLQ created with the input's limit (as in the issue) while the bridge assumes the default headroom: the
    broker refuses the full copy (MSG_SIZE_TOO_LARGE, permanent), so the metadata-only record follows at once."""
    topics = Topics.create(kafka, dlq_max_bytes=None if dlq == "created-by-ensure" else MAX_BYTES)
    admin = AdminClient({"bootstrap.servers": kafka})

    def dlq_limit() -> int | None:
        (fut,) = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topics.dlq)]).values()
        try:
            return int(fut.result()["max.message.bytes"].value)
        except KafkaException:  # the new topic's metadata is still propagating
            return None

    wait_for(lambda: dlq_limit() is not None, 30, "DLQ topic metadata")
    assert dlq_limit() == (MAX_BYTES + 65536 if dlq == "created-by-ensure" else MAX_BYTES)
    value = os.urandom(POISON_BYTES)
    bridge = BridgeProcess(topics, kafka, serving).start()
    try:
        t0 = time.monotonic()
        produce_to(kafka, topics.input, [(b"poison", value, [("content-type", b"image/jpeg")], 0),
                                         (b"after", jpeg(64, 64), [("content-type", b"image/jpeg")], 0)])
        out = collect(kafka, topics, {"poison", "after"}, timeout_s=120)
        print(f"{dlq}: poison and the record after it finished in {time.monotonic() - t0:.1f}s")
        h = out.dlq["poison"][0]
        assert h["error_class"] == "not_an_image" and "after" in out.predictions and out.duplicates() == 0
        if dlq == "created-by-ensure":
            assert "dlq_payload" not in h and out.dlq_values["poison"] == value
        else:
            assert h["dlq_payload"] == "omitted"
            assert json.loads(out.dlq_values["poison"])["value_sha256"] == hashlib.sha256(value).hexdigest()
            assert not log_lines(bridge, "dlq failed, retrying")  # MSG_SIZE_TOO_LARGE is not retried
        wait_for(lambda: committed(kafka, topics).get(0) == 2, 30, "partition 0 committed past the poison")
    finally:
        bridge.stop_quietly()


def test_partition_held_stuck_shows_in_metric_readyz_and_alert_then_recovers(kafka: str, serving: str,  # noqa: F811
                                                                              tmp_path: Path) -> None:
    """A DLQ that refuses everything (max.message.bytes 64) stalls the partition of a bad record: its age
    metric grows, /readyz names partition and offset, the chart's alert fires in a real Prometheus; once the
    DLQ accepts records again the partition resumes and commits to its end."""
    topics = Topics.create(kafka, dlq_max_bytes=64)
    stuck_s = 3
    bridge = BridgeProcess(topics, kafka, serving, BRIDGE_STUCK_AFTER_S=str(stuck_s), BRIDGE_RETRY_BACKOFF_MAX_S="2",
                           BRIDGE_LOG_REPEAT_INTERVAL_S="5").start()
    docs = k.load_docs(k.helm_template(sets=[f"bridge.stuckAfterSeconds={stuck_s}"]))
    img = [("content-type", b"image/jpeg")]
    try:
        records: list[Record] = [(b"bad", b"not an image at all", img, 0)]
        records += [(f"p0-{n}".encode(), jpeg(64, 64, seed=n), img, 0) for n in range(3)]
        records += [(f"p1-{n}".encode(), jpeg(64, 64, seed=n), img, 1) for n in range(3)]
        offsets = produce_to(kafka, topics.input, records)
        bad_offset = offsets[0]
        target = f"127.0.0.1:{bridge.port}"
        with k.prometheus(tmp_path / "prometheus", docs, interval="1s", bridge_target=target) as prom:
            def stuck_ready() -> dict | None:
                res = httpx.get(f"{bridge.url}/readyz", timeout=5)
                body = res.json()
                return body if res.status_code == 503 and body["stuck"] else None

            wait_for(lambda: stuck_ready() is not None, 60, "/readyz 503 naming the stuck partition")
            (stuck,) = stuck_ready()["stuck"]  # type: ignore[index]
            assert (stuck["topic"], stuck["partition"], stuck["offset"], stuck["state"]) == (
                topics.input, 0, bad_offset, "stalled")
            firing = f'ALERTS{{alertname="ImageModerationRecordStuck", alertstate="firing", topic="{topics.input}"}}'
            wait_for(lambda: any(r["metric"].get("partition") == "0" for r in k.query(prom, firing)),
                     90, "ImageModerationRecordStuck firing for partition 0")
            ages = {r["metric"]["partition"]: float(r["value"][1])
                    for r in k.query(prom, f'bridge_oldest_unfinished_age_seconds{{topic="{topics.input}"}}')}
            assert ages["0"] > stuck_s and ages["1"] == 0, ages
            assert not any(r["metric"].get("partition") == "1" for r in k.query(
                prom, 'ALERTS{alertname="ImageModerationRecordStuck"}'))
        c = committed(kafka, topics)
        assert c.get(0) in (bad_offset, -1001) and c.get(1) == offsets[-1] + 1, c  # 0 held, 1 flows
        assert bridge.metric("bridge_partition_stalled") == 1
        stall_lines = log_lines(bridge, "partition stalled")
        assert stall_lines and all(line["offset"] == bad_offset for line in stall_lines)
        assert any(line["repeats"] > 0 for line in stall_lines[1:]) or len(stall_lines) == 1
        # Fix the DLQ: the stalled record is retried within BRIDGE_RETRY_BACKOFF_MAX_S and the partition resumes.
        admin = AdminClient({"bootstrap.servers": kafka})
        entry = ConfigEntry("max.message.bytes", str(MAX_BYTES), incremental_operation=AlterConfigOpType.SET)
        res = ConfigResource(ConfigResource.Type.TOPIC, topics.dlq, incremental_configs=[entry])
        for fut in admin.incremental_alter_configs([res]).values():
            fut.result()
        ids = {"bad", *(f"p0-{n}" for n in range(3)), *(f"p1-{n}" for n in range(3))}
        out = collect(kafka, topics, ids, timeout_s=120)
        assert out.seen() == ids and out.dlq["bad"][0]["error_class"] == "not_an_image"
        wait_for(lambda: committed(kafka, topics).get(0) == offsets[3] + 1, 30, "partition 0 committed to its end")
        wait_for(lambda: httpx.get(f"{bridge.url}/readyz", timeout=5).status_code == 200, 30, "ready again")
        assert bridge.metric("bridge_partition_stalled") == 0
    finally:
        bridge.stop_quietly()
