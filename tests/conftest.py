"""Session fixtures shared by every test module: the real local serving stack.

`serving` makes sure TorchServe + the KServe gateway from `scripts/serving.sh` run on the stack.env
ports: it reuses a stack that is already up (e.g. `make up`), otherwise starts one and stops it at the
end of the session. Archives must exist (`make test` builds them first).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from handlers.stack import url

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "scripts" / "serving.sh"


def _ready() -> bool:
    try:
        return httpx.get(f"{url('INFERENCE_PORT')}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _already_running() -> bool:
    """Any serving process with a live pidfile: someone else (make up, another test run) owns it."""
    for name in ("torchserve", "gateway"):
        pidfile = ROOT / ".run" / f"{name}.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), 0)
                return True
            except (ValueError, ProcessLookupError, PermissionError):
                continue
    return False


def _wait_ready(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _ready():
        if time.monotonic() > deadline:
            pytest.fail(f"serving stack not ready after {timeout_s:.0f}s (see .run/logs/)")
        time.sleep(0.5)


@pytest.fixture(scope="session")
def serving() -> Iterator[str]:
    """Base URL of the KServe-protocol endpoint (http://127.0.0.1:8080) with both models ready.

    Stops the stack at the end only if this session started it.
    """
    started = False
    if not _ready():
        if _already_running():
            _wait_ready(240)
        else:
            if not any((ROOT / "model-archive" / "build" / "model-store").glob("*.mar")):
                pytest.fail("no model archives: run `make models` (or `make test`, which builds them)")
            subprocess.run([str(SERVING), "start"], check=True)
            started = True
    yield url("INFERENCE_PORT")
    if started:
        subprocess.run([str(SERVING), "stop"], check=True)


@pytest.fixture(scope="session")
def client(serving: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=serving, timeout=120) as c:
        yield c
