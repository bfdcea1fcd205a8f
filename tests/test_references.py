"""Images by reference end to end: over HTTP (the gateway in front of the real TorchServe) and through Kafka (the
real broker and a real bridge process), against the real local S3 server and a real HTTP origin on loopback.

Good references are classified exactly like the same bytes sent inline; each bad one fails alone with its reason
(a 4xx naming its index over HTTP, a DLQ record over Kafka), never a 5xx and never a hang.
"""

from __future__ import annotations

import asyncio
import base64
import io
import ipaddress
import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from aiohttp import web
from PIL import Image

from demo.samples import skimage_photos
from gateway.app import build_app
from handlers.fetch import Fetcher, FetchSettings
from handlers.stack import url
from tests.kafka_support import (
    BridgeProcess,
    Topics,
    check_prediction,
    collect,
    kafka,  # noqa: F401  (fixture)
    produce,
    topics,  # noqa: F401  (fixture)
)
from tests.s3_support import s3  # noqa: F401  (fixture)
from tests.spark_support import SparkProcess

pytestmark = pytest.mark.usefixtures("serving")
PHOTOS = {p.name: p.read_bytes() for p in skimage_photos() if p.name in ("astronaut.png", "coffee.png", "rocket.jpg")}


def _big_png(width: int, height: int) -> bytes:
    buf = io.BytesIO()
    Image.new("L", (width, height), 0).save(buf, "PNG", optimize=True)
    return buf.getvalue()


class Loop:
    """An event loop in a thread: the loopback origin and the in-process gateway run there."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)

    def serve(self, app: web.Application) -> int:
        async def start() -> int:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.runners.append(runner)
            return site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

        return self.call(start())

    def close(self) -> None:
        for runner in self.runners:
            self.call(runner.cleanup())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def origin_app() -> web.Application:
    """A real HTTP origin: photos, a redirect chain, an HTML page labelled as a JPEG, a 503, a pixel bomb."""
    app = web.Application()
    bomb = _big_png(8000, 6000)  # 48 MP, about 50 KB: over MODERATION_MAX_PIXELS (40 MP) once decoded

    def handler(body: bytes, status: int = 200, ctype: str = "application/octet-stream") -> Any:
        async def serve(_: web.Request) -> web.Response:
            return web.Response(body=body, status=status, content_type=ctype, headers={"ETag": '"o1"'})
        return serve

    for name, data in PHOTOS.items():
        app.router.add_get(f"/photos/{name}", handler(data))
    app.router.add_get("/bomb.png", handler(bomb, ctype="image/png"))
    app.router.add_get("/page.jpg", handler(b"<html>hello</html>", ctype="image/jpeg"))
    app.router.add_get("/busy.jpg", handler(b"busy", status=503))

    async def hop(_: web.Request) -> web.Response:
        raise web.HTTPFound("/photos/rocket.jpg")

    async def to_metadata(_: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/iam/security-credentials/")

    app.router.add_get("/moved", hop)
    app.router.add_get("/steal", to_metadata)
    return app


@pytest.fixture(scope="module")
def loop() -> Iterator[Loop]:
    lp = Loop()
    yield lp
    lp.close()


@pytest.fixture(scope="module")
def origin(loop: Loop) -> str:
    return f"http://127.0.0.1:{loop.serve(origin_app())}"


async def _resolver(host: str, port: int) -> list[str]:
    """img.test is the origin; meta.test stands for a name that resolves to the cloud metadata address."""
    return {"img.test": ["127.0.0.1"], "meta.test": ["169.254.169.254"]}[host]


@pytest.fixture(scope="module")
def gateway(loop: Loop, s3: dict[str, str]) -> str:  # noqa: F811
    """The real gateway (gateway/app.py) in front of the stack's TorchServe, its fetcher allowed 127.0.0.1 only."""
    fetch = replace(FetchSettings.from_env(s3), private_networks=(ipaddress.ip_network("127.0.0.1/32"),),
                    max_bytes=3_000_000)
    app = build_app(url("TORCHSERVE_INFERENCE_PORT"), url("TORCHSERVE_MANAGEMENT_PORT"), Fetcher(fetch, _resolver))
    return f"http://127.0.0.1:{loop.serve(app)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scores(body: dict[str, Any]) -> list[float]:
    if "predictions" in body:
        return [p["harmful_score"] for p in body["predictions"]]
    return next(o["data"] for o in body["outputs"] if o["name"] == "harmful_score")


