"""Request/response envelopes: raw image bytes, KServe v1 JSON and Open Inference Protocol v2 JSON.

The handler owns the envelope for every request of a server-side batch (TorchServe's stock
kserve/kservev2 envelopes only read the first row). Clients of the service (bridge, load tests,
benchmarks) build requests with `v1_request`/`v2_request` (or their bytes, `request_body`) and read
answers with `predictions_from`.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from dataclasses import asdict, dataclass
from typing import Any, Literal

from handlers.env import Defaults, env
from handlers.errors import ModerationError
from handlers.outputs import CATEGORIES

Protocol = Literal["raw", "v1", "v2"]
V2_INPUT_NAME = "image"
# Images by reference (handlers/fetch.py): KServe v1 instances {"url": ...} / {"s3": ...}, an OIP v2 BYTES input
# of reference strings. The gateway, the KServe runtime and the bridge fetch them; TorchServe's workers never do.
V1_REFERENCE_FIELDS = ("url", "s3")
V2_URL_INPUT_NAME = "image_url"
NOT_FETCHED_HERE = ("this endpoint takes image bytes only: references are fetched by the gateway, the KServe runtime "
                    "and the Kafka bridge, never by TorchServe's workers")
# name -> datatype, one element per image; a model with a category head adds V2_CATEGORIES_OUTPUT
V2_OUTPUTS: dict[str, str] = {"label": "BYTES", "harmful_score": "FP32", "threshold": "FP32", "decision": "BYTES",
                              "review_threshold": "FP32"}
# FP32 [n, len(CATEGORIES)], row-major; its `parameters.categories` names the columns (comma-separated)
V2_CATEGORIES_OUTPUT = "categories"
REQUEST_DEFAULTS: Defaults = {"MODERATION_MAX_IMAGES_PER_REQUEST": ("64", "images per v1/v2 request")}


@functools.cache
def max_images_per_request() -> int:
    """The per-request image cap, read on the first request rather than at import (the process's environment is
    complete by then; tests that change it call `max_images_per_request.cache_clear()`)."""
    return int(env("MODERATION_MAX_IMAGES_PER_REQUEST", None, REQUEST_DEFAULTS))


@dataclass(frozen=True)
class ParsedRequest:
    protocol: Protocol
    images: list[bytes]
    request_id: str | None = None


@dataclass(frozen=True)
class Prediction:
    """One image's answer. `decision`/`review_threshold` are None only when read from an older server;
    `categories` (P per harmful category, handlers.model_io.CATEGORIES) only for models with a category head."""

    label: str
    harmful_score: float
    threshold: float
    model: str
    model_version: str
    decision: str | None = None
    review_threshold: float | None = None
    categories: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The raw/v1 JSON object: every field, without the ones this prediction does not have."""
        return {k: v for k, v in asdict(self).items() if v is not None}


def _b64(value: Any, index: int) -> bytes:
    """A v1/v2 JSON image element: base64 text. (Raw bytes arrive only over gRPC or the v2 binary extension,
    through `parse_v2_inputs(..., binary=True)`.)"""
    if not isinstance(value, str):
        raise ModerationError("malformed_request", f"image {index}: expected a base64 string", index)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ModerationError("bad_base64", f"image {index}: invalid base64", index) from None


def _check_count(n: int) -> None:
    if n == 0:
        raise ModerationError("malformed_request", "request contains no images")
    if n > (cap := max_images_per_request()):
        raise ModerationError("malformed_request", f"{n} images in one request, over the cap of {cap}")


def _parse_v1(body: dict[str, Any]) -> ParsedRequest:
    instances = body["instances"]
    if not isinstance(instances, list):
        raise ModerationError("malformed_request", '"instances" must be a list')
    _check_count(len(instances))
    images = []
    for i, inst in enumerate(instances):
        if isinstance(inst, dict):
            value = inst.get("b64", inst.get("data"))
            if value is None and any(f in inst for f in V1_REFERENCE_FIELDS):
                raise ModerationError("bad_reference", f"instance {i}: {NOT_FETCHED_HERE}", i)
            if value is None:
                raise ModerationError("malformed_request", f'instance {i} has neither "b64" nor "data"', i)
        else:
            value = inst
        images.append(_b64(value, i))
    return ParsedRequest("v1", images)


