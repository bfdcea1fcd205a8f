"""The predictor image's PID 1 (docker/torchserve_init.py) against the real TorchServe: a terminating pod's SIGTERM
must stop TorchServe, where `torchserve` itself, as PID 1, ignores it.

Each run is a PID namespace of its own (and a network namespace, so its ports cannot meet the local stack's), with
the signal sent from this, the parent, namespace: exactly how the kubelet's SIGTERM reaches a container.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "docker" / "torchserve_init.py"
TORCHSERVE = Path(sys.executable).with_name("torchserve")
STARTED_S = 120  # an empty model store: the JVM alone
STOPPED_S = 20  # the predictor's preStop sleep is 5-8 s on top of this, inside a 30 s grace period
IGNORED_S = 5

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                                reason="needs root and unshare(1) for a PID namespace")


def _as_pid1(tmp_path: Path, *launcher: str) -> tuple[subprocess.Popen[bytes], psutil.Process]:
    """`launcher --start --foreground ...` as PID 1 of new PID and network namespaces (with its own /proc, as in
    a container), once its JVM runs."""
    store = tmp_path / "store"
    store.mkdir()
    config = tmp_path / "config.properties"
    config.write_text("inference_address=http://127.0.0.1:8080\nmanagement_address=http://127.0.0.1:8081\n"
                      "metrics_address=http://127.0.0.1:8082\ndisable_system_metrics=true\n")
    args = [*launcher, "--start", "--foreground", "--ncs", "--disable-token-auth", f"--model-store={store}",
            f"--ts-config={config}"]
    script = 'ip link set lo up && exec "$@"'
    out = tmp_path / "out.log"
    with out.open("wb") as sink:
        unshare = subprocess.Popen(
            ["unshare", "--pid", "--fork", "--mount-proc", "--net", "--kill-child", "sh", "-c", script, "sh", *args],
            cwd=tmp_path, stdout=sink, stderr=subprocess.STDOUT,
            env={**os.environ, "LOG_LOCATION": str(tmp_path / "logs"), "METRICS_LOCATION": str(tmp_path / "logs"),
                 "TEMP": str(tmp_path)})
    deadline = time.monotonic() + STARTED_S
    while time.monotonic() < deadline:
        if "Model server started." in out.read_text(errors="replace"):  # the frontend's own line, APIs bound
            return unshare, psutil.Process(unshare.pid).children()[0]
        assert unshare.poll() is None, f"{launcher} exited with {unshare.returncode}: {out.read_text()[-2000:]}"
        time.sleep(0.5)
    unshare.kill()
    pytest.fail(f"TorchServe under {launcher} did not start within {STARTED_S} s: {out.read_text()[-2000:]}")


def _stop(unshare: subprocess.Popen[bytes]) -> None:
    if unshare.poll() is None:
        unshare.send_signal(signal.SIGKILL)  # --kill-child: the namespace's PID 1, and with it everything in it
        unshare.wait(30)


def test_sigterm_to_pid1_stops_torchserve_within_seconds(tmp_path: Path) -> None:
    unshare, pid1 = _as_pid1(tmp_path, sys.executable, str(INIT))
    try:
        t0 = time.monotonic()
        pid1.send_signal(signal.SIGTERM)
        unshare.wait(STOPPED_S)
        print(f"TorchServe under docker/torchserve_init.py stopped {time.monotonic() - t0:.1f} s after SIGTERM")
        assert unshare.returncode == 0
    finally:
        _stop(unshare)


def test_torchserve_itself_as_pid1_ignores_sigterm(tmp_path: Path) -> None:
    """Why the image has an init of its own: without it the kubelet's SIGTERM is dropped."""
    unshare, pid1 = _as_pid1(tmp_path, str(TORCHSERVE))
    try:
        pid1.send_signal(signal.SIGTERM)
        time.sleep(IGNORED_S)
        assert unshare.poll() is None and pid1.is_running()
    finally:
        _stop(unshare)
