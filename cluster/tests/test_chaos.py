"""`make e2e-chaos`: a stream of CHAOS_N image_data records with unique ids through the cluster's Kafka path
(in-cluster broker -> the chart's bridge -> the MobileNetV2 predictor Service) while pods die:

1. a predictor pod deleted (`kubectl delete pod`),
2. the bridge's process killed with SIGKILL from the node (no SIGTERM first; the kubelet restarts it),
3. the broker pod restarted (`kubectl delete pod kafka-0`; its log is on a PersistentVolume),
4. a predictor pod deleted again.

Each fault is injected once the stream's outputs pass a share of CHAOS_N and the previous fault has recovered.
Afterwards every id must be in image_predictions or in image_data.dlq with a reason: 0 lost is asserted,
duplicates (at-least-once repeats) are counted. Recovery of a fault = from the fault until the outputs of the
last 5 s are back to half the rate of the 20 s before it; also reported: the longest output gap and when the
replacement pod was Ready. CHAOS_RUNS runs (default 2), each reported on one line in the test output and in
.run/cluster/logs/chaos-report.txt.
"""

from __future__ import annotations

import bisect
import json
import os
import signal
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster.tests.conftest import (
    BRIDGE_TOPICS,
    KAFKA_NAMESPACE,
    MODELS,
    NAMESPACE,
    ROOT,
    bridge_deployment,
    isvc_name,
    kube_json,
    kubectl,
)
from tests.image_factory import jpeg
from tests.kafka_support import MAX_BYTES, raw_record, record_id

pytestmark = pytest.mark.usefixtures("cluster_ready")
N = int(os.environ.get("CHAOS_N", "5000"))
RUNS = int(os.environ.get("CHAOS_RUNS", "2"))
RATE = float(os.environ.get("CHAOS_RATE", "40"))  # records per second the producer writes
REPORT = ROOT / ".run" / "cluster" / "logs" / "chaos-report.txt"
CONTAINERD_SOCK = "/run/containerd/containerd.sock"  # cluster/env.sh
RECOVERY_TIMEOUT_S = 300


@dataclass
class Fault:
    name: str
    at_share: float  # inject once this share of N has come out
    selector: Callable[[], tuple[str, str]]  # -> (namespace, label selector) of the pods it hits
    kill: Callable[[str, str], None]  # (namespace, pod)
    # A deleted pod is replaced by a new one (another uid); a killed process restarts in the same pod.
    in_place: bool = False
    injected_at: float = 0.0
    recovered_s: float | None = None
    longest_gap_s: float = 0.0
    replacement_ready_s: float | None = None


def _predictor_pods() -> tuple[str, str]:
    return NAMESPACE, f"serving.kserve.io/inferenceservice={isvc_name(MODELS[0])}"


def _bridge_pods() -> tuple[str, str]:
    labels = kube_json("-n", NAMESPACE, "get", "deployment", bridge_deployment())["spec"]["selector"]["matchLabels"]
    return NAMESPACE, ",".join(f"{k}={v}" for k, v in labels.items())


def _broker_pods() -> tuple[str, str]:
    return KAFKA_NAMESPACE, "app.kubernetes.io/name=kafka"


def _delete(namespace: str, pod: str) -> None:
    kubectl("-n", namespace, "delete", "pod", pod, "--wait=false")


def _sigkill(namespace: str, pod: str) -> None:
    """SIGKILL the pod's process from the node, as a crash or the OOM killer ends it: no SIGTERM, no shutdown.

    Not `kubectl delete --grace-period=0 --force`: the kubelet still sends SIGTERM first (with a 2 s grace), and
    the bridge then leaves its group cleanly. Not `kill -9 1` in the container: PID 1 of a PID namespace gets
    only the signals it handles from inside it. The test runs on the node, so it signals the container's init
    process, found through containerd (the CRI's container id is containerd's task id)."""
    status = kube_json("-n", namespace, "get", "pod", pod)["status"]["containerStatuses"][0]
    task = status["containerID"].removeprefix("containerd://")
    tasks = subprocess.run(["ctr", "-a", CONTAINERD_SOCK, "-n", "k8s.io", "task", "ls"], capture_output=True,
                           text=True, check=True).stdout.split("\n")
    (pid,) = [int(line.split()[1]) for line in tasks if line.startswith(task)]
    os.kill(pid, signal.SIGKILL)