def _parse_v2(body: dict[str, Any]) -> ParsedRequest:
    request_id = body.get("id")
    return parse_v2_inputs(body["inputs"], str(request_id) if request_id else None)


def parse_v2_inputs(inputs: Any, request_id: str | None = None, binary: bool = False) -> ParsedRequest:
    """The images of an OIP v2 request's `inputs` (dicts of name/datatype/shape/data), whatever the transport:
    base64 strings in REST JSON, raw bytes elements over gRPC or the REST binary data extension (`binary`)."""
    if not isinstance(inputs, list) or not inputs:
        raise ModerationError("malformed_request", '"inputs" must be a non-empty list of tensors')
    if any(isinstance(t, dict) and t.get("name") == V2_URL_INPUT_NAME for t in inputs):
        raise ModerationError("bad_reference", f'input "{V2_URL_INPUT_NAME}": {NOT_FETCHED_HERE}')
    tensor = next((t for t in inputs if isinstance(t, dict) and t.get("datatype") == "BYTES"), None)
    if tensor is None:
        raise ModerationError("malformed_request", 'no input tensor with "datatype": "BYTES" (base64 images)')
    data = tensor.get("data")
    if not isinstance(data, list):
        raise ModerationError("malformed_request", f'input "{tensor.get("name")}" has no "data" list')
    if data and isinstance(data[0], list):  # [[...]] row-major nesting is legal v2
        data = [x for row in data for x in row]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or int(_prod(shape)) != len(data):
        raise ModerationError("malformed_request", f'"shape" {shape} does not match {len(data)} data elements')
    _check_count(len(data))
    if binary:
        return ParsedRequest("v2", [_raw(v, i) for i, v in enumerate(data)], request_id)
    return ParsedRequest("v2", [_b64(v, i) for i, v in enumerate(data)], request_id)


def _raw(value: Any, index: int) -> bytes:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):  # a binary-capable transport may still carry base64 text (JSON-mode clients)
        return _b64(value, index)
    raise ModerationError("malformed_request", f"image {index}: expected bytes", index)


BINARY_HEADER = "inference-header-content-length"  # OIP v2 binary tensor data extension (tritonclient's default)


