"""The serving contract, on both runtimes: TorchServe 0.12 behind the KServe gateway, and the KServe ModelServer
runtime (`kserve_runtime/`). Every test taking `client` or `runtime_stack` runs once per runtime.

Covers both models over raw, KServe v1 and v2 requests, multi-image requests, server-side batches that
mix good and bad requests, every bad-input kind, concurrency, probes/metadata, metrics and third-party v2
clients (tritonclient over REST, binary and JSON, and gRPC; kserve's InferenceRESTClient).
"""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import threading
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
import yaml

from handlers.envelopes import predictions_from, v1_request, v2_request
from handlers.model_io import CATEGORIES, category_count, decision
from handlers.provenance import Provenance
from handlers.registry import LABELS, MODEL_NAMES
from handlers.settings import HandlerSettings
from handlers.stack import stack, url
from tests.conftest import Runtime
from tests.image_factory import accepted_variants, jpeg, refused_variants

ROOT = Path(__file__).resolve().parent.parent
MODELS = list(MODEL_NAMES)


def served_settings(model: str) -> HandlerSettings:
    """What the handler serves: its backend's thresholds (threshold/review_threshold, or their _int8 twins)."""
    config = yaml.safe_load((ROOT / "model-archive" / "config" / f"{model}.yaml").read_text())
    return HandlerSettings.load(model, config["handler"], env={})


def configured_threshold(model: str) -> float:
    return served_settings(model).threshold


def committed_categories(model: str) -> tuple[str, ...]:
    """The categories the committed checkpoint scores: from the width of its head (classes + categories)."""
    state = torch.load(ROOT / "models" / model / "model.pt", weights_only=True)["state_dict"]
    width = [v for k, v in state.items() if k.endswith(".weight") and v.ndim == 2][-1].shape[0]
    return CATEGORIES[:category_count(width)]


def metrics_text(runtime: Runtime) -> str:
    return httpx.get(runtime.metrics_url, timeout=10).text


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line[line.index("{"):line.rindex("}")]))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def score_of(client: httpx.Client, model: str, image: bytes) -> float:
    response = client.post(f"/v2/models/{model}/infer", json=v2_request([image]))
    assert response.status_code == 200, response.text
    return predictions_from(response.json())[0].harmful_score


@pytest.mark.parametrize("model", MODELS)
def test_raw_v1_v2_agree_and_carry_every_field(client: httpx.Client, model: str) -> None:
    image = jpeg(640, 480, seed=3)
    version = client.get(f"/v2/models/{model}").json()["versions"][0]
    raw = client.post(f"/v1/models/{model}:predict", content=image, headers={"Content-Type": "image/jpeg"})
    octet = client.post(
        f"/v2/models/{model}/infer", content=image, headers={"Content-Type": "application/octet-stream"}
    )
    v1 = client.post(f"/v1/models/{model}:predict", json=v1_request([image]))
    v2 = client.post(f"/v2/models/{model}/infer", json=v2_request([image], "req-42"))
    for response in (raw, octet, v1, v2):
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("application/json")
    body = v2.json()
    assert body["id"] == "req-42" and body["model_name"] == model and body["model_version"] == version
    categories = committed_categories(model)
    for output in body["outputs"]:
        if output["name"] == "categories":
            assert output["shape"] == [1, len(categories)] and output["datatype"] == "FP32"
            assert output["parameters"] == {"categories": ",".join(categories)}
        else:
            assert set(output) == {"name", "datatype", "shape", "data"} and output["shape"] == [1]
    preds = [predictions_from(r.json())[0] for r in (raw, octet, v1, v2)]
    served = served_settings(model)
    for p in preds:
        assert p.label in LABELS and 0.0 <= p.harmful_score <= 1.0
        assert p.threshold == pytest.approx(served.threshold)
        assert p.review_threshold == pytest.approx(served.review_threshold)
        assert p.label == ("harmful" if p.harmful_score >= p.threshold else "benign")
        assert p.decision == decision(p.harmful_score, p.threshold, p.review_threshold)
        assert (p.model, p.model_version) == (model, version)
        if categories:  # the same category scores on every protocol
            assert list(p.categories) == list(categories) and all(0 <= v <= 1 for v in p.categories.values())
            assert p.categories == pytest.approx(preds[0].categories, abs=1e-4)
        else:
            assert p.categories is None
    assert len({round(p.harmful_score, 5) for p in preds}) == 1, preds


