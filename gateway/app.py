"""KServe-protocol front door for the local stack (what KServe's ingress + runtime give you on a cluster).

TorchServe itself answers `POST /v1/models/{m}:predict` and `POST /v2/models/{m}/infer`; those are passed
through byte for byte (the handler owns the envelopes). What TorchServe lacks for KServe clients and
probes is answered here from its management API, with kserve's own v2 data models:
`/v2/health/live`, `/v2/health/ready`, `/v2`, `/v2/models/{m}`, `/v2/models/{m}/ready`, `/v1/models`,
`/v1/models/{m}`.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import aiohttp
from aiohttp import web
from kserve.protocol.rest.v2_datamodels import (
    MetadataTensor,
    ModelMetadataResponse,
    ModelReadyResponse,
    ServerLiveResponse,
    ServerMetadataResponse,
    ServerReadyResponse,
)

from handlers.envelopes import V2_INPUT_NAME, V2_OUTPUTS
from handlers.stack import stack, url

log = logging.getLogger("gateway")
PLATFORM = "pytorch_torchserve"
SERVER_NAME = "image-moderation"
MAX_BODY_BYTES = int(os.environ.get("GATEWAY_MAX_BODY_BYTES", str(40 * 1024 * 1024)))
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}

SESSION = web.AppKey("session", aiohttp.ClientSession)
INFERENCE = web.AppKey("inference", str)
MANAGEMENT = web.AppKey("management", str)


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
        raise _http_error(web.HTTPNotFound, f"model {name} not found")
    return name, description


def _http_error(kind: type[web.HTTPException], message: str) -> web.HTTPException:
    return kind(text=json.dumps({"error": message}), content_type="application/json")


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
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
    try:
        async with request.app[SESSION].post(
            f"{request.app[INFERENCE]}{request.path}",
            data=body,
            headers=headers,
            skip_auto_headers=() if "Content-Type" in request.headers else ("Content-Type",),
        ) as resp:
            payload = await resp.read()
            ctype = resp.headers.get("Content-Type", "application/json")
            return web.Response(body=payload, status=resp.status, headers={"Content-Type": ctype})
    except aiohttp.ClientConnectionError as exc:
        raise _http_error(web.HTTPServiceUnavailable, f"inference server unavailable: {exc}") from None


async def live(_: web.Request) -> web.Response:
    return _json(ServerLiveResponse(live=True))


async def server_ready(request: web.Request) -> web.Response:
    try:
        names = await _models(request)
        ready = bool(names) and all([_ready(await _describe(request, m)) for m in names])
    except aiohttp.ClientError:
        ready = False
    return _json(ServerReadyResponse(ready=ready), 200 if ready else 503)


async def server_metadata(_: web.Request) -> web.Response:
    return _json(ServerMetadataResponse(name=SERVER_NAME, version="0.1.0", extensions=[]))


async def model_ready(request: web.Request) -> web.Response:
    name, description = await _registered(request)
    ready = _ready(description)
    return _json(ModelReadyResponse(name=name, ready=ready), 200 if ready else 503)


async def model_metadata(request: web.Request) -> web.Response:
    name, description = await _registered(request)
    meta = ModelMetadataResponse(
        name=name,
        versions=[str(v.get("modelVersion")) for v in description],
        platform=PLATFORM,
        inputs=[MetadataTensor(name=V2_INPUT_NAME, datatype="BYTES", shape=[-1])],
        outputs=[MetadataTensor(name=name, datatype=dt, shape=[-1]) for name, dt in V2_OUTPUTS.items()],
    )
    return _json(meta)


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
    timeout = aiohttp.ClientTimeout(total=float(os.environ.get("GATEWAY_TIMEOUT_S", "120")))
    connector = aiohttp.TCPConnector(limit=int(os.environ.get("GATEWAY_MAX_CONNECTIONS", "256")))
    app[SESSION] = aiohttp.ClientSession(timeout=timeout, connector=connector, auto_decompress=False)
    yield
    await app[SESSION].close()


def build_app(inference_url: str | None = None, management_url: str | None = None) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app[INFERENCE] = inference_url or url("TORCHSERVE_INFERENCE_PORT")
    app[MANAGEMENT] = management_url or url("TORCHSERVE_MANAGEMENT_PORT")
    app.cleanup_ctx.append(_session)
    app.router.add_post(r"/v1/models/{model}:predict", forward)
    app.router.add_post("/v2/models/{model}/infer", forward)
    app.router.add_post("/v2/models/{model}/versions/{version}/infer", forward)
    app.router.add_get("/v2/health/live", live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2", server_metadata)
    app.router.add_get("/v2/models/{model}", model_metadata)
    app.router.add_get("/v2/models/{model}/ready", model_ready)
    app.router.add_get("/v1/models", v1_models)
    app.router.add_get("/v1/models/{model}", v1_model_status)
    return app


def main() -> None:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"), format="%(asctime)s %(levelname)s %(message)s")
    s = stack()
    web.run_app(build_app(), host=s["STACK_HOST"], port=int(s["INFERENCE_PORT"]), access_log=None)


if __name__ == "__main__":
    main()