def parse_v2_binary(body: bytes, json_length: int) -> ParsedRequest:
    """An OIP v2 request in the binary tensor data extension: `json_length` bytes of JSON header, then each input
    with `parameters.binary_data_size` in order; a BYTES tensor's elements are 4-byte little-endian lengths, each
    followed by that many raw bytes (no base64)."""
    try:
        header = json.loads(body[:json_length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModerationError("malformed_request", f"invalid JSON header of a binary-extension body: {exc}") from None
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list):
        raise ModerationError("malformed_request", 'binary-extension header needs an "inputs" list')
    offset = json_length
    for tensor in header["inputs"]:
        size = ((tensor.get("parameters") or {}) if isinstance(tensor, dict) else {}).get("binary_data_size")
        if size is None:
            continue
        chunk = body[offset:offset + int(size)]
        if len(chunk) != int(size):
            raise ModerationError("malformed_request", f'input "{tensor.get("name")}": body ends before its '
                                                       f"{size} binary bytes")
        offset += int(size)
        if tensor.get("datatype") == "BYTES":
            tensor["data"] = _unpack_bytes(chunk)
    request_id = header.get("id")
    return parse_v2_inputs(header["inputs"], str(request_id) if request_id else None, binary=True)


def _unpack_bytes(chunk: bytes) -> list[bytes]:
    out, i = [], 0
    while i < len(chunk):
        if i + 4 > len(chunk):
            raise ModerationError("malformed_request", "truncated BYTES element length in binary data")
        n = int.from_bytes(chunk[i:i + 4], "little")
        if i + 4 + n > len(chunk):
            raise ModerationError("malformed_request", "BYTES element longer than its binary data")
        out.append(chunk[i + 4:i + 4 + n])
        i += 4 + n
    return out


def _prod(shape: list[Any]) -> int:
    n = 1
    for dim in shape:
        if not isinstance(dim, int) or dim < 0:
            raise ModerationError("malformed_request", f'invalid "shape" {shape}')
        n *= dim
    return n


FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def unsupported_content_type(ctype: str) -> ModerationError:
    """415 naming what to send; `curl --data-binary @photo.jpg` without -H sends the first form type."""
    hint = " (curl: -H 'Content-Type: image/jpeg')" if ctype in FORM_TYPES else ""
    return ModerationError("unsupported_content_type",
                           f"content type {ctype!r} not supported; send image/*, application/octet-stream or JSON"
                           + hint)


def media_type(content_type: str | None) -> str:
    """`Image/JPEG; q=1` -> `image/jpeg`; missing -> ""."""
    return (content_type or "").split(";")[0].strip().lower()


def is_json_body(content_type: str | None, body: bytes) -> bool:
    """JSON when typed so, or untyped/octet-stream and starting with "{" (no image format starts that way),
    so clients that omit the type (tritonclient, bare Kafka producers) still mean JSON. Shared by the
    handler and the Kafka bridge's record contract."""
    ctype = media_type(content_type)
    if ctype == "application/json":
        return True
    return ctype in ("", "application/octet-stream") and body.lstrip()[:1] == b"{"


def parse_request(body: Any, content_type: str | None) -> ParsedRequest:
    """One TorchServe request body -> the images it carries, whatever the protocol."""
    ctype = media_type(content_type)
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytearray):
        body = bytes(body)
    if isinstance(body, bytes):
        if not is_json_body(ctype, body):
            if ctype and not (ctype.startswith("image/") or ctype == "application/octet-stream"):
                raise unsupported_content_type(ctype)
            return ParsedRequest("raw", [body])
        try:
            body = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ModerationError("malformed_request", f"invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise ModerationError("malformed_request", "JSON body must be an object")
    try:
        if "instances" in body:
            return _parse_v1(body)
        if "inputs" in body:
            return _parse_v2(body)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ModerationError):
            raise
        raise ModerationError("malformed_request", f"malformed request body: {exc}") from None
    raise ModerationError("malformed_request", 'JSON body needs "instances" (KServe v1) or "inputs" (v2)')


def render_response(request: ParsedRequest, preds: list[Prediction], model: str, version: str) -> dict[str, Any]:
    """Predictions for one request in the protocol it arrived in."""
    if request.protocol == "raw":
        return preds[0].to_dict()
    if request.protocol == "v1":
        return {"predictions": [p.to_dict() for p in preds]}
    outputs = [
        {"name": name, "datatype": datatype, "shape": [len(preds)], "data": [getattr(p, name) for p in preds]}
        for name, datatype in V2_OUTPUTS.items()
    ]
    if preds and preds[0].categories is not None:
        outputs.append({"name": V2_CATEGORIES_OUTPUT, "datatype": "FP32", "shape": [len(preds), len(CATEGORIES)],
                        "data": [p.categories[c] for p in preds for c in CATEGORIES],  # type: ignore[index]
                        "parameters": {"categories": ",".join(CATEGORIES)}})
    response: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": outputs}
    if request.request_id is not None:
        response["id"] = request.request_id
    return response