@pytest.mark.parametrize("model", MODELS)
def test_several_images_per_request_keep_their_order(client: httpx.Client, model: str) -> None:
    # 7 > forward_batch (model config): the forward pass runs in uneven chunks and must still match solo scores.
    images = [jpeg(320 + 40 * i, 240, seed=10 + i) for i in range(7)]
    solo = [score_of(client, model, img) for img in images]
    v2 = client.post(f"/v2/models/{model}/infer", json=v2_request(images))
    v1 = client.post(f"/v1/models/{model}:predict", json=v1_request(images[:3]))
    assert v2.status_code == 200 and v1.status_code == 200
    assert [p.harmful_score for p in predictions_from(v2.json())] == pytest.approx(solo, abs=1e-4)
    assert [p.harmful_score for p in predictions_from(v1.json())] == pytest.approx(solo[:3], abs=1e-4)


def test_every_accepted_format(client: httpx.Client) -> None:
    variants = accepted_variants()
    response = client.post("/v2/models/mobilenet_v2/infer", json=v2_request(list(variants.values())))
    assert response.status_code == 200, response.text
    assert len(predictions_from(response.json())) == len(variants)


@pytest.mark.parametrize("kind", sorted(refused_variants()))
def test_bad_inputs_are_client_errors_naming_the_problem(client: httpx.Client, kind: str) -> None:
    payload, reason = refused_variants()[kind]
    raw = client.post("/v2/models/mobilenet_v2/infer", content=payload, headers={"Content-Type": "image/png"})
    assert raw.status_code in (400, 413), raw.text
    assert raw.json()["reason"] == reason and raw.json()["error"]
    if payload:
        in_v2 = client.post("/v2/models/resnet50/infer", json=v2_request([jpeg(), payload]))
        assert in_v2.status_code == raw.status_code
        assert in_v2.json()["reason"] == reason and in_v2.json()["index"] == 1


