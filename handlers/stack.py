"""Read the local stack contract (`stack.env`) so Python code never repeats a port number."""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path

STACK_ENV = Path(__file__).resolve().parent.parent / "stack.env"


@cache
def stack() -> dict[str, str]:
    """KEY=VALUE pairs of stack.env, overridable by the process environment."""
    values: dict[str, str] = {}
    for line in STACK_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = os.environ.get(key.strip(), value.strip())
    return values


def url(port_key: str) -> str:
    """http://127.0.0.1:<port> for a port key such as INFERENCE_PORT."""
    s = stack()
    return f"http://{s['STACK_HOST']}:{s[port_key]}"
