"""Session fixtures shared by every test module: the real local serving stack, on either runtime.

The stack listens on the stack.env ports (:8080 for KServe v1/v2 on both runtimes), so one runtime runs at a
time. `serving` wants the default runtime ($RUNTIME, torchserve); `runtime_stack` is parametrised over both, so
the serving-contract modules run once per runtime (pytest groups the tests per runtime, which keeps switches
few). A stack already running (`make up`) is reused when it is the runtime asked for; one this session started
is switched or stopped at the end. Archives must exist (`make test` builds them first).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from handlers.stack import stack, url

ROOT = Path(__file__).resolve().parent.parent
SERVING = ROOT / "scripts" / "serving.sh"
RUNTIMES = ("torchserve", "kserve")
DEFAULT_RUNTIME = os.environ.get("RUNTIME") or "torchserve"


@dataclass(frozen=True)
class Runtime:
    """What differs between the runtimes for a client: where the metrics are, and whether gRPC is served."""

    name: str
    base_url: str

    @property
    def metrics_url(self) -> str:
        if self.name == "kserve":
            return f"{self.base_url}/metrics"
        return f"{url('TORCHSERVE_METRICS_PORT')}/metrics"

    @property
    def grpc_target(self) -> str | None:
        """OIP v2 gRPC address (the KServe runtime serves it; TorchServe's 7070 speaks its own protocol)."""
        return f"{stack()['STACK_HOST']}:{stack()['INFERENCE_GRPC_PORT']}" if self.name == "kserve" else None


def _ready() -> bool:
    try:
        return httpx.get(f"{url('INFERENCE_PORT')}/v2/health/ready", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _running_runtime() -> str | None:
    """The runtime of a stack with a live process (someone's `make up`, or this session), else None."""
    for name in ("torchserve", "gateway", "kserve"):
        pidfile = ROOT / ".run" / f"{name}.pid"
        if pidfile.exists():
            try:
                os.kill(int(pidfile.read_text().strip()), 0)
            except (ValueError, ProcessLookupError, PermissionError):
                continue
            marker = ROOT / ".run" / "runtime"
            return marker.read_text().strip() if marker.exists() else "torchserve"
    return None


def _wait_ready(timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not _ready():
        if time.monotonic() > deadline:
            pytest.fail(f"serving stack not ready after {timeout_s:.0f}s (see .run/logs/)")
        time.sleep(0.5)


class StackControl:
    """Starts, switches and finally stops the runtime on :8080; never touches a stack it did not start."""

    def __init__(self) -> None:
        self.started: str | None = None

    def ensure(self, runtime: str) -> Runtime:
        running = _running_runtime()
        if running == runtime:
            _wait_ready(240)
            return Runtime(runtime, url("INFERENCE_PORT"))
        if running is not None and self.started != running:
            pytest.skip(f"a {running} stack started outside this test session holds :8080; "
                        f"`make down` to test the {runtime} runtime")
        if not any((ROOT / "model-archive" / "build" / "model-store").glob("*.mar")):
            pytest.fail("no model archives: run `make models` (or `make test`, which builds them)")
        if running is not None:
            subprocess.run([str(SERVING), "stop"], check=True, capture_output=True)
        subprocess.run([str(SERVING), "start"], check=True, env={**os.environ, "RUNTIME": runtime})
        self.started = runtime
        return Runtime(runtime, url("INFERENCE_PORT"))

    def close(self) -> None:
        if self.started is not None and _running_runtime() == self.started:
            subprocess.run([str(SERVING), "stop"], check=True, capture_output=True)


@pytest.fixture(scope="session")
def stack_control() -> Iterator[StackControl]:
    control = StackControl()
    yield control
    control.close()


@pytest.fixture(scope="session", params=RUNTIMES)
def runtime_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def runtime_stack(stack_control: StackControl, runtime_name: str) -> Runtime:
    """The serving stack of one runtime (each test using this runs once per runtime)."""
    return stack_control.ensure(runtime_name)


@pytest.fixture
def serving(stack_control: StackControl) -> str:
    """Base URL of the KServe-protocol endpoint (http://127.0.0.1:8080) on the default runtime."""
    return stack_control.ensure(DEFAULT_RUNTIME).base_url


@pytest.fixture
def client(runtime_stack: Runtime) -> Iterator[httpx.Client]:
    """A client of :8080, parametrised over both runtimes (the serving contract is the same)."""
    with httpx.Client(base_url=runtime_stack.base_url, timeout=120) as c:
        yield c