# ---- HTTP ------------------------------------------------------------------------------------------------
def test_v1_references_are_classified_like_their_bytes(gateway: str, origin: str, s3: dict[str, str]) -> None:  # noqa: F811
    bucket = s3["FETCH_S3_BUCKETS"]
    port = origin.rsplit(":", 1)[1]
    by_ref = {"instances": [{"s3": f"s3://{bucket}/samples/astronaut.png"},
                            {"url": f"http://img.test:{port}/photos/coffee.png"},
                            {"url": f"{origin}/moved"},  # a redirect to rocket.jpg, re-checked
                            {"b64": _b64(PHOTOS["coffee.png"])}]}
    by_bytes = {"instances": [{"b64": _b64(PHOTOS[n])} for n in ("astronaut.png", "coffee.png", "rocket.jpg",
                                                                   "coffee.png")]}
    with httpx.Client(base_url=gateway, timeout=120) as c:
        got = c.post("/v1/models/mobilenet_v2:predict", json=by_ref)
        want = c.post("/v1/models/mobilenet_v2:predict", json=by_bytes)
    assert got.status_code == 200, got.text
    assert _scores(got.json()) == _scores(want.json())


def test_v2_image_url_input(gateway: str, origin: str, s3: dict[str, str]) -> None:  # noqa: F811
    body = {"id": "ref-1", "inputs": [{"name": "image_url", "datatype": "BYTES", "shape": [2],
                                       "data": [f"s3://{s3['FETCH_S3_BUCKETS']}/samples/rocket.jpg",
                                                f"{origin}/photos/astronaut.png"]}]}
    with httpx.Client(base_url=gateway, timeout=120) as c:
        got = c.post("/v2/models/mobilenet_v2/infer", json=body)
        want = c.post("/v2/models/mobilenet_v2/infer", json={"inputs": [{
            "name": "image", "datatype": "BYTES", "shape": [2],
            "data": [_b64(PHOTOS["rocket.jpg"]), _b64(PHOTOS["astronaut.png"])]}]})
    assert got.status_code == 200, got.text
    assert got.json()["id"] == "ref-1" and _scores(got.json()) == _scores(want.json())


@pytest.mark.parametrize(("ref", "status", "reason"), [
    ("ftp://img.test/a.jpg", 400, "bad_reference"),
    ("http://user:secret@img.test/a.jpg", 400, "bad_reference"),
    ("http://169.254.169.254/latest/meta-data/", 403, "reference_forbidden"),
    ("http://meta.test/latest/meta-data/", 403, "reference_forbidden"),
    ("http://[::ffff:127.0.0.2]/", 403, "reference_forbidden"),
    ("{origin}/steal", 403, "reference_forbidden"),  # redirect to the metadata address
    ("s3://not-allowed-bucket/samples/astronaut.png", 403, "reference_forbidden"),
    ("s3://{bucket}/samples/missing.jpg", 422, "fetch_failed"),
    ("{origin}/busy.jpg", 422, "fetch_failed"),
    ("{origin}/page.jpg", 400, "not_an_image"),
    ("s3://{bucket}/tests/huge.jpg", 413, "too_large"),
    ("{origin}/bomb.png", 413, "too_many_pixels"),  # fetched fine; the decoder's pixel cap still applies
])
def test_bad_references_fail_alone_with_a_4xx_naming_them(gateway: str, origin: str, s3: dict[str, str],  # noqa: F811
                                                          ref: str, status: int, reason: str) -> None:
    bucket = s3["FETCH_S3_BUCKETS"]
    boto3.session.Session().client("s3", endpoint_url=s3["FETCH_S3_ENDPOINT_URL"], region_name="us-east-1") \
        .put_object(Bucket=bucket, Key="tests/huge.jpg", Body=PHOTOS["rocket.jpg"][:4] + b"\0" * 3_500_000)
    ref = ref.format(origin=origin, bucket=bucket)
    body = {"instances": [{"s3": f"s3://{bucket}/samples/coffee.png"}, {"url": ref}]}
    with httpx.Client(base_url=gateway, timeout=120) as c:
        got = c.post("/v1/models/mobilenet_v2:predict", json=body)
        assert (got.status_code, got.json()["reason"], got.json().get("index")) == (status, reason, 1), got.text
        assert "secret" not in got.text
        # the gateway lives on, and the good reference alone works
        ok = c.post("/v1/models/mobilenet_v2:predict", json={"instances": body["instances"][:1]})
        assert ok.status_code == 200


