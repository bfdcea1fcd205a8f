"""HTTP side of the bridge: /livez, /readyz and Prometheus /metrics on BRIDGE_PORT.

/livez fails only when the process is wedged (fetch loop stalled) or dying on a fatal Kafka error, so
Kubernetes restarts it; /readyz also requires the cluster and the model endpoint to answer and no partition
to be stuck (a record unfinished for BRIDGE_STUCK_AFTER_S, or one the DLQ cannot take): its body names each
stuck partition and offset, so "ready" never hides a partition that stopped committing.
"""

from __future__ import annotations

from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


class _Probed(Protocol):
    @property
    def live(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def endpoint_ok(self) -> bool: ...

    in_flight: int
    kafka_ok: bool
    group_member: bool | None
    stuck: list[dict[str, Any]]


class HealthServer:
    def __init__(self, bridge: _Probed, host: str, port: int) -> None:
        self.bridge = bridge
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    async def _livez(self, _: web.Request) -> web.Response:
        ok = self.bridge.live
        return web.json_response({"live": ok}, status=200 if ok else 503)

    async def _readyz(self, _: web.Request) -> web.Response:
        b = self.bridge
        ok = b.ready
        body = {"ready": ok, "kafka": b.kafka_ok, "in_group": b.group_member, "endpoint": b.endpoint_ok,
                "in_flight": b.in_flight, "stuck": b.stuck}
        return web.json_response(body, status=200 if ok else 503)

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/livez", self._livez)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