def test_over_size_image_is_413_and_server_survives(client: httpx.Client) -> None:
    limit = 20 * 1024 * 1024
    payload = jpeg() + b"\0" * (limit + 1)
    response = client.post("/v1/models/mobilenet_v2:predict", content=payload, headers={"Content-Type": "image/jpeg"})
    assert response.status_code == 413 and response.json()["reason"] == "too_large"
    assert score_of(client, "mobilenet_v2", jpeg()) >= 0


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b'{"instances": [{"b64": "!!notbase64!!"}]}', "bad_base64"),
        (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}', "malformed_request"),
        (b'{"inputs": "nope"}', "malformed_request"),
        (b'{"instances": [', "malformed_request"),
        (b"{}", "malformed_request"),
    ],
)
def test_malformed_bodies_are_400(client: httpx.Client, body: bytes, reason: str) -> None:
    response = client.post("/v2/models/mobilenet_v2/infer", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and response.json()["reason"] == reason


def _workers(runtime: Runtime, model: str) -> list[tuple[int, str]]:
    """TorchServe's worker processes (pid, status); the KServe runtime's one serving process."""
    if runtime.name == "kserve":
        return [(int((ROOT / ".run" / "kserve.pid").read_text()), "READY")]
    described = httpx.get(f"{url('TORCHSERVE_MANAGEMENT_PORT')}/models/{model}", timeout=10).json()
    return sorted((w["pid"], w["status"]) for version in described for w in version["workers"])


def test_server_side_batch_mixing_good_and_bad_requests(runtime_stack: Runtime) -> None:
    """Concurrent requests land in the same server-side batch; bad rows fail alone, good rows get answers."""
    model = "mobilenet_v2"
    serving = runtime_stack.base_url
    bad = list(refused_variants().values())
    good = [jpeg(400, 300, seed=100 + i) for i in range(12)]
    with httpx.Client(base_url=serving, timeout=120) as c:
        solo = [score_of(c, model, img) for img in good]
    workers_before = _workers(runtime_stack, model)
    before = metrics_text(runtime_stack)
    jobs = []
    for i, img in enumerate(good):
        jobs.append(("good", i, img, None))
        payload, reason = bad[i % len(bad)]
        jobs.append(("bad", i, payload, reason))

    # Every request of a wave leaves at once: thread and client start-up spread them over tens of ms on a busy
    # machine, and a worker that is free serves what has arrived (a batch of one each, seen once in make test).
    start = threading.Barrier(len(jobs))

    def send(job: tuple[str, int, bytes, str | None]) -> tuple[tuple[str, int, bytes, str | None], httpx.Response]:
        with httpx.Client(base_url=serving, timeout=120) as c:
            start.wait(60)
            return job, c.post(f"/v2/models/{model}/infer", content=job[2], headers={"Content-Type": "image/jpeg"})

    for _ in range(3):  # three waves so at least one batch holds several rows
        with ThreadPoolExecutor(len(jobs)) as pool:
            for (kind, i, _payload, reason), response in pool.map(send, jobs):
                if kind == "good":
                    assert response.status_code == 200, response.text
                    assert response.json()["harmful_score"] == pytest.approx(solo[i], abs=1e-4)
                else:
                    assert response.status_code in (400, 413) and response.json()["reason"] == reason
    after = metrics_text(runtime_stack)
    batches = metric_value(after, "moderation_batch_images_count", ModelName=model) - metric_value(
        before, "moderation_batch_images_count", ModelName=model)
    singles = metric_value(after, "moderation_batch_images_bucket", ModelName=model, le="1.0") - metric_value(
        before, "moderation_batch_images_bucket", ModelName=model, le="1.0")
    assert batches > singles, "no forward pass held more than one image: server-side batching did not happen"
    assert _workers(runtime_stack, model) == workers_before, "a worker died or restarted"


def test_fifty_concurrent_requests_all_answered(runtime_stack: Runtime) -> None:
    images = [jpeg(640, 480, seed=i) for i in range(50)]

    def send(i: int) -> int:
        with httpx.Client(base_url=runtime_stack.base_url, timeout=300) as c:
            model = MODELS[i % len(MODELS)]
            return c.post(f"/v2/models/{model}/infer", json=v2_request([images[i]], f"c{i}")).status_code

    with ThreadPoolExecutor(50) as pool:
        assert list(pool.map(send, range(50))) == [200] * 50


def test_probes_and_metadata_as_kserve_expects(client: httpx.Client) -> None:
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").json() == {"ready": True}
    server = client.get("/v2").json()
    assert server["name"] and server["version"]
    if server["name"] == "image-moderation":  # the local gateway (the KServe runtime reports kserve's own)
        with (ROOT / "pyproject.toml").open("rb") as f:
            assert server["version"] == tomllib.load(f)["project"]["version"]
    for model in MODELS:
        assert client.get(f"/v2/models/{model}/ready").json() == {"name": model, "ready": True}
        meta = client.get(f"/v2/models/{model}").json()
        assert meta["name"] == model and meta["platform"] and meta["versions"]
        assert meta["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
        assert {o["name"] for o in meta["outputs"]} == {"label", "harmful_score", "threshold", "decision",
                                                        "review_threshold"} | ({"categories"} if
                                                                               committed_categories(model) else set())
        # the weights' provenance travels from the checkpoint through the archive to the metadata
        committed = torch.load(ROOT / "models" / model / "model.pt", weights_only=True)["meta"]
        assert meta["parameters"] == Provenance.from_meta(model, committed).parameters()
        assert client.get(f"/v1/models/{model}").json() == {"name": model, "ready": True}
    assert sorted(client.get("/v1/models").json()["models"]) == sorted(MODELS)
    assert client.get("/v2/models/no_such_model/ready").status_code == 404
    assert client.get("/v2/models/no_such_model").status_code == 404


def test_tritonclient_gets_correct_answers(client: httpx.Client, runtime_stack: Runtime) -> None:
    import tritonclient.http as triton

    image = jpeg(500, 375, seed=77)
    expected = score_of(client, "resnet50", image)
    tc = triton.InferenceServerClient(url=f"{stack()['STACK_HOST']}:{stack()['INFERENCE_PORT']}")
    assert tc.is_server_live() and tc.is_server_ready() and tc.is_model_ready("resnet50")
    assert tc.get_model_metadata("resnet50")["name"] == "resnet50"
    tensor = triton.InferInput("image", [2], "BYTES")
    encoded = base64.b64encode(image).decode()
    tensor.set_data_from_numpy(np.array([encoded, encoded], dtype=object), binary_data=False)
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in ("label", "harmful_score", "threshold")]
    result = tc.infer("resnet50", [tensor], outputs=outputs, request_id="triton-1")
    assert result.get_response()["id"] == "triton-1"
    assert result.as_numpy("harmful_score").tolist() == pytest.approx([expected, expected], abs=1e-4)
    assert set(result.as_numpy("label").tolist()) <= {b"harmful", b"benign", "harmful", "benign"}
    if runtime_stack.name == "kserve":  # the binary tensor data extension (tritonclient's default) and gRPC
        raw = triton.InferInput("image", [2], "BYTES")
        raw.set_data_from_numpy(np.array([image, b"not an image"], dtype=object))  # binary_data=True
        with pytest.raises(triton.InferenceServerException, match=r"\[400\] image 1: .*not a recognised image"):
            tc.infer("resnet50", [raw])
        raw.set_data_from_numpy(np.array([image, image], dtype=object))
        assert tc.infer("resnet50", [raw]).as_numpy("harmful_score").tolist() == pytest.approx([expected] * 2,
                                                                                             abs=1e-4)


TRITON_GRPC = """
import json, sys
import numpy as np
import tritonclient.grpc as tg

target, image = sys.argv[1], open(sys.argv[2], "rb").read()
gc = tg.InferenceServerClient(target)
out = {"live": gc.is_server_live(), "ready": gc.is_server_ready() and gc.is_model_ready("mobilenet_v2"),
       "metadata": gc.get_model_metadata("mobilenet_v2").name}
tensor = tg.InferInput("image", [3], "BYTES")
tensor.set_data_from_numpy(np.array([image] * 3, dtype=object))
result = gc.infer("mobilenet_v2", [tensor], request_id="grpc-1")
out |= {"id": result.get_response().id, "scores": result.as_numpy("harmful_score").tolist(),
        "labels": [v.decode() for v in result.as_numpy("label").tolist()],
        "decisions": [v.decode() for v in result.as_numpy("decision").tolist()],
        "categories": None if result.as_numpy("categories") is None else result.as_numpy("categories").tolist()}
bad = tg.InferInput("image", [2], "BYTES")
bad.set_data_from_numpy(np.array([image, b"\\x89PNG\\r\\n\\x1a\\n broken"], dtype=object))
try:
    gc.infer("mobilenet_v2", [bad])
except tg.InferenceServerException as exc:
    out["refused"] = str(exc)
print(json.dumps(out))
"""


def test_tritonclient_grpc_gets_correct_answers(client: httpx.Client, runtime_stack: Runtime, tmp_path: Path) -> None:
    """OIP v2 over gRPC with tritonclient.grpc, in its own interpreter: its generated protos and kserve's share the
    `inference` package name and cannot be loaded into one process."""
    if runtime_stack.grpc_target is None:
        pytest.skip("OIP v2 gRPC is served by the KServe runtime (TorchServe's gRPC is its own protocol)")
    image = jpeg(500, 375, seed=78)
    expected = score_of(client, "mobilenet_v2", image)
    (tmp_path / "image.jpg").write_bytes(image)
    done = subprocess.run([sys.executable, "-c", TRITON_GRPC, runtime_stack.grpc_target, str(tmp_path / "image.jpg")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["live"] and out["ready"] and out["metadata"] == "mobilenet_v2" and out["id"] == "grpc-1"
    assert out["scores"] == pytest.approx([expected] * 3, abs=1e-4) and set(out["labels"]) <= set(LABELS)
    assert "INVALID_ARGUMENT" in out["refused"] and "image 1" in out["refused"], out["refused"]
    assert len(out["decisions"]) == 3 and set(out["decisions"]) <= {"block", "review", "allow"}
    categories = committed_categories("mobilenet_v2")
    if categories:  # the extra FP32 [n, 4] output, as over REST
        rest = predictions_from(client.post("/v1/models/mobilenet_v2:predict", content=image,
                                            headers={"Content-Type": "image/jpeg"}).json())[0].categories
        assert out["categories"] == [pytest.approx([rest[c] for c in categories], abs=1e-4)] * 3


def test_custom_metrics_reach_prometheus_endpoint(client: httpx.Client, runtime_stack: Runtime) -> None:
    """The same names and labels on both runtimes, so the dashboard, alerts and recording rules work unchanged."""
    for model in MODELS:
        score_of(client, model, jpeg())
    client.post("/v2/models/mobilenet_v2/infer", content=b"not an image", headers={"Content-Type": "image/jpeg"})
    text = metrics_text(runtime_stack)
    for model in MODELS:  # TorchServe's frontend counters, which the recording rules read
        for name in ("ts_inference_requests_total", "ts_inference_latency_microseconds",
                     "ts_queue_latency_microseconds"):
            assert metric_value(text, name, model_name=model) > 0, (name, model)
    assert metric_value(text, "Requests2XX", Level="Host") > 0 and metric_value(text, "Requests4XX") > 0
    for model in MODELS:
        for stage in ("decode", "preprocess", "inference"):
            assert metric_value(text, f"moderation_{stage}_seconds_count", ModelName=model) > 0, (stage, model)
            assert metric_value(text, f"moderation_{stage}_seconds_bucket", ModelName=model, le="+Inf") > 0
        assert metric_value(text, "moderation_predictions_total", ModelName=model) > 0
        decided = sum(metric_value(text, "moderation_decisions_total", ModelName=model, decision=d)
                      for d in ("block", "review", "allow"))
        assert decided == metric_value(text, "moderation_predictions_total", ModelName=model) > 0
    assert metric_value(text, "moderation_rejected_total", ModelName="mobilenet_v2", reason="not_an_image") >= 1
    assert "# TYPE moderation_inference_seconds histogram" in text
    if runtime_stack.name != "kserve":  # TorchServe's HandlerTime, which BaseHandler.handle emitted and ours must
        for model in MODELS:
            assert metric_value(text, "HandlerTime", ModelName=model) > 0, model


def test_stage_times_are_observed_per_batch_not_per_image(client: httpx.Client, runtime_stack: Runtime) -> None:
    """Every observation is a worker log line the frontend parses: one per stage and batch, not per image.
    (The KServe runtime decodes per request: one decode observation for the request's three images.)"""
    def counts() -> tuple[float, float, float]:
        text = metrics_text(runtime_stack)
        return (metric_value(text, "moderation_decode_seconds_count", ModelName="mobilenet_v2"),
                metric_value(text, "moderation_batch_images_count", ModelName="mobilenet_v2"),
                metric_value(text, "moderation_batch_images_sum", ModelName="mobilenet_v2"))

    before = counts()
    images = [jpeg(320, 240, seed) for seed in range(3)]
    response = client.post("/v2/models/mobilenet_v2/infer", json=v2_request(images))
    assert response.status_code == 200, response.text
    deadline = time.monotonic() + 5  # the frontend parses the worker's metric lines on its own thread
    while (after := counts())[1] == before[1] and time.monotonic() < deadline:
        time.sleep(0.1)
    decode, batches, images_seen = (a - b for a, b in zip(after, before, strict=True))
    assert images_seen >= 3, (before, after)
    assert decode == batches < images_seen, (before, after)  # one decode observation per batch


def test_secure_defaults_of_the_local_stack(runtime_stack: Runtime) -> None:
    if runtime_stack.name == "kserve":
        listeners = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
        pid = (ROOT / ".run" / "kserve.pid").read_text().strip()
        ours = [line.split()[3] for line in listeners.splitlines() if f"pid={pid}," in line]
        assert len(ours) == 2 and all("127.0.0.1" in addr for addr in ours), ours  # REST + gRPC, loopback only
        return
    s = stack()
    # An archive from the local store under a new name: registration would succeed if the API were on.
    register = httpx.post(
        f"{url('TORCHSERVE_MANAGEMENT_PORT')}/models",
        params={"url": "resnet50.mar", "model_name": "registration_probe"},
        timeout=60,
    )
    assert register.status_code == 405, f"model registration API must be off: {register.text}"
    config = (ROOT / ".run" / "torchserve" / "config.properties").read_text()
    for key in ("inference_address", "management_address", "metrics_address"):
        assert re.search(rf"^{key}=http://{re.escape(s['STACK_HOST'])}:\d+$", config, re.M), key
    assert "enable_model_api=false" in config and "allowed_urls=file://" in config


def test_kserve_rest_client_gets_correct_answers(client: httpx.Client) -> None:
    """kserve's own v2 REST client (the data models KServe users already have) interoperates."""
    import asyncio

    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    image = jpeg(480, 360, seed=5)
    expected = score_of(client, "mobilenet_v2", image)

    async def run() -> tuple[bool, bool, object]:
        kc = InferenceRESTClient(RESTConfig(protocol="v2", timeout=120))
        encoded = base64.b64encode(image).decode()
        tensor = InferInput(name="image", shape=[2], datatype="BYTES", data=[encoded, encoded])
        request = InferRequest(model_name="mobilenet_v2", infer_inputs=[tensor], request_id="kserve-1")
        try:
            base = str(client.base_url).rstrip("/")
            return (
                await kc.is_server_ready(base),
                await kc.is_model_ready(base, "mobilenet_v2"),
                await kc.infer(base, request, model_name="mobilenet_v2"),
            )
        finally:
            await kc.close()

    server_ready, model_ready, response = asyncio.run(run())
    assert server_ready and model_ready
    assert response.id == "kserve-1" and response.model_name == "mobilenet_v2"
    outputs = {o.name: o.data for o in response.outputs}
    assert outputs["harmful_score"] == pytest.approx([expected, expected], abs=1e-4)
    assert outputs["label"][0] in LABELS


def test_out_of_source_operating_point_is_served_when_a_deployment_asks(tmp_path: Path) -> None:
    """MODERATION_OPERATING_POINT_<MODEL> (the chart's models.<m>.operatingPoint) makes a real serving process
    answer at the archive's other pair of thresholds, on every protocol, with decisions that follow them."""
    from tests.kafka_support import LOG_DIR
    from tests.runtime_support import kserve_runtime

    model = "mobilenet_v2"
    env = {f"MODERATION_OPERATING_POINT_{model.upper()}": "out_of_source"}
    config = yaml.safe_load((ROOT / "model-archive" / "config" / f"{model}.yaml").read_text())["handler"]
    wanted = HandlerSettings.load(model, config, env=env)
    default = served_settings(model)
    assert wanted.threshold < default.threshold and wanted.review_threshold < default.review_threshold
    images = [jpeg(320, 240, seed=s) for s in range(4)]
    with kserve_runtime(model, tmp_path / "unpacked", "test-operating-point.log", **env) as base:
        v1 = httpx.post(f"{base}/v1/models/{model}:predict", json=v1_request(images), timeout=120)
        v2 = httpx.post(f"{base}/v2/models/{model}/infer", json=v2_request(images), timeout=120)
    for response in (v1, v2):
        assert response.status_code == 200, response.text
        for p in predictions_from(response.json()):
            assert (p.threshold, p.review_threshold) == pytest.approx((wanted.threshold, wanted.review_threshold))
            assert p.decision == decision(p.harmful_score, p.threshold, p.review_threshold)
    # and an operator can see it: the runtime logs what it loaded, thresholds and operating point included
    loaded = [line for line in (LOG_DIR / "test-operating-point.log").read_text().splitlines()
              if f"loaded {model}" in line]
    assert loaded and f"threshold {wanted.threshold:.4f}" in loaded[-1] and "(out_of_source)" in loaded[-1]
