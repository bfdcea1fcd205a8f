"""Async client of the KServe inference endpoint (Open Inference Protocol v2, or KServe v1).

Request bodies and response parsing come from `handlers.envelopes` (the one wire contract). What this
module adds is the failure taxonomy the bridge acts on: transient failures (connection refused,
timeouts, 5xx, 429, model not loaded) are retried with backoff; permanent ones (the handler's 4xx
naming a bad image, with its index in a multi-image request) go to the DLQ.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import aiohttp

from handlers.envelopes import Prediction, predictions_from, request_body

# 4xx that say nothing about the image: the endpoint is not (yet) able to serve -> retry.
TRANSIENT_4XX = {404, 408, 409, 425, 429}


@dataclass
class EndpointError(Exception):
    """Why a call to the inference endpoint failed; `transient` decides retry vs DLQ. (Not KServe's server-side
    `InferenceError`: this is the client's view of the endpoint.)"""

    transient: bool
    reason: str  # handler reason (not_an_image, ...) or connection/timeout/http_503/...
    message: str
    status: int | None = None
    index: int | None = None  # position of the offending image in a multi-image request

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"

    @property
    def endpoint_down(self) -> bool:
        """Failures that mean "nobody is serving": stop fetching until the endpoint is ready again."""
        return self.reason in ("connection", "http_503", "http_404", "http_502")


def classify(status: int, body: bytes) -> EndpointError:
    """Map a non-200 answer to an EndpointError (handler errors are JSON {"error","reason","index"})."""
    try:
        doc: Any = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError):
        doc = None
    doc = doc if isinstance(doc, dict) else {}
    message = str(doc.get("error") or doc.get("message") or body[:300].decode("utf-8", "replace") or f"HTTP {status}")
    index = doc.get("index") if isinstance(doc.get("index"), int) else None
    if status >= 500 or status in TRANSIENT_4XX:
        return EndpointError(True, f"http_{status}", message, status)
    if 400 <= status < 500:
        return EndpointError(False, str(doc.get("reason") or f"http_{status}"), message, status, index)
    return EndpointError(True, f"http_{status}", message, status)


class InferenceClient:
    def __init__(self, base_url: str, model: str, protocol: str, timeout_s: float, max_connections: int,
                 ready_path: str = "") -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.protocol = protocol
        self.ready_path = ready_path
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    @property
    def infer_url(self) -> str:
        return self.url_for(self.model)

    def url_for(self, model: str) -> str:
        """Inference URL of `model` (records may pick any served model; see contract.parse_record)."""
        if self.protocol == "v1":
            return f"{self.base_url}/v1/models/{model}:predict"
        return f"{self.base_url}/v2/models/{model}/infer"

    @property
    def ready_url(self) -> str:
        """The model's KServe readiness, unless INFERENCE_READY_PATH names another (a bare TorchServe has /ping)."""
        if self.ready_path:
            return f"{self.base_url}/{self.ready_path.lstrip('/')}"
        if self.protocol == "v1":
            return f"{self.base_url}/v1/models/{self.model}"
        return f"{self.base_url}/v2/models/{self.model}/ready"

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=self.timeout, connector=aiohttp.TCPConnector(limit=self.max_connections + 2)
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def infer(self, images: list[bytes], request_id: str | None = None,
                    model: str | None = None) -> list[Prediction]:
        """One request for all `images` to `model` (default: the configured one); predictions in order."""
        data = request_body(images, "v2" if self.protocol == "v2" else "v1", request_id)
        try:
            async with self.session().post(
                self.url_for(model or self.model), data=data, headers={"Content-Type": "application/json"}
            ) as resp:
                payload = await resp.read()
                status = resp.status
        except TimeoutError as exc:
            raise EndpointError(True, "timeout", f"no answer within {self.timeout.total}s") from exc
        except aiohttp.ClientConnectionError as exc:
            raise EndpointError(True, "connection", str(exc) or type(exc).__name__) from exc
        except aiohttp.ClientError as exc:
            raise EndpointError(True, "client_error", str(exc) or type(exc).__name__) from exc
        if status != 200:
            raise classify(status, payload)
        try:
            preds = predictions_from(json.loads(payload))
        except (ValueError, KeyError, TypeError) as exc:
            raise EndpointError(True, "bad_response", f"unparseable answer: {exc}", status) from exc
        if len(preds) != len(images):
            raise EndpointError(True, "bad_response", f"{len(preds)} predictions for {len(images)} images", status)
        return preds

    async def ready(self) -> bool:
        """Is the model ready to serve (KServe model readiness)?"""
        try:
            async with self.session().get(self.ready_url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                await resp.read()
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
