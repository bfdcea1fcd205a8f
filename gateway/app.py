"""KServe-protocol front door for the local stack (what KServe's ingress + runtime give you on a cluster).

TorchServe itself answers `POST /v1/models/{m}:predict`, `:explain` and `POST /v2/models/{m}/infer`; those
are passed through byte for byte (the handler owns the envelopes). What TorchServe lacks for KServe clients
and probes is answered here from its management API, with kserve's own v2 data models:
`/v2/health/live`, `/v2/health/ready`, `/v2`, `/v2/models/{m}` (with the weights' provenance as
`parameters`), `/v2/models/{m}/ready`, `/v1/models`, `/v1/models/{m}`.

Every error leaves here as `{"error", "reason"}` (handlers/errors.py): the handler's already do; TorchServe's
own (`{"code", "type", "message"}`: unknown model, no worker, timeout) and aiohttp's (unknown route, wrong
method, body over GATEWAY_MAX_BODY_BYTES) are translated. Settings: gateway/config.py.
"""

from __future__ import annotations

import json
import logging
import tomllib
from collections.abc import Awaitable, Callable
from functools import cache
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from kserve.protocol.rest.v2_datamodels import (
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)

from gateway.config import GatewayConfig
from handlers.envelopes import FORM_TYPES, is_json_body, media_type, unsupported_content_type, v2_model_metadata
from handlers.errors import REASONS, ModerationError, error_body, reason_for_status
from handlers.fetch import Fetcher, may_hold_references, resolve_request
from handlers.provenance import Provenance
from handlers.stack import stack, url

log = logging.getLogger("gateway")
PLATFORM = "pytorch_torchserve"
SERVER_NAME = "image-moderation"
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

SESSION = web.AppKey("session", aiohttp.ClientSession)
INFERENCE = web.AppKey("inference", str)
MANAGEMENT = web.AppKey("management", str)
FETCHER = web.AppKey("fetcher", Fetcher)
CONFIG = web.AppKey("config", GatewayConfig)


def _json(model: Any, status: int = 200) -> web.Response:
    return web.Response(text=model.model_dump_json(), status=status, content_type="application/json")


async def _describe(request: web.Request, model: str) -> list[dict[str, Any]] | None:
    """TorchServe's description of one model (all versions), or None when it is not registered."""
    async with request.app[SESSION].get(f"{request.app[MANAGEMENT]}/models/{model}/all") as resp:
        if resp.status == 404:
            return None
        resp.raise_for_status()
        return await resp.json(content_type=None)


async def _registered(request: web.Request) -> tuple[str, list[dict[str, Any]]]:
    """(name, TorchServe description) of the model in the path; 503 if TorchServe is down, 404 if unknown."""
    name = request.match_info["model"]
    try:
        description = await _describe(request, name)
    except aiohttp.ClientError as exc:
        raise _http_error(web.HTTPServiceUnavailable, f"inference server unavailable: {exc}") from None
    if description is None:
        raise _http_error(web.HTTPNotFound, f"model {name} not found", "model_not_found")
    return name, description


def _error(reason: str, message: str) -> web.Response:
    return web.json_response(error_body(reason, message), status=REASONS[reason])


def _http_error(kind: type[web.HTTPException], message: str, reason: str | None = None) -> web.HTTPException:
    return kind(text=json.dumps(error_body(reason or reason_for_status(kind.status_code), message)),
                content_type="application/json")


_TORCHSERVE_TYPES: dict[str, str] = {"ModelNotFoundException": "model_not_found",
                                     "ServiceUnavailableException": "unavailable",
                                     "RequestTimeoutException": "timeout"}


def _translate(status: int, payload: bytes) -> dict[str, Any] | None:
    """Our error body for one of TorchServe's own (`{"code", "type", "message"}`), None for ours or non-errors."""
    if status < 400:
        return None
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    if isinstance(doc, dict) and "reason" in doc and "error" in doc:
        return None  # the handler's own body
    message = str(doc.get("message") or doc) if isinstance(doc, dict) else payload[:300].decode("utf-8", "replace")
    kind = str(doc.get("type", "")) if isinstance(doc, dict) else ""
    reason = _TORCHSERVE_TYPES.get(kind) or reason_for_status(status)
    return error_body(reason, (message or f"HTTP {status}")[:300])