def v2_model_metadata(name: str, versions: list[str], platform: str,
                      parameters: dict[str, str] | None = None, categories: bool = False) -> dict[str, Any]:
    """OIP v2 `GET /v2/models/{m}` for a moderation model: its tensors derive from V2_INPUT_NAME/V2_OUTPUTS
    (+ V2_CATEGORIES_OUTPUT for a model with a category head). `parameters` (the weights' provenance) is
    beyond OIP's model-metadata fields; v2 clients ignore it."""
    outputs = [{"name": out, "datatype": dt, "shape": [-1]} for out, dt in V2_OUTPUTS.items()]
    if categories:
        outputs.append({"name": V2_CATEGORIES_OUTPUT, "datatype": "FP32", "shape": [-1, len(CATEGORIES)]})
    body: dict[str, Any] = {
        "name": name,
        "versions": versions,
        "platform": platform,
        "inputs": [{"name": V2_INPUT_NAME, "datatype": "BYTES", "shape": [-1]}],
        "outputs": outputs,
    }
    if parameters:
        body["parameters"] = parameters
    return body


# ---- client side of the same contract (bridge, load tests, demo, benchmarks) -------------------


def v1_request(images: list[bytes]) -> dict[str, Any]:
    return {"instances": [{"b64": base64.b64encode(img).decode()} for img in images]}


def v2_request(images: list[bytes], request_id: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "inputs": [
            {
                "name": V2_INPUT_NAME,
                "datatype": "BYTES",
                "shape": [len(images)],
                "data": [base64.b64encode(img).decode() for img in images],
            }
        ]
    }
    if request_id is not None:
        body["id"] = request_id
    return body


def request_body(images: list[bytes], protocol: Literal["v1", "v2"], request_id: str | None = None) -> bytes:
    """The JSON of `v1_request`/`v2_request` (without spaces), serialised by hand: `json.dumps` scans every base64
    character for something to escape (there is none): 0.55 against 0.20 ms of CPU for a 79 KB JPEG
    (`python -m loadtest.bridge_costs`), on the bridge's event loop, its busiest code at saturation."""
    b64 = [base64.b64encode(img) for img in images]
    if protocol == "v1":
        return b'{"instances":[' + b",".join(b'{"b64":"' + s + b'"}' for s in b64) + b"]}"
    head = json.dumps({"name": V2_INPUT_NAME, "datatype": "BYTES", "shape": [len(images)]}, separators=(",", ":"))
    body = b'{"inputs":[' + head[:-1].encode() + b',"data":[' + b",".join(b'"' + s + b'"' for s in b64) + b"]}]"
    if request_id is not None:
        body += b',"id":' + json.dumps(request_id).encode()
    return body + b"}"


def predictions_from(response: dict[str, Any]) -> list[Prediction]:
    """Predictions from a raw, v1 or v2 response body."""
    if "outputs" in response:
        return _from_v2_outputs(response)
    if "predictions" in response:
        return [Prediction(**p) for p in response["predictions"]]
    return [Prediction(**response)]


def _from_v2_outputs(response: dict[str, Any]) -> list[Prediction]:
    outputs = {o["name"]: o for o in response["outputs"]}
    cols = {name: o["data"] for name, o in outputs.items()}
    n = len(cols["label"])
    decisions = cols.get("decision", [None] * n)
    reviews = cols.get("review_threshold", [None] * n)
    categories: list[dict[str, float] | None] = [None] * n
    if V2_CATEGORIES_OUTPUT in outputs:
        names = outputs[V2_CATEGORIES_OUTPUT].get("parameters", {}).get("categories", ",".join(CATEGORIES)).split(",")
        flat = cols[V2_CATEGORIES_OUTPUT]
        categories = [dict(zip(names, map(float, flat[i * len(names):(i + 1) * len(names)]), strict=True))
                      for i in range(n)]
    return [
        Prediction(label, float(score), float(thr), response["model_name"], str(response.get("model_version")),
                   decision, None if review is None else float(review), cats)
        for label, score, thr, decision, review, cats in zip(
            cols["label"], cols["harmful_score"], cols["threshold"], decisions, reviews, categories, strict=True)
    ]
