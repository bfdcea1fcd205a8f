"""HTTP side of the bridge: /livez, /readyz and Prometheus /metrics on BRIDGE_PORT.

/livez fails only when the process is wedged (fetch loop stalled) or dying on a fatal Kafka error, so
Kubernetes restarts it; /readyz also requires the cluster and the model endpoint to answer and no partition
to be stuck (a record unfinished for BRIDGE_STUCK_AFTER_S, or one the DLQ cannot take): its body names each
stuck partition and offset, so "ready" never hides a partition that stopped committing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest


@dataclass
class ClusterContact:
    """What the bridge last heard from its Kafka cluster: whether it answers at all, and whether the broker lists
    the consumer in its group, each with the moment it stopped. /readyz reports both; /livez fails once either has
    lasted too long (`lost_for`). The consumer's own errors cannot tell the second: a consumer out of its group
    polls without error and consumes nothing, while the broker answers the bridge's other clients."""

    reachable: bool = False
    unreachable_since: float | None = field(default_factory=time.monotonic)  # unreachable until the first answer
    in_group: bool | None = None  # the broker's last word on the membership (None: none yet)
    out_of_group_since: float | None = None

    def answered(self, ok: bool) -> None:
        """The cluster answered (or not) a round of requests; a repeated failure keeps the first moment."""
        self.reachable = ok
        if ok:
            self.unreachable_since = None
        elif self.unreachable_since is None:
            self.unreachable_since = time.monotonic()

    def listed(self, member: bool | None) -> bool:
        """The broker's word on the membership (None: no answer, nothing learnt). True when the consumer has just
        dropped out of a group it was in (joining at start is not dropping out)."""
        if member is None:
            return False
        dropped = False
        if member:
            self.out_of_group_since = None
        elif self.out_of_group_since is None:
            self.out_of_group_since = time.monotonic()
            dropped = bool(self.in_group)
        self.in_group = member
        return dropped

    def lost_for(self, now: float) -> float:
        """Seconds since the cluster stopped answering or stopped listing the consumer, whichever came first."""
        since = [t for t in (self.unreachable_since, self.out_of_group_since) if t is not None]
        return now - min(since) if since else 0.0


class _Probed(Protocol):
    @property
    def live(self) -> bool: ...

    @property
    def ready(self) -> bool: ...

    @property
    def endpoint_ok(self) -> bool: ...

    in_flight: int
    contact: ClusterContact
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
        body = {"ready": ok, "kafka": b.contact.reachable, "in_group": b.contact.in_group, "endpoint": b.endpoint_ok,
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
