"""The message contract of the bridge's topics, defined once (documented in bridge/README.md and schema/).

Input (`image_data`): key = image id; value = the raw image bytes with a `content-type` header, an
optional `metadata` header (JSON object) and an optional `model` header, or a JSON envelope
`{"id","image_b64","content_type","metadata","model"}` (schema/image_data.envelope.schema.json; other fields
are rejected), where `s3` (s3://bucket/key) or `url` (http/https) may name the image instead of `image_b64`
(fetched by the bridge, handlers/fetch.py). Output (`image_predictions`): key = image id, JSON value
(schema/image_predictions.schema.json). Review (`image_review`): the same key, value and headers as the
prediction, for predictions whose decision is `review`. DLQ (`image_data.dlq`): the original key, value and
headers plus headers saying why (`DLQ_HEADERS`).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from handlers.envelopes import Prediction, is_json_body, media_type
from handlers.outputs import REVIEW  # noqa: F401 - the decision whose records also go to the review topic
from handlers.outputs import decision as decide_band

SCHEMA_DIR = Path(__file__).resolve().parent / "schema"
IMAGE_TYPES_PREFIX = "image/"
# Headers added to a DLQ record (the original headers are kept before them).
DLQ_HEADERS = ("error", "error_class", "error_status", "attempts", "model",
               "source_topic", "source_partition", "source_offset", "source_timestamp", "failed_at", "producer")
# Which consumer wrote a prediction or DLQ record (`producer` field / header): the bridge or the Spark consumer
# (streaming/). Everything else about their records is the same contract.
PRODUCERS = ("bridge", "spark")

Headers = list[tuple[str, bytes]]

# Why the bridge itself refuses a record (error_class of the DLQ record), before any inference request.
REASONS: dict[str, str] = {
    "empty": "no value, or an envelope whose image decodes to no bytes",
    "invalid_envelope": "JSON envelope that does not parse or breaks its schema (unknown fields included)",
    "bad_base64": "image_b64 is not valid standard base64",
    "unsupported_content_type": "content-type neither image/* nor JSON nor application/octet-stream",
    "invalid_metadata": "metadata header that is not a JSON object",
    "invalid_header": "a header the bridge reads (content-type, metadata, model) is not UTF-8",
    "unknown_model": "model (envelope field or header) that the inference endpoint does not serve",
}


@cache
def schema(name: str) -> dict[str, Any]:
    """A JSON Schema of schema/ by file stem: `image_data.envelope` or `image_predictions`."""
    return json.loads((SCHEMA_DIR / f"{name}.schema.json").read_text())


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    """A checked, reusable validator of schema `name`: `jsonschema.validate` checks the schema itself on every call,
    4.5 ms per envelope here, more than fetching the image it names."""
    cls = jsonschema.validators.validator_for(schema(name))
    cls.check_schema(schema(name))
    return cls(schema(name))


class ContractError(Exception):
    """A record that can never be classified: goes to the DLQ at once with `reason` as error_class."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class ImageRecord:
    """One parsed input record: what to send for inference and what to copy to the prediction."""

    id: str
    image: bytes
    content_type: str | None
    metadata: dict[str, Any] = field(default_factory=dict)
    envelope: bool = False
    model: str = ""
    reference: str | None = None  # s3:// or http(s):// (envelope `url`/`s3`): `image` is empty until fetched
    fetched: dict[str, Any] | None = None  # what the prediction echoes about it: ref, size, etag, version_id


def header(headers: Headers | None, name: str) -> bytes | None:
    """Last value of header `name` (case-insensitive), as Kafka allows repeated headers."""
    found = None
    for key, value in headers or ():
        if key.lower() == name:
            found = value
    return found


def _text(value: bytes | None) -> str | None:
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ContractError("invalid_header", "header is not UTF-8") from None