@dataclass
class Stream:
    """Outputs of the run's ids as they arrive (host receive time), read by one consumer thread."""

    ids: set[str]
    arrivals: list[float] = field(default_factory=list)
    predictions: Counter = field(default_factory=Counter)
    dlq: dict[str, list[str]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self) -> set[str]:
        with self.lock:
            return set(self.predictions) | set(self.dlq)

    def rate(self, t0: float, t1: float) -> float:
        """Outputs per second in (t0, t1]."""
        with self.lock:
            n = bisect.bisect_right(self.arrivals, t1) - bisect.bisect_right(self.arrivals, t0)
        return n / max(t1 - t0, 1e-9)

    def consume(self, bootstrap: str, start: dict[tuple[str, int], int]) -> None:
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"chaos-check-{uuid.uuid4().hex[:8]}",
                             "enable.auto.commit": False, "fetch.max.bytes": MAX_BYTES * 2,
                             "max.partition.fetch.bytes": MAX_BYTES, "receive.message.max.bytes": MAX_BYTES * 3})
        consumer.assign([TopicPartition(t, p, o) for (t, p), o in start.items()])
        try:
            while not self.stop.is_set():
                for msg in consumer.consume(500, 0.2):
                    if msg.error():
                        continue
                    headers = {k: (v or b"").decode("utf-8", "replace") for k, v in msg.headers() or []}
                    key = record_id(msg.key(), headers)
                    if key not in self.ids:
                        continue
                    with self.lock:
                        if msg.topic() == BRIDGE_TOPICS.dlq:
                            self.dlq.setdefault(key, []).append(headers.get("error_class", ""))
                        else:
                            json.loads(msg.value())  # a prediction must be valid JSON
                            self.predictions[key] += 1
                        self.arrivals.append(time.monotonic())
        finally:
            consumer.close()


def _end_offsets(bootstrap: str) -> dict[tuple[str, int], int]:
    """Where the output and DLQ topics end now: the run reads only what comes after."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "chaos-offsets"})
    try:
        meta = consumer.list_topics(timeout=30)
        return {(t, p): consumer.get_watermark_offsets(TopicPartition(t, p), timeout=30)[1]
                for t in (BRIDGE_TOPICS.output, BRIDGE_TOPICS.dlq) for p in meta.topics[t].partitions}
    finally:
        consumer.close()


def _produce(bootstrap: str, label: str, failures: list[str]) -> None:
    """CHAOS_N distinct small JPEGs at CHAOS_RATE per second; every record must be acknowledged."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                         "message.max.bytes": MAX_BYTES, "linger.ms": 5, "delivery.timeout.ms": 300000})
    t0 = time.monotonic()
    for n in range(N):
        key, value, headers = raw_record(f"{label}-{n:05d}", jpeg(48, 48, seed=n, quality=70), {"n": n})
        producer.produce(BRIDGE_TOPICS.input, key=key.encode(), value=value, headers=headers,
                         on_delivery=lambda err, _m: failures.append(str(err)) if err else None)
        producer.poll(0)
        time.sleep(max(0.0, t0 + (n + 1) / RATE - time.monotonic()))
    if producer.flush(300) != 0:
        failures.append("records still unacknowledged after 300 s")


def _pods(namespace: str, selector: str) -> list[dict]:
    return kube_json("-n", namespace, "get", "pods", "-l", selector)["items"]


def _ready(pod: dict) -> bool:
    conditions = pod["status"].get("conditions", [])
    return not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def _restarts(pod: dict) -> int:
    return sum(c.get("restartCount", 0) for c in pod["status"].get("containerStatuses", []))


def _replaces(pod: dict, victim: dict, in_place: bool) -> bool:
    """A new pod for a deleted one; the same pod with one more container restart for a killed process."""
    if in_place:
        return pod["metadata"]["uid"] == victim["metadata"]["uid"] and _restarts(pod) > _restarts(victim)
    return pod["metadata"]["uid"] != victim["metadata"]["uid"]


