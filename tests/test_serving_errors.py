"""One error format on the local endpoint, on both runtimes: every refusal is `{"error", "reason"}` with a
documented reason.

Covers what the gateway (or the KServe runtime) answers itself (unknown route, wrong method, body over its limit,
unknown model) and what the gateway translates from TorchServe's own bodies, plus TorchServe's gRPC listeners on
their documented ports.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import grpc
import httpx
import pytest

from gateway.app import _translate
from handlers.errors import REASONS
from handlers.stack import stack
from tests.conftest import StackControl
from tests.image_factory import jpeg

ROOT = Path(__file__).resolve().parent.parent


def assert_error(response: httpx.Response, status: int, reason: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "reason"} and body["reason"] == reason and body["error"], body
    assert REASONS[reason] == status


@pytest.mark.parametrize(
    ("method", "path", "status", "reason"),
    [
        ("POST", "/v1/models/nope:predict", 404, "model_not_found"),
        ("POST", "/v1/models/nope:explain", 404, "model_not_found"),
        ("POST", "/v2/models/nope/infer", 404, "model_not_found"),
        ("GET", "/v2/models/nope", 404, "model_not_found"),
        ("GET", "/v2/models/nope/ready", 404, "model_not_found"),
        ("GET", "/v1/models/nope", 404, "model_not_found"),
        ("GET", "/v1/models/mobilenet_v2:predict", 405, "method_not_allowed"),
        ("PUT", "/v2/models/mobilenet_v2/infer", 405, "method_not_allowed"),
        ("GET", "/no/such/route", 404, "not_found"),
    ],
)
def test_refusals_use_the_documented_error_body(client: httpx.Client, method: str, path: str, status: int,
                                                reason: str) -> None:
    response = client.request(method, path, content=jpeg(), headers={"Content-Type": "image/jpeg"})
    assert_error(response, status, reason)


def test_form_encoded_image_is_415_not_torchserves_500(client: httpx.Client) -> None:
    """curl --data-binary without -H sends form-urlencoded, which TorchServe's frontend fails on with a 500."""
    for ctype in ("application/x-www-form-urlencoded", "multipart/form-data; boundary=x"):
        response = client.post("/v1/models/mobilenet_v2:predict", content=jpeg(), headers={"Content-Type": ctype})
        assert_error(response, 415, "unsupported_content_type")
        assert "Content-Type: image/jpeg" in response.json()["error"]


def test_body_over_the_limit_is_413_body_too_large(client: httpx.Client) -> None:
    from gateway.config import DEFAULTS as GATEWAY_DEFAULTS
    from kserve_runtime.config import DEFAULTS

    limit = int(GATEWAY_DEFAULTS["GATEWAY_MAX_BODY_BYTES"][0])
    assert int(DEFAULTS["KSERVE_MAX_BODY_BYTES"][0]) == limit  # the same limit on both runtimes
    response = client.post("/v2/models/mobilenet_v2/infer", content=b"\0" * (limit + 1),
                           headers={"Content-Type": "application/octet-stream"})
    assert_error(response, 413, "body_too_large")
    assert client.post("/v1/models/mobilenet_v2:predict", content=jpeg(),
                       headers={"Content-Type": "image/jpeg"}).status_code == 200  # and the gateway lives on


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (503, {"code": 503, "type": "ServiceUnavailableException", "message": "Model has no worker"}, "unavailable"),
        (408, {"code": 408, "type": "RequestTimeoutException", "message": "Request timed out"}, "timeout"),
        (500, {"code": 500, "type": "InternalServerException", "message": "Worker died."}, "internal"),
        (404, {"code": 404, "type": "ModelNotFoundException", "message": "Model not found: x"}, "model_not_found"),
    ],
)
def test_torchserve_bodies_are_translated(status: int, body: dict, reason: str) -> None:
    translated = _translate(status, json.dumps(body).encode())
    assert translated == {"error": body["message"], "reason": reason}
    ours = {"error": "payload is not a recognised image format", "reason": "not_an_image"}
    assert _translate(400, json.dumps(ours).encode()) is None  # the handler's own bodies pass unchanged
    assert _translate(502, b"<html>bad gateway</html>")["reason"] == "internal"


def test_every_reason_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    documented = dict(re.findall(r"^\| `(\w+)` \| (\d{3}) \|", readme, re.M))
    assert documented == {reason: str(status) for reason, status in REASONS.items()}


def test_gateway_settings_are_one_documented_table(tmp_path: Path) -> None:
    """Read like the bridge's (handlers/env.py): defaults, variables, `<NAME>_FILE` first; each in the README."""
    from gateway.config import DEFAULTS, GatewayConfig

    readme = (ROOT / "README.md").read_text()
    assert [name for name in DEFAULTS if f"`{name}`" not in readme] == []
    assert GatewayConfig.from_env({}) == GatewayConfig(timeout_s=120.0, max_connections=256,
                                                       max_body_bytes=40 * 1024 * 1024, log_level="INFO")
    secret = tmp_path / "timeout"
    secret.write_text("7.5\n")
    cfg = GatewayConfig.from_env({"GATEWAY_TIMEOUT_S": "9", "GATEWAY_TIMEOUT_S_FILE": str(secret),
                                  "GATEWAY_MAX_CONNECTIONS": "8", "GATEWAY_MAX_BODY_BYTES": ""})
    assert (cfg.timeout_s, cfg.max_connections, cfg.max_body_bytes) == (7.5, 8, 40 * 1024 * 1024)


def test_torchserve_grpc_apis_answer_on_the_documented_loopback_ports(stack_control: StackControl) -> None:
    """TorchServe 0.12 cannot turn its gRPC APIs off: they are served on stack.env's ports, loopback only."""
    stack_control.ensure("torchserve")
    s = stack()
    config = (ROOT / ".run" / "torchserve" / "config.properties").read_text()
    for api in ("inference", "management"):
        assert f"grpc_{api}_address=127.0.0.1" in config
        assert f"grpc_{api}_port={s[f'TORCHSERVE_GRPC_{api.upper()}_PORT']}" in config
    raw = {"request_serializer": lambda _: b"", "response_deserializer": bytes}
    with grpc.insecure_channel(f"127.0.0.1:{s['TORCHSERVE_GRPC_INFERENCE_PORT']}") as channel:
        ping = channel.unary_unary("/org.pytorch.serve.grpc.inference.InferenceAPIsService/Ping", **raw)
        assert b"Healthy" in ping(None, timeout=10)
    with grpc.insecure_channel(f"127.0.0.1:{s['TORCHSERVE_GRPC_MANAGEMENT_PORT']}") as channel:
        listed = channel.unary_unary("/org.pytorch.serve.grpc.management.ManagementAPIsService/ListModels",
                                     request_serializer=bytes, response_deserializer=bytes)
        answer = listed(b"\x08\x0a", timeout=10)  # ListModelsRequest{limit: 10} in protobuf wire format
        assert b"mobilenet_v2" in answer and b"resnet50" in answer