def test_torchserve_itself_never_fetches(s3: dict[str, str]) -> None:  # noqa: F811
    """On the cluster the TorchServe predictor is reached without the gateway: a reference is a clear 400."""
    with httpx.Client(base_url=url("TORCHSERVE_INFERENCE_PORT"), timeout=60) as c:
        got = c.post("/v1/models/mobilenet_v2:predict",
                     json={"instances": [{"s3": f"s3://{s3['FETCH_S3_BUCKETS']}/samples/coffee.png"}]})
        v2 = c.post("/v2/models/mobilenet_v2/infer", json={"inputs": [{"name": "image_url", "datatype": "BYTES",
                                                                        "shape": [1], "data": ["s3://b/k"]}]})
    for resp in (got, v2):
        assert resp.status_code == 400 and resp.json()["reason"] == "bad_reference", resp.text
        assert "never by TorchServe" in resp.json()["error"]


# ---- Kafka -----------------------------------------------------------------------------------------------
def _envelope(image_id: str, **fields: Any) -> tuple[str, bytes, list[tuple[str, bytes]]]:
    return image_id, json.dumps({"id": image_id, "metadata": {"case": image_id}, **fields}).encode(), [
        ("content-type", b"application/json")]


@pytest.mark.parametrize("consumer", ["bridge", "spark"])
def test_references_through_kafka(consumer: str, kafka: str, topics: Topics, serving: str,  # noqa: F811
                                  origin: str, s3: dict[str, str], tmp_path: Path) -> None:  # noqa: F811
    """The same battery through the bridge and the Spark consumer (endpoint mode): they share the fetcher."""
    bucket = s3["FETCH_S3_BUCKETS"]
    boto3.session.Session().client("s3", endpoint_url=s3["FETCH_S3_ENDPOINT_URL"], region_name="us-east-1") \
        .put_object(Bucket=bucket, Key="tests/huge.jpg", Body=PHOTOS["rocket.jpg"][:4] + b"\0" * 3_500_000)
    good = {
        "s3-astronaut": {"s3": f"s3://{bucket}/samples/astronaut.png"},
        "s3-coffee": {"s3": f"s3://{bucket}/samples/coffee.png"},
        "url-rocket": {"url": f"{origin}/photos/rocket.jpg?X-Amz-Signature=not-for-logs"},
        "url-moved": {"url": f"{origin}/moved"},
        "bytes-coffee": {"image_b64": _b64(PHOTOS["coffee.png"])},
    }
    bad = {
        "ftp": ({"url": "ftp://127.0.0.1/a.jpg"}, "bad_reference"),
        "userinfo": ({"url": f"http://user:secret@{origin[7:]}/photos/rocket.jpg"}, "bad_reference"),
        "loopback-not-allowed": ({"url": origin.replace("127.0.0.1", "127.0.0.2") + "/photos/rocket.jpg"},
                                 "reference_forbidden"),
        "mapped-v6": ({"url": "http://[::ffff:127.0.0.2]/a.jpg"}, "reference_forbidden"),
        "to-metadata": ({"url": f"{origin}/steal"}, "reference_forbidden"),
        "bucket": ({"s3": "s3://not-allowed-bucket/samples/astronaut.png"}, "reference_forbidden"),
        "missing": ({"s3": f"s3://{bucket}/samples/missing.jpg"}, "fetch_failed"),
        "html": ({"url": f"{origin}/page.jpg"}, "not_an_image"),
        "huge": ({"s3": f"s3://{bucket}/tests/huge.jpg"}, "too_large"),
        "busy": ({"url": f"{origin}/busy.jpg"}, "retries_exhausted"),  # transient: retried, then dead-lettered
        "bomb": ({"url": f"{origin}/bomb.png"}, "too_many_pixels"),
        "both": ({"s3": f"s3://{bucket}/samples/coffee.png", "image_b64": "AAAA"}, "invalid_envelope"),
    }
    records = [_envelope(i, **f) for i, f in good.items()] + [_envelope(i, **f) for i, (f, _) in bad.items()]
    env = {**s3, "FETCH_PRIVATE_NETWORKS": "127.0.0.1/32", "FETCH_MAX_BYTES": "3000000",
           "BRIDGE_RETRY_MAX_ATTEMPTS": "2", "BRIDGE_RETRY_BACKOFF_S": "0.1", "BRIDGE_MAX_BATCH": "8"}
    fetched_bytes = None
    if consumer == "bridge":
        proc: BridgeProcess | SparkProcess = BridgeProcess(topics, kafka, serving, **env).start()
    else:
        proc = SparkProcess(topics, kafka, serving, tmp_path / "checkpoint", "endpoint", **env).start()
    try:
        produce(kafka, topics.input, records)
        out = collect(kafka, topics, set(good) | set(bad), timeout_s=180)
        if isinstance(proc, BridgeProcess):
            fetched_bytes = proc.metric("bridge_fetched_bytes_total")
    finally:
        proc.stop_quietly()
    assert set(out.predictions) == set(good), (out.predictions.keys(), {k: v[0] for k, v in out.dlq.items()})
    assert {i: h[0]["error_class"] for i, h in out.dlq.items()} == {i: r for i, (_f, r) in bad.items()}
    with httpx.Client(base_url=serving, timeout=120) as c:
        inline = {n: c.post("/v1/models/mobilenet_v2:predict", content=d, headers={"Content-Type": "image/png"})
                  .json()["harmful_score"] for n, d in PHOTOS.items()}
    for image_id, (doc,) in out.predictions.items():
        check_prediction(doc, "mobilenet_v2")
        assert doc["metadata"] == {"case": image_id} and doc["producer"] == consumer
        if image_id.startswith("bytes"):
            assert "reference" not in doc
            continue
        ref = doc["reference"]
        name = {"s3-astronaut": "astronaut.png", "s3-coffee": "coffee.png"}.get(image_id, "rocket.jpg")
        assert ref["size"] == len(PHOTOS[name]) and ref["etag"]
        assert doc["harmful_score"] == pytest.approx(inline[name], abs=1e-4)
        assert doc["content_type"] == ("image/png" if name.endswith("png") else "image/jpeg")
        assert "Signature" not in ref["ref"] and "?" not in ref["ref"]
    if fetched_bytes is not None:
        assert fetched_bytes >= sum(len(PHOTOS[n]) for n in ("astronaut.png", "coffee.png", "rocket.jpg"))
    log = proc.log_path.read_text()
    assert "secret" not in log and "not-for-logs" not in log


