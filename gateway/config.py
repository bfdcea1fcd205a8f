"""Settings of the local gateway from environment variables.

One table, read like the bridge's and the fetcher's (handlers/env.py: `<NAME>_FILE` wins, "" means the default);
the README's settings table is checked against it. Addresses come from stack.env: the gateway is the local
stack's front door (on a cluster KServe's ingress and runtime take its place).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from handlers.env import reader

# name -> (default, description)
DEFAULTS: dict[str, tuple[str, str]] = {
    "GATEWAY_TIMEOUT_S": ("120", "seconds to wait for TorchServe's answer before a 504 `timeout`"),
    "GATEWAY_MAX_CONNECTIONS": ("256", "connections to TorchServe's inference and management APIs, at most"),
    "GATEWAY_MAX_BODY_BYTES": (str(40 * 1024 * 1024), "request body cap (bytes), also for a body after its "
                                                      "references are fetched: 413 `body_too_large` above it"),
    "LOG_LEVEL": ("INFO", "Python logging level"),
}


@dataclass(frozen=True)
class GatewayConfig:
    timeout_s: float
    max_connections: int
    max_body_bytes: int
    log_level: str

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> GatewayConfig:
        e = reader(environ, DEFAULTS)
        return cls(timeout_s=float(e("GATEWAY_TIMEOUT_S")), max_connections=int(e("GATEWAY_MAX_CONNECTIONS")),
                   max_body_bytes=int(e("GATEWAY_MAX_BODY_BYTES")), log_level=e("LOG_LEVEL"))