@web.middleware
async def json_errors(request: web.Request,
                      handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """aiohttp's plain-text refusals (unknown route, wrong method, body too large) in our error format."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        reason = reason_for_status(exc.status)
        message = {
            413: f"request body over the gateway's limit of {request.app[CONFIG].max_body_bytes} bytes "
                 "(GATEWAY_MAX_BODY_BYTES)",
            405: f"{request.method} is not allowed on {request.path}",
            404: f"no route {request.method} {request.path}",
        }.get(exc.status, exc.reason)
        return web.json_response(error_body(reason, message), status=exc.status)


def _ready(description: list[dict[str, Any]] | None) -> bool:
    """Ready = at least one worker of the model is READY to take requests."""
    return bool(description) and any(
        w.get("status") == "READY" for version in description for w in version.get("workers", [])
    )


async def _models(request: web.Request) -> list[str]:
    async with request.app[SESSION].get(f"{request.app[MANAGEMENT]}/models") as resp:
        resp.raise_for_status()
        return [m["modelName"] for m in (await resp.json(content_type=None))["models"]]


async def forward(request: web.Request) -> web.Response:
    """Pass an inference request to TorchServe unchanged and relay its answer (status, type, body)."""
    ctype = media_type(request.headers.get("Content-Type"))
    if ctype in FORM_TYPES:  # TorchServe's frontend would parse the form itself and fail on image bytes with a 500
        err = unsupported_content_type(ctype)
        return web.json_response(err.to_dict(), status=err.status)
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    if is_json_body(ctype, body) and may_hold_references(body):
        try:
            body = await _resolved(body, request.app[FETCHER])
        except ModerationError as err:
            return web.json_response(err.to_dict(), status=err.status)
        limit = request.app[CONFIG].max_body_bytes
        if len(body) > limit:  # what TorchServe receives stays under the same cap as a body sent inline
            return _error("body_too_large", f"the fetched images make a request over the gateway's limit of "
                                            f"{limit} bytes (GATEWAY_MAX_BODY_BYTES)")
        headers = {k: v for k, v in headers.items() if k.lower() != "content-type"} | {
            "Content-Type": "application/json"}
    try:
        async with request.app[SESSION].post(
            f"{request.app[INFERENCE]}{request.path}",
            data=body,
            headers=headers,
            skip_auto_headers=() if "Content-Type" in request.headers else ("Content-Type",),
        ) as resp:
            payload = await resp.read()
            translated = _translate(resp.status, payload)
            if translated is not None:
                return web.json_response(translated, status=resp.status)
            ctype = resp.headers.get("Content-Type", "application/json")
            return web.Response(body=payload, status=resp.status, headers={"Content-Type": ctype})
    except aiohttp.ClientConnectionError as exc:
        return _error("unavailable", f"inference server unavailable: {exc}")
    except TimeoutError:
        return _error("timeout", f"no answer from the inference server within {request.app[CONFIG].timeout_s:g} s "
                                 "(GATEWAY_TIMEOUT_S)")


async def _resolved(body: bytes, fetcher: Fetcher) -> bytes:
    """A v1/v2 JSON body whose references (`{"url"}`/`{"s3"}` instances, the `image_url` input) are replaced by
    the fetched images, so TorchServe's workers only ever see bytes (a worker that fetched would stall its batch)."""
    try:
        doc = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return body  # the handler names what is wrong with it
    resolved = await resolve_request(doc, fetcher)
    return body if resolved is doc else json.dumps(resolved).encode()


async def live(_: web.Request) -> web.Response:
    return _json(ServerLiveResponse(live=True))


async def server_ready(request: web.Request) -> web.Response:
    try:
        names = await _models(request)
        ready = bool(names) and all([_ready(await _describe(request, m)) for m in names])
    except aiohttp.ClientError:
        ready = False
    return _json(ServerReadyResponse(ready=ready), 200 if ready else 503)


@cache
def server_version() -> str:
    """The project's own version, from pyproject.toml (the gateway runs from the repository)."""
    with (Path(__file__).resolve().parents[1] / "pyproject.toml").open("rb") as f:
        return tomllib.load(f)["project"]["version"]


async def server_metadata(_: web.Request) -> web.Response:
    return _json(ServerMetadataResponse(name=SERVER_NAME, version=server_version(), extensions=[]))


async def model_ready(request: web.Request) -> web.Response:
    name, description = await _registered(request)
    ready = _ready(description)
    return _json(ModelReadyResponse(name=name, ready=ready), 200 if ready else 503)


async def _described(request: web.Request, name: str) -> tuple[Provenance | None, bool]:
    """The weights' provenance and whether the model scores categories, asked from a worker through TorchServe's
    describe call ((None, False) if it cannot say)."""
    try:
        async with request.app[SESSION].get(f"{request.app[MANAGEMENT]}/models/{name}",
                                            params={"customized": "true"}) as resp:
            if resp.status != 200:
                return None, False
            described = (await resp.json(content_type=None))[0].get("customizedMetadata")
        fields = dict(json.loads(described) if isinstance(described, str) else described)
        categories = bool(fields.pop("categories", None))
        return Provenance(**fields), categories
    except (TimeoutError, aiohttp.ClientError, LookupError, TypeError, ValueError):
        return None, False


async def model_metadata(request: web.Request) -> web.Response:
    name, description = await _registered(request)
    provenance, categories = await _described(request, name)
    body = v2_model_metadata(name, [str(v.get("modelVersion")) for v in description], PLATFORM,
                             provenance.parameters() if provenance else None, categories)
    return web.json_response(ModelMetadataResponse.model_validate(body).model_dump(mode="json") | body)


async def v1_models(request: web.Request) -> web.Response:
    try:
        return web.json_response({"models": await _models(request)})
    except aiohttp.ClientError as exc:
        raise _http_error(web.HTTPServiceUnavailable, f"inference server unavailable: {exc}") from None


async def v1_model_status(request: web.Request) -> web.Response:
    """KServe v1 `GET /v1/models/{m}`: {"name", "ready"}; 503 while loading so probes can use it."""
    name, description = await _registered(request)
    ready = _ready(description)
    return web.json_response({"name": name, "ready": ready}, status=200 if ready else 503)


async def _session(app: web.Application):  # type: ignore[no-untyped-def]
    cfg = app[CONFIG]
    timeout = aiohttp.ClientTimeout(total=cfg.timeout_s)
    connector = aiohttp.TCPConnector(limit=cfg.max_connections)
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
    yield
    await app[SESSION].close()
    await app[FETCHER].close()


def build_app(inference_url: str | None = None, management_url: str | None = None,
              fetcher: Fetcher | None = None, config: GatewayConfig | None = None) -> web.Application:
    cfg = config or GatewayConfig.from_env()
    app = web.Application(client_max_size=cfg.max_body_bytes, middlewares=[json_errors])
    app[CONFIG] = cfg
    app[FETCHER] = fetcher or Fetcher()  # FETCH_* variables (handlers/fetch.py)
    app[INFERENCE] = inference_url or url("TORCHSERVE_INFERENCE_PORT")
    app[MANAGEMENT] = management_url or url("TORCHSERVE_MANAGEMENT_PORT")
    app.cleanup_ctx.append(_session)
    app.router.add_post(r"/v1/models/{model}:predict", forward)
    app.router.add_post(r"/v1/models/{model}:explain", forward)
    app.router.add_post("/v2/models/{model}/infer", forward)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", forward)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2", server_metadata)
    # A model name never holds ":", so `GET /v1/models/m:predict` is a 405, not "model m:predict not found".
    app.router.add_get("/v2/models/{model:[^/:]+}", model_metadata)
    app.router.add_get("/v2/models/{model:[^/:]+}/ready", model_ready)
    app.router.add_get("/v1/models", v1_models)
    app.router.add_get("/v1/models/{model:[^/:]+}", v1_model_status)
    return app


def main() -> None:
    cfg = GatewayConfig.from_env()
    logging.basicConfig(level=cfg.log_level, format="%(asctime)s %(levelname)s %(message)s")
    s = stack()
    web.run_app(build_app(config=cfg), host=s["STACK_HOST"], port=int(s["INFERENCE_PORT"]), access_log=None)


if __name__ == "__main__":
    main()
