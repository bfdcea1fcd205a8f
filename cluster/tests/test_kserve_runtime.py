"""`make e2e-kserve`: the chart with `runtime: kserve` on the local cluster (the torch-free KServe runtime image).

The predictors answer like the local stack (same archives, same scores), serve the v2 health and metadata routes
themselves (no gateway on the cluster), keep the error format, expose TorchServe's metric names on :8080, and
their image has no torch. The Kafka path through this runtime is the same bridge, covered locally
(tests/test_bridge_e2e.py).
"""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.tests.conftest import (
    MODELS,
    NAMESPACE,
    delete_predictor_pod,
    http_client,
    isvc_name,
    kube_json,
    kubectl,
    wait_until,
)
from demo.samples import skimage_photos
from handlers.envelopes import predictions_from, v2_request

pytestmark = pytest.mark.usefixtures("cluster_ready")


def _pods(model: str) -> list[dict]:
    """The model's predictor pods that are not on their way out."""
    pods = kube_json("-n", NAMESPACE, "get", "pods", "-l",
                     f"serving.kserve.io/inferenceservice={isvc_name(model)}")["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def _image(pod: dict) -> str:
    return next(c["image"] for c in pod["spec"]["containers"] if c["name"] == "kserve-container")


@pytest.fixture(scope="session", autouse=True)
def only_kserve_pods(cluster_ready: None) -> None:
    """After `helm upgrade` from the TorchServe runtime (.ci/run deploys over the chaos run's release) the old
    ReplicaSet's pod may still be scaling down; wait until only the new runtime's pods are left, before the
    session-wide port-forwards pick a pod."""
    for model in MODELS:
        wait_until(lambda m=model: bool(_pods(m)) and all("kserve-predictor:" in _image(p) for p in _pods(m)),
                   180, f"{model}: only kserve-predictor pods")


def test_predictors_run_the_torch_free_kserve_image() -> None:
    for model in MODELS:
        pods = _pods(model)
        assert pods, model
        for pod in pods:
            container = next(c for c in pod["spec"]["containers"] if c["name"] == "kserve-container")
            assert "image-moderation/kserve-predictor:" in container["image"], container["image"]
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env["KSERVE_MODELS"] == model and env["KSERVE_HOST"] == "0.0.0.0"
            probe = kubectl("-n", NAMESPACE, "exec", pod["metadata"]["name"], "-c", "kserve-container", "--",
                            "python", "-c", "import importlib.util as u; print(u.find_spec('torch') is None)")
            assert probe.strip() == "True", probe


@pytest.mark.parametrize("model", MODELS)
def test_predictions_health_metadata_and_errors_served_natively(model: str, predictor_urls: dict[str, str],
                                                                client: httpx.Client) -> None:
    with http_client(predictor_urls[model]) as remote:
        assert remote.get("/v2/health/ready").json() == {"ready": True}
        assert remote.get(f"/v2/models/{model}/ready").status_code == 200
        meta = remote.get(f"/v2/models/{model}").json()
        assert meta["name"] == model and meta["parameters"]["pretrained"] in ("true", "false")
        for path in skimage_photos()[:4]:
            image = path.read_bytes()
            local = predictions_from(client.post(f"/v2/models/{model}/infer", json=v2_request([image])).json())[0]
            raw = remote.post(f"/v2/models/{model}/infer", content=image, headers={"Content-Type": "image/png"})
            assert raw.status_code == 200, raw.text
            got = predictions_from(raw.json())[0]
            assert got.label == local.label and abs(got.harmful_score - local.harmful_score) <= 1e-4, (got, local)
        bad = remote.post(f"/v2/models/{model}/infer", content=b"not an image", headers={"Content-Type": "image/png"})
        assert bad.status_code == 400 and bad.json()["reason"] == "not_an_image"
        unknown = remote.post("/v2/models/nope/infer", content=b"x", headers={"Content-Type": "image/png"})
        assert unknown.status_code == 404 and unknown.json()["reason"] == "model_not_found"
        explain = remote.post(f"/v1/models/{model}:explain", content=image, headers={"Content-Type": "image/png"})
        assert explain.status_code == 501 and explain.json()["reason"] == "explain_unavailable"
        metrics = {f.name for f in text_string_to_metric_families(remote.get("/metrics").text)}
        assert {"ts_inference_requests_total", "moderation_predictions", "moderation_inference_seconds"} <= metrics


def test_a_deleted_predictor_pod_stops_after_its_prestop_sleep_not_its_deadline() -> None:
    """KServe's ModelServer is the container's PID 1 and handles SIGTERM itself. Last: the session's
    port-forwards end with the pod."""
    took, sleep, grace = delete_predictor_pod("resnet50")
    print(f"KServe runtime predictor pod deleted in {took:.1f} s (preStop sleep {sleep} s, grace period {grace} s)")
    assert took < sleep + 12 < grace, took