def _metadata_header(raw: bytes | None) -> dict[str, Any]:
    if raw is None or raw == b"":
        return {}
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("invalid_metadata", f"metadata header is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ContractError("invalid_metadata", "metadata header must be a JSON object")
    return value


def parse_record(key: bytes | None, value: bytes | None, headers: Headers | None, fallback_id: str,
                 models: Collection[str] = (), default_model: str = "") -> ImageRecord:
    """A consumed `image_data` record -> ImageRecord, or ContractError naming why it can't be classified.

    The id is the record key; an envelope's "id" is used when the key is empty; `fallback_id`
    (topic-partition-offset) when neither exists, so every record has an id in logs and outputs.
    The model is the envelope's "model", else the `model` header, else `default_model`; a model outside
    `models` (the served ones; empty = no check) is refused as `unknown_model`.
    """
    record = _parse(key, value, headers, fallback_id)
    record.model = record.model or _text(header(headers, "model")) or default_model
    if models and record.model not in models:
        raise ContractError("unknown_model", f"model {record.model!r} is not served here "
                                             f"(served: {', '.join(sorted(models))})")
    return record


def _parse(key: bytes | None, value: bytes | None, headers: Headers | None, fallback_id: str) -> ImageRecord:
    key_id = None
    if key:
        try:
            key_id = key.decode("utf-8")
        except UnicodeDecodeError:
            key_id = key.hex()
    if value is None or value == b"":
        raise ContractError("empty", "record has no value")
    ctype = media_type(_text(header(headers, "content-type"))) or None
    if is_json_body(ctype, value):
        return _parse_envelope(key_id, value, headers, fallback_id)
    if ctype and not (ctype.startswith(IMAGE_TYPES_PREFIX) or ctype == "application/octet-stream"):
        raise ContractError("unsupported_content_type", f"content-type {ctype!r} is neither an image type nor JSON")
    metadata = _metadata_header(header(headers, "metadata"))
    return ImageRecord(key_id or fallback_id, value, ctype, metadata)


def _parse_envelope(key_id: str | None, value: bytes, headers: Headers | None, fallback_id: str) -> ImageRecord:
    try:
        body = json.loads(value)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ContractError("invalid_envelope", f"JSON envelope does not parse: {exc}") from None
    exc = jsonschema.exceptions.best_match(validator("image_data.envelope").iter_errors(body))
    if exc is not None:  # the error jsonschema.validate would raise, without re-checking the schema per record
        where = "/".join(str(p) for p in exc.absolute_path) or "envelope"
        raise ContractError("invalid_envelope", f"{where}: {exc.message}")
    reference = body.get("url") or body.get("s3")  # the schema allows exactly one of image_b64, url, s3
    image = b""
    if reference is None:
        try:
            image = base64.b64decode(body["image_b64"], validate=True)
        except (binascii.Error, ValueError):
            raise ContractError("bad_base64", "image_b64 is not valid base64") from None
        if not image:
            raise ContractError("empty", "image_b64 decodes to no bytes")
    metadata = dict(body.get("metadata") or {})
    if not metadata:
        metadata = _metadata_header(header(headers, "metadata"))
    return ImageRecord(key_id or body.get("id") or fallback_id, image, body.get("content_type"), metadata, True,
                       body.get("model") or "", reference)


def utc_iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")




def decision_of(prediction: Prediction) -> tuple[str, float]:
    """(decision, review_threshold) of a prediction. A server older than the review band sends neither: its
    decision is derived here with the handler's own rule, and its review threshold is the threshold (no band), so
    every record carries both and consumers need no fallback of their own."""
    review_threshold = prediction.review_threshold
    if review_threshold is None:
        review_threshold = prediction.threshold
    if prediction.decision is not None:
        return prediction.decision, float(review_threshold)
    return (decide_band(float(prediction.harmful_score), float(prediction.threshold), float(review_threshold)),
            float(review_threshold))


def prediction_value(
    record: ImageRecord,
    prediction: Prediction,
    *,
    source: tuple[str, int, int],
    received_at: float,
    produced_at: float,
    inference_ms: float,
    batch_size: int,
    end_to_end_ms: float,
    attempts: int,
    producer: str = "bridge",
) -> bytes:
    """The JSON value of an `image_predictions` (and `image_review`) record (schema/image_predictions.schema.json);
    `categories` only when the model scores them."""
    topic, partition, offset = source
    decision, review_threshold = decision_of(prediction)
    categories = ({} if prediction.categories is None else
                  {"categories": {name: round(float(p), 6) for name, p in prediction.categories.items()}})
    return json.dumps(
        {
            "id": record.id,
            "label": prediction.label,
            "harmful_score": round(float(prediction.harmful_score), 6),
            "threshold": float(prediction.threshold),
            "decision": decision,
            "review_threshold": review_threshold,
            **categories,
            "model": prediction.model,
            "model_version": str(prediction.model_version),
            "metadata": record.metadata,
            "content_type": record.content_type,
            "received_at": utc_iso(received_at),
            "produced_at": utc_iso(produced_at),
            "inference_ms": round(inference_ms, 2),
            "batch_size": batch_size,
            "end_to_end_ms": round(end_to_end_ms, 2),
            "attempts": attempts,
            "source": {"topic": topic, "partition": partition, "offset": offset},
            "producer": producer,
            **({"reference": record.fetched} if record.fetched is not None else {}),
        },
        separators=(",", ":"),
    ).encode()


def prediction_headers(image_id: str) -> Headers:
    """Headers of a prediction (and its review copy)."""
    return [("content-type", b"application/json"), ("id", image_id.encode())]


def dlq_headers(
    original: Headers | None,
    *,
    error: str,
    error_class: str,
    status: int | None,
    attempts: int,
    model: str,
    source: tuple[str, int, int],
    source_timestamp_ms: int | None,
    failed_at: float,
    producer: str = "bridge",
) -> Headers:
    """Original headers + why the record failed (names in DLQ_HEADERS; values UTF-8 text)."""
    topic, partition, offset = source
    extra = {
        "error": error[:2000],
        "error_class": error_class,
        "error_status": "" if status is None else str(status),
        "attempts": str(attempts),
        "model": model,
        "source_topic": topic,
        "source_partition": str(partition),
        "source_offset": str(offset),
        "source_timestamp": "" if source_timestamp_ms is None else str(source_timestamp_ms),
        "failed_at": utc_iso(failed_at),
        "producer": producer,
    }
    kept = [(k, v) for k, v in (original or []) if k not in extra]
    return kept + [(k, v.encode()) for k, v in extra.items()]