# ---- the KServe runtime: the cluster's predictor takes references itself ---------------------------------------
@pytest.fixture(scope="module")
def kserve_runtime(s3: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """`python -m kserve_runtime` on free ports, with the fetcher settings the chart would give its predictor."""
    from tests.runtime_support import kserve_runtime as runtime

    with runtime("mobilenet_v2", tmp_path_factory.mktemp("kserve"), "test-kserve-references.log",
                 **s3, FETCH_PRIVATE_NETWORKS="127.0.0.1/32") as base:
        yield base


def test_kserve_runtime_fetches_references_before_its_batcher(kserve_runtime: str, origin: str,
                                                               s3: dict[str, str]) -> None:  # noqa: F811
    bucket = s3["FETCH_S3_BUCKETS"]
    with httpx.Client(base_url=kserve_runtime, timeout=120) as c:
        got = c.post("/v1/models/mobilenet_v2:predict", json={"instances": [
            {"s3": f"s3://{bucket}/samples/astronaut.png"}, {"url": f"{origin}/photos/rocket.jpg"}]})
        want = c.post("/v1/models/mobilenet_v2:predict", json={"instances": [
            {"b64": _b64(PHOTOS["astronaut.png"])}, {"b64": _b64(PHOTOS["rocket.jpg"])}]})
        v2 = c.post("/v2/models/mobilenet_v2/infer", json={"inputs": [{
            "name": "image_url", "datatype": "BYTES", "shape": [1], "data": [f"s3://{bucket}/samples/astronaut.png"]}]})
        bad = c.post("/v1/models/mobilenet_v2:predict", json={"instances": [
            {"s3": f"s3://{bucket}/samples/astronaut.png"}, {"url": "http://169.254.169.254/latest/meta-data/"}]})
        refused = c.post("/v1/models/mobilenet_v2:predict", json={"instances": [{"url": f"{origin}/bomb.png"}]})
    assert got.status_code == 200, got.text
    assert _scores(got.json()) == pytest.approx(_scores(want.json()), abs=1e-5)
    assert v2.status_code == 200 and _scores(v2.json()) == pytest.approx(_scores(want.json())[:1], abs=1e-5)
    assert (bad.status_code, bad.json()["reason"], bad.json()["index"]) == (403, "reference_forbidden", 1)
    assert (refused.status_code, refused.json()["reason"]) == (413, "too_many_pixels")
