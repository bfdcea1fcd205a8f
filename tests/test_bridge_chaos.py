"""Chaos on the real stack: N ≥ 500 ids per test, something is killed mid-stream, and every id must still
reach `image_predictions` or the DLQ. Zero lost is asserted; duplicates (at-least-once repeats) are
counted and printed (`pytest -rP` shows them) and appended to .run/logs/chaos-report.txt."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable

import httpx
import psutil
import pytest

from tests.image_factory import jpeg
from tests.kafka_support import (
    KAFKA_SH,
    LOG_DIR,
    ROOT,
    SERVING_SH,
    BridgeProcess,
    Topics,
    collect,
    kafka,  # noqa: F401  (fixture)
    produce,
    raw_record,
    topics,  # noqa: F401  (fixture)
    wait_for,
)

pytestmark = pytest.mark.usefixtures("serving")
N = int(os.environ.get("CHAOS_N", "500"))
MID_STREAM = N // 5  # predictions acknowledged before the fault is injected


def _records(label: str) -> tuple[set[str], list]:
    """N small distinct JPEGs (decode and inference cost like any photo, little broker/CPU overhead)."""
    ids = [f"{label}-{i:05d}" for i in range(N)]
    return set(ids), [raw_record(i, jpeg(48, 48, seed=n, quality=70), {"n": n}) for n, i in enumerate(ids)]


def _report(line: str) -> None:
    print(line)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with (LOG_DIR / "chaos-report.txt").open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


def _alive(pid: int) -> bool:
    """Running and not a zombie (a killed process stays in the table until its parent reaps it)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


# Shorter than the default 120 s, so a wedged consumer is replaced within the test's wait.
BRIDGE_ENV = {"BRIDGE_KAFKA_UNREACHABLE_RESTART_S": "60"}


def _bridge(kafka: str, topics: Topics, serving: str) -> BridgeProcess:  # noqa: F811
    return BridgeProcess(topics, kafka, serving, **BRIDGE_ENV).start()


class _Kubelet:
    """What the kubelet does with the chart's liveness probe: a bridge whose /livez answers 503 (wedged: its
    fetch loop stopped, or the broker has not listed its consumer in the group for a while) is replaced by a new
    process. A consumer that never rejoins after a broker restart (rare: once in about ten broker-restart runs)
    then costs the test a restart instead of failing it, and the test checks what a deployment gets."""

    def __init__(self, bridge: BridgeProcess, restart: Callable[[], BridgeProcess]) -> None:
        self.bridge, self.restart, self.restarts = bridge, restart, 0
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()

    def _watch(self) -> None:
        while not self.done.wait(2):
            with self.lock:
                try:
                    wedged = httpx.get(f"{self.bridge.url}/livez", timeout=5).status_code == 503
                except httpx.HTTPError:  # starting or being replaced by the fault: not a liveness answer
                    continue
                if wedged:
                    print(f"kubelet: /livez 503, bridge replaced; its log:\n{self.bridge.tail()}")
                    self.bridge.kill()
                    self.bridge = self.restart()
                    self.restarts += 1

    def stop(self) -> BridgeProcess:
        self.done.set()
        self.thread.join()
        return self.bridge


def _run(kafka: str, topics: Topics, serving: str, label: str, fault) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    ids, records = _records(label)
    kubelet = _Kubelet(_bridge(kafka, topics, serving), lambda: _bridge(kafka, topics, serving))
    t0 = time.monotonic()
    try:
        produce(kafka, topics.input, records)
        wait_for(lambda: kubelet.bridge.metric("bridge_predictions_produced_total") >= MID_STREAM, 300, "mid-stream")
        with kubelet.lock:
            kubelet.bridge = fault(kubelet.bridge) or kubelet.bridge
        out = collect(kafka, topics, ids, timeout_s=420, settle_s=3)
        elapsed = time.monotonic() - t0
        lost = ids - out.seen()
        _report(out.report(ids, label) + f", {elapsed:.0f}s, liveness restarts {kubelet.restarts}")
        assert not lost, f"{len(lost)} ids lost, e.g. {sorted(lost)[:5]}; bridge log:\n{kubelet.bridge.tail()}"
        # Nothing here is a bad image: any DLQ record must be a documented transient give-up, not a loss.
        assert all(h[0]["error_class"] == "retries_exhausted" for h in out.dlq.values()), dict(
            list(out.dlq.items())[:3])
    finally:
        kubelet.stop().stop_quietly()


def test_chaos_torchserve_killed_and_restarted(kafka: str, topics: Topics, serving: str) -> None:  # noqa: F811
    def kill_torchserve(bridge: BridgeProcess) -> None:
        pid = int((ROOT / ".run" / "torchserve.pid").read_text())
        os.killpg(pid, signal.SIGKILL)
        # SIGKILL is asynchronous: restart only once the old frontend is gone, or `start` sees it "running".
        wait_for(lambda: not _alive(pid), 60, "TorchServe to exit")
        wait_for(lambda: bridge.metric("bridge_retries_total") > 0, 60, "the bridge to notice")
        subprocess.run([str(SERVING_SH), "start"], check=True)  # restarts TorchServe, waits until ready

    _run(kafka, topics, serving, "ts-kill", kill_torchserve)


def test_chaos_bridge_sigkilled_and_restarted(kafka: str, topics: Topics, serving: str) -> None:  # noqa: F811
    def kill_bridge(bridge: BridgeProcess) -> BridgeProcess:
        bridge.kill()
        return _bridge(kafka, topics, serving)

    _run(kafka, topics, serving, "bridge-kill", kill_bridge)


def test_chaos_broker_restarted(kafka: str, topics: Topics, serving: str) -> None:  # noqa: F811
    def restart_broker(bridge: BridgeProcess) -> None:
        subprocess.run([str(KAFKA_SH), "stop"], check=True)
        time.sleep(2)
        subprocess.run([str(KAFKA_SH), "start"], check=True)

    _run(kafka, topics, serving, "broker-restart", restart_broker)

