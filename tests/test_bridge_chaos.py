"""Chaos on the real stack: N ≥ 500 ids per test, something is killed mid-stream, and every id must still
reach `image_predictions` or the DLQ. Zero lost is asserted; duplicates (at-least-once repeats) are
counted and printed (`pytest -rP` shows them) and appended to .run/logs/chaos-report.txt."""

from __future__ import annotations

import os
import signal
import subprocess
import time

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


def _run(kafka: str, topics: Topics, serving: str, label: str, fault) -> None:  # noqa: F811  # type: ignore[no-untyped-def]
    ids, records = _records(label)
    bridge = BridgeProcess(topics, kafka, serving).start()
    t0 = time.monotonic()
    try:
        produce(kafka, topics.input, records)
        wait_for(lambda: bridge.metric("bridge_predictions_produced_total") >= MID_STREAM, 300, "mid-stream")
        bridge = fault(bridge) or bridge
        out = collect(kafka, topics, ids, timeout_s=420, settle_s=3)
        elapsed = time.monotonic() - t0
        lost = ids - out.seen()
        _report(out.report(ids, label) + f", {elapsed:.0f}s")
        assert not lost, f"{len(lost)} ids lost, e.g. {sorted(lost)[:5]}; bridge log:\n{bridge.tail()}"
        # Nothing here is a bad image: any DLQ record must be a documented transient give-up, not a loss.
        assert all(h[0]["error_class"] == "retries_exhausted" for h in out.dlq.values()), dict(
            list(out.dlq.items())[:3])
    finally:
        bridge.stop_quietly()


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
        return BridgeProcess(topics, kafka, serving).start()

    _run(kafka, topics, serving, "bridge-kill", kill_bridge)


def test_chaos_broker_restarted(kafka: str, topics: Topics, serving: str) -> None:  # noqa: F811
    def restart_broker(bridge: BridgeProcess) -> None:
        subprocess.run([str(KAFKA_SH), "stop"], check=True)
        time.sleep(2)
        subprocess.run([str(KAFKA_SH), "start"], check=True)

    _run(kafka, topics, serving, "broker-restart", restart_broker)

