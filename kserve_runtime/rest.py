"""The REST side of the runtime: our routes in front of KServe's on its FastAPI app, one error format.

KServe's own v1/v2 endpoints parse JSON only; TorchServe's contract also takes raw image bytes on either path,
several images per v2 request, and our error bodies. So the data-plane routes (v1 `:predict`/`:explain`, v2
`infer`, v2 model metadata with the weights' provenance) are ours, registered before KServe adds its routes;
health, readiness, server metadata and /metrics stay KServe's. A middleware puts every other refusal (unknown
route, wrong method, KServe's own errors) into `{"error", "reason"}` and counts responses per status class.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from handlers.envelopes import (
    BINARY_HEADER,
    ParsedRequest,
    is_json_body,
    parse_request,
    parse_v2_binary,
    v2_model_metadata,
)
from handlers.errors import REASONS, ModerationError, error_body, reason_for_status
from handlers.fetch import Fetcher, may_hold_references, resolve_request
from kserve_runtime.metrics import FRONTEND
from kserve_runtime.model import ModerationModel, ServerRefusal

PLATFORM = "onnxruntime_kserve"


def _error(reason: str, message: str, status: int) -> JSONResponse:
    return JSONResponse(error_body(reason, message), status_code=status)


def install(app: FastAPI, models: dict[str, ModerationModel], max_body_bytes: int,
            fetcher: Fetcher | None = None) -> None:
    """Add the data-plane routes, the error handler and the middleware to KServe's app (before it starts).
    `fetcher` resolves images named by reference (FETCH_* variables) on the event loop, before the batcher: on the
    cluster this predictor takes `{"url"}`/`{"s3"}`/`image_url` requests itself, without a gateway."""
    fetcher = fetcher or Fetcher()

    async def parsed(request: Request, model: ModerationModel) -> ParsedRequest:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_body_bytes:
            raise _TooLarge()
        body = await request.body()
        if len(body) > max_body_bytes:
            raise _TooLarge()
        binary_header = request.headers.get(BINARY_HEADER)
        if binary_header is not None:  # OIP v2 binary tensor data extension (tritonclient's default)
            if not binary_header.isdigit() or int(binary_header) > len(body):
                raise ModerationError("malformed_request", f"invalid {BINARY_HEADER}: {binary_header[:40]!r}")
            return parse_v2_binary(body, int(binary_header))
        ctype = request.headers.get("content-type")
        if is_json_body(ctype, body) and may_hold_references(body):
            try:
                doc = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError):
                doc = None
            if isinstance(doc, dict):
                resolved = parse_request(await resolve_request(doc, fetcher), "application/json")
                if sum(map(len, resolved.images)) > max_body_bytes:  # the same cap as for images sent inline
                    raise _TooLarge()
                return resolved
        return parse_request(body, ctype)

    def lookup(name: str) -> ModerationModel:
        if name not in models:
            raise _NotFound(name)
        return models[name]

    async def v1_predict(model: str, request: Request) -> Response:
        m = lookup(model)
        return JSONResponse(await m.answer(await parsed(request, m)))

    async def v1_explain(model: str, request: Request) -> Response:
        m = lookup(model)
        return JSONResponse(await m.answer(await parsed(request, m), explain=True))

    async def v2_infer(model: str, request: Request, version: str | None = None) -> Response:
        m = lookup(model)
        return JSONResponse(await m.answer(await parsed(request, m)))

    async def v2_metadata(model: str) -> Response:
        m = lookup(model)
        provenance = m.scorer.provenance.parameters() if m.scorer else None
        categories = bool(m.scorer and m.scorer.categories)
        return JSONResponse(v2_model_metadata(m.name, [m.version], PLATFORM, provenance, categories))

    async def verb_needs_post(model: str, request: Request) -> Response:
        # else KServe's GET /v1/models/{name} would answer "model m:predict does not exist"
        return _error("method_not_allowed", f"{request.method} is not allowed on {request.url.path}", 405)

    app.add_api_route("/v1/models/{model}:predict", verb_needs_post, methods=["GET", "PUT", "DELETE"])
    app.add_api_route("/v1/models/{model}:explain", verb_needs_post, methods=["GET", "PUT", "DELETE"])
    app.add_api_route("/v1/models/{model}:predict", v1_predict, methods=["POST"])
    app.add_api_route("/v1/models/{model}:explain", v1_explain, methods=["POST"])
    app.add_api_route("/v2/models/{model}/infer", v2_infer, methods=["POST"])
    app.add_api_route("/v2/models/{model}/versions/{version}/infer", v2_infer, methods=["POST"])
    app.add_api_route("/v2/models/{model}", v2_metadata, methods=["GET"])

    async def moderation_error(_: Request, err: Exception) -> Response:
        assert isinstance(err, ModerationError)
        return JSONResponse(err.to_dict(), status_code=err.status)

    async def not_found(_: Request, err: Exception) -> Response:
        return _error("model_not_found", f"model {err} not found", 404)

    async def too_large(_: Request, __: Exception) -> Response:
        return _error("body_too_large", f"request body over the limit of {max_body_bytes} bytes "
                                        "(KSERVE_MAX_BODY_BYTES)", 413)

    async def server_refusal(_: Request, err: Exception) -> Response:
        assert isinstance(err, ServerRefusal)
        return _error(err.reason, err.message, REASONS[err.reason])

    app.add_exception_handler(ServerRefusal, server_refusal)
    app.add_exception_handler(ModerationError, moderation_error)
    app.add_exception_handler(_NotFound, not_found)
    app.add_exception_handler(_TooLarge, too_large)

    app.add_middleware(OneErrorFormat)


class OneErrorFormat:
    """Pure ASGI middleware (Starlette's BaseHTTPMiddleware costs the event loop far more): counts responses per
    status class for TorchServe's Requests2XX/4XX/5XX, and puts any refusal without a `reason` (unknown route,
    wrong method, KServe's own errors) into `{"error", "reason"}`. Responses below 400 stream through untouched."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def capture(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                FRONTEND.request(message["status"])
                if message["status"] < 400:
                    await send(message)
                else:
                    start.update(message)
                return
            if not start:
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                status, body = _our_error(scope, start["status"], b"".join(chunks))
                headers = [(k, v) for k, v in start.get("headers", []) if k.lower() not in (b"content-length",
                                                                                          b"content-type")]
                await send({"type": "http.response.start", "status": status, "headers": [
                    *headers, (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})

        await self.app(scope, receive, capture)


def _our_error(scope: dict[str, Any], status: int, body: bytes) -> tuple[int, bytes]:
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict) and "error" in doc and "reason" in doc:
        return status, body
    method, path = scope.get("method", ""), scope.get("path", "")
    if status == 404 and isinstance(doc, dict) and doc.get("detail") == "Not Found":
        message = f"no route {method} {path}"
    elif status == 405:
        message = f"{method} is not allowed on {path}"
    elif isinstance(doc, dict):
        message = str(doc.get("error") or doc.get("detail") or doc)
    else:
        message = body[:300].decode("utf-8", "replace")
    reason = "model_not_found" if status == 404 and "does not exist" in message else reason_for_status(status)
    return status, json.dumps(error_body(reason, message)).encode()


class _NotFound(Exception):
    """No model of that name is served (404 model_not_found)."""


class _TooLarge(Exception):
    """Body over KSERVE_MAX_BODY_BYTES (413 body_too_large)."""