def _inject(fault: Fault, stream: Stream) -> None:
    namespace, selector = fault.selector()
    victims = [p for p in _pods(namespace, selector) if _ready(p)]
    assert victims, f"{fault.name}: no Ready pod matches {selector}"
    victim = victims[0]
    before = stream.rate(time.monotonic() - 20, time.monotonic())
    fault.injected_at = time.monotonic()
    fault.kill(namespace, victim["metadata"]["name"])
    deadline = fault.injected_at + RECOVERY_TIMEOUT_S
    last = fault.injected_at
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = time.monotonic()
        latest = stream.arrivals[-1] if stream.arrivals else last
        if latest > last:
            fault.longest_gap_s = max(fault.longest_gap_s, latest - last)
            last = latest
        if fault.replacement_ready_s is None and any(_ready(p) and _replaces(p, victim, fault.in_place)
                                                     for p in _pods(namespace, selector)):
            fault.replacement_ready_s = now - fault.injected_at
        # Back to half the pre-fault rate over the last 5 s, the replacement Ready, and nothing left to do:
        # once every id is out, the rate cannot recover and need not.
        done = stream.seen() >= stream.ids
        if fault.recovered_s is None and now - fault.injected_at >= 5 and (
                stream.rate(now - 5, now) >= max(0.5 * before, 0.2) or done):
            fault.recovered_s = now - fault.injected_at
        if fault.recovered_s is not None and fault.replacement_ready_s is not None:
            break
    fault.longest_gap_s = max(fault.longest_gap_s, min(time.monotonic(), deadline) - last)


def _report(line: str) -> None:
    print(line)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


@pytest.mark.parametrize("run", range(1, RUNS + 1))
def test_chaos_nothing_lost(run: int, kafka_bootstrap: str) -> None:
    label = f"chaos{run}-{uuid.uuid4().hex[:6]}"
    ids = {f"{label}-{n:05d}" for n in range(N)}
    stream = Stream(ids)
    start = _end_offsets(kafka_bootstrap)
    reader = threading.Thread(target=stream.consume, args=(kafka_bootstrap, start), daemon=True)
    reader.start()
    failures: list[str] = []
    writer = threading.Thread(target=_produce, args=(kafka_bootstrap, label, failures), daemon=True)
    faults = [
        Fault("predictor pod deleted", 0.10, _predictor_pods, _delete),
        Fault("bridge process SIGKILLed", 0.30, _bridge_pods, _sigkill, in_place=True),
        Fault("broker pod restarted", 0.50, _broker_pods, _delete),
        Fault("predictor pod deleted again", 0.70, _predictor_pods, _delete),
    ]
    t0 = time.monotonic()
    writer.start()
    try:
        for fault in faults:
            deadline = time.monotonic() + 900
            while len(stream.seen()) < fault.at_share * N:
                assert time.monotonic() < deadline, f"{fault.name}: only {len(stream.seen())} of {N} out"
                time.sleep(0.5)
            _inject(fault, stream)
        writer.join(timeout=N / RATE + 600)
        assert not writer.is_alive(), "the producer did not finish"
        assert not failures, f"the producer lost records before the system saw them: {failures[:3]}"
        deadline = time.monotonic() + 900
        while not stream.seen() >= ids and time.monotonic() < deadline:
            time.sleep(1)
        time.sleep(5)  # late repeats still count as duplicates
    finally:
        stream.stop.set()
        reader.join(timeout=30)
    elapsed = time.monotonic() - t0
    lost = ids - stream.seen()
    duplicates = sum(stream.predictions.values()) + sum(len(v) for v in stream.dlq.values()) - len(stream.seen())
    reasons = Counter(r for v in stream.dlq.values() for r in v)
    recoveries = "; ".join(
        f"{f.name}: recovered {f.recovered_s:.0f}s, longest output gap {f.longest_gap_s:.0f}s, replacement Ready "
        f"{f.replacement_ready_s:.0f}s" if f.recovered_s is not None and f.replacement_ready_s is not None
        else f"{f.name}: NOT recovered within {RECOVERY_TIMEOUT_S}s" for f in faults)
    _report(f"chaos run {run}: {N} ids at {RATE:.0f}/s, {len(stream.predictions)} predicted, {len(stream.dlq)} "
            f"dead-lettered {dict(reasons)}, lost {len(lost)}, duplicates {duplicates}, {elapsed:.0f}s; {recoveries}")
    assert not lost, f"{len(lost)} ids lost, e.g. {sorted(lost)[:5]}"
    assert all(reasons.keys()), "a DLQ record without error_class"
    assert all(f.recovered_s is not None and f.replacement_ready_s is not None for f in faults), recoveries
