"""`make e2e-scale`: autoscaling observed on the local cluster, with metrics-server and KEDA built from their
Go modules (cluster/addons.sh scale).

1. The chart's HPA of the MobileNetV2 predictor (ci/local-cluster-values.yaml: predictor.hpa.owner=chart,
   30 s scale-down window) under a Locust run through the predictor Service: from 1 replica to 2, and back
   to 1 after the load stops. Printed: the HPA's decisions and replica counts over time, and throughput / p95
   with 1 replica and with 2.
2. KEDA scales the bridge on consumer lag (helm upgrade --set bridge.keda.enabled=true): a burst of image_data
   records raises the bridge's replicas, the lag drains, and the replicas come back down. Printed: replicas
   and lag over time and the drain rate per replica count.

Two cores: a second predictor pod adds a process, not a core. Its gain is what the second pod wins from
everything else on the machine (Locust, the bridge, the control plane), reported as measured.
"""

from __future__ import annotations

import calendar
import csv
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from cluster.tests.conftest import (
    BRIDGE_TOPICS,
    HELM,
    KUBECONFIG,
    MODELS,
    NAMESPACE,
    RELEASE,
    ROOT,
    bridge_deployment,
    isvc_name,
    kube_json,
    kubectl,
    wait_until,
)
from tests.image_factory import jpeg
from tests.kafka_support import produce, raw_record

pytestmark = pytest.mark.usefixtures("cluster_ready")
VALUES = ROOT / "helm" / "image-moderation" / "ci" / "local-cluster-values.yaml"
REPORT = ROOT / ".run" / "cluster" / "logs" / "scale-report.txt"
USERS = int(os.environ.get("SCALE_USERS", "6"))
AFTER_SCALE_S = float(os.environ.get("SCALE_AFTER_S", "60"))  # load kept on once the second pod is Ready
BURST = int(os.environ.get("SCALE_BURST", "3000"))  # image_data records of the KEDA burst


def _report(line: str) -> None:
    print(line)
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {line}\n")


@dataclass
class Sample:
    t: float  # epoch seconds
    replicas: int  # the scale target's ready replicas
    desired: int  # what the HPA asks for
    metric: str  # the HPA's current metric value as it reports it


def _hpa_sample(hpa: str, deployment: str) -> Sample:
    h = kube_json("-n", NAMESPACE, "get", "hpa", hpa)["status"]
    d = kube_json("-n", NAMESPACE, "get", "deployment", deployment)["status"]
    current = h.get("currentMetrics") or [{}]
    value = current[0].get("resource", current[0].get("external", {})).get("current", {})
    metric = str(value.get("averageUtilization", value.get("averageValue", value.get("value", "?"))))
    return Sample(time.time(), d.get("readyReplicas", 0), h.get("desiredReplicas", 0), metric)


def _rescale_events(hpa: str, since: float) -> list[str]:
    """The HPA controller's SuccessfulRescale events for `hpa` since `since`, as `+Ns: message`."""
    items = kube_json("-n", NAMESPACE, "get", "events", "--field-selector",
                      f"involvedObject.kind=HorizontalPodAutoscaler,involvedObject.name={hpa}")["items"]
    out = []
    for e in items:
        stamp = e.get("lastTimestamp") or e.get("eventTime") or e["metadata"]["creationTimestamp"]
        t = calendar.timegm(time.strptime(stamp[:19], "%Y-%m-%dT%H:%M:%S"))
        if e["reason"] == "SuccessfulRescale" and t >= since - 1:
            out.append((t, f"+{t - since:.0f}s: {e['message']}"))
    return [m for _, m in sorted(out)]


def _timeline(samples: list[Sample], t0: float) -> str:
    """Replica changes only: `+Ns ready=R desired=D metric=M`."""
    lines, last = [], None
    for s in samples:
        if (s.replicas, s.desired) != last:
            lines.append(f"+{s.t - t0:.0f}s ready={s.replicas} desired={s.desired} metric={s.metric}")
            last = (s.replicas, s.desired)
    return "; ".join(lines)


def _window(log: Path, t0: float, t1: float) -> tuple[int, float, float, int]:
    """Requests ending in [t0, t1): count, throughput (req/s), p95 ms, failures."""
    with log.open() as f:
        rows = [(float(t), float(ms), ok == "1") for t, ms, ok in csv.reader(f) if t0 <= float(t) < t1]
    ms = sorted(r[1] for r in rows if r[2])
    p95 = ms[min(len(ms) - 1, int(0.95 * len(ms)))] if ms else float("nan")
    return len(rows), len(rows) / max(t1 - t0, 1e-9), p95, sum(1 for r in rows if not r[2])


def test_predictor_hpa_scales_out_under_locust_and_back_in() -> None:
    model = MODELS[0]
    deployment, hpa = f"{isvc_name(model)}-predictor", f"{isvc_name(model)}-hpa"  # the chart's HPA
    spec = kube_json("-n", NAMESPACE, "get", "hpa", hpa)["spec"]
    assert spec["minReplicas"] == 1 and spec["maxReplicas"] >= 2, spec
    # The resource metrics API answers for the predictor's pods (metrics-server scraping the kubelet).
    wait_until(lambda: _hpa_sample(hpa, deployment).metric not in ("?", "None"), 180, "the HPA to read CPU")
    wait_until(lambda: _hpa_sample(hpa, deployment).replicas == 1 == _hpa_sample(hpa, deployment).desired, 300,
               "the predictor at its minimum before the load")
    svc = kube_json("-n", NAMESPACE, "get", "service", f"{isvc_name(model)}-predictor")["spec"]["clusterIP"]
    log = Path(tempfile.mkdtemp(prefix="e2e-scale-")) / "requests.csv"
    env = {**os.environ, "LOADTEST_MODEL": model, "LOADTEST_SIZES": "640x480:1", "LOADTEST_REQUEST_LOG": str(log),
           "LOADTEST_P95_MS": "600000", "LOADTEST_MAX_ERROR_RATE": "1"}  # this run measures, it gates nothing
    t0 = time.time()
    locust = subprocess.Popen(
        [sys.executable, "-m", "locust", "-f", str(ROOT / "loadtest" / "locustfile.py"), "V2User", "--headless",
         "-u", str(USERS), "-r", str(USERS), "-H", f"http://{svc}:80", "--only-summary", "--stop-timeout", "10"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    samples: list[Sample] = []
    t_scale_decision = t_scaled = t_stop = None
    try:
        deadline = time.time() + 420
        while time.time() < deadline:
            samples.append(_hpa_sample(hpa, deployment))
            if t_scale_decision is None and samples[-1].desired >= 2:
                t_scale_decision = samples[-1].t
            if t_scaled is None and samples[-1].replicas >= 2:
                t_scaled = samples[-1].t
            if t_scaled is not None and time.time() - t_scaled >= AFTER_SCALE_S:
                break
            assert locust.poll() is None, f"locust exited early: {locust.stdout.read() if locust.stdout else ''}"
            time.sleep(5)
    finally:
        t_stop = time.time()
        locust.send_signal(signal.SIGINT)
        summary = locust.communicate(timeout=60)[0]
    assert t_scaled is not None, f"no scale-out within 420 s: {_timeline(samples, t0)}"
    deadline = time.time() + 420
    while time.time() < deadline:
        samples.append(_hpa_sample(hpa, deployment))
        if samples[-1].replicas == 1 and samples[-1].desired == 1:
            break
        time.sleep(5)
    t_down = samples[-1].t if samples[-1].replicas == 1 else None
    # Windows: one replica = from the ramp-up to the HPA's decision; two = from 10 s after the second pod is
    # Ready (its Service endpoint is in kube-proxy's rules by then) to the end of the load.
    one = _window(log, t0 + 10, t_scale_decision)
    two = _window(log, t_scaled + 10, t_stop)
    _report(f"predictor HPA ({USERS} Locust users, 640x480 JPEGs, closed loop, via the Service's ClusterIP): "
            f"scale-out decided +{t_scale_decision - t0:.0f}s, second pod Ready +{t_scaled - t0:.0f}s, load stopped "
            f"+{t_stop - t0:.0f}s, back to 1 replica "
            + (f"+{t_down - t0:.0f}s ({t_down - t_stop:.0f}s after the load)" if t_down else "NOT within 420 s"))
    _report(f"  1 replica: {one[0]} requests, {one[1]:.1f} req/s, p95 {one[2]:.0f} ms, {one[3]} failed; "
            f"2 replicas: {two[0]} requests, {two[1]:.1f} req/s, p95 {two[2]:.0f} ms, {two[3]} failed")
    _report(f"  HPA decisions: {' | '.join(_rescale_events(hpa, t0))}")
    _report(f"  replicas over time: {_timeline(samples, t0)}")
    print(summary[-1500:])
    assert one[0] >= 20 and two[0] >= 20, (one, two)
    assert one[3] == 0 and two[3] == 0, "requests failed during the scale-out"
    assert t_down is not None, f"no scale-in within 420 s after the load: {_timeline(samples, t0)}"


def _helm_keda(enabled: bool) -> None:
    done = subprocess.run(
        [HELM, "upgrade", RELEASE, str(ROOT / "helm" / "image-moderation"), "-n", NAMESPACE, "-f", str(VALUES),
         "--set", f"bridge.keda.enabled={str(enabled).lower()}", "--wait", "--timeout", "10m"],
        capture_output=True, text=True, timeout=900, env={**os.environ, "KUBECONFIG": KUBECONFIG})
    assert done.returncode == 0, done.stderr


def _lag(bootstrap: str) -> int:
    """Records of image_data the bridge's group has not committed yet (what KEDA's Kafka scaler reads)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": BRIDGE_TOPICS.group, "enable.auto.commit": False})
    try:
        parts = consumer.list_topics(BRIDGE_TOPICS.input, timeout=10).topics[BRIDGE_TOPICS.input].partitions
        tps = [TopicPartition(BRIDGE_TOPICS.input, p) for p in parts]
        committed = {tp.partition: tp.offset for tp in consumer.committed(tps, timeout=10)}
        lag = 0
        for tp in tps:
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            lag += high - (committed[tp.partition] if committed[tp.partition] >= 0 else low)
        return lag
    finally:
        consumer.close()


def test_keda_scales_the_bridge_on_consumer_lag(kafka_bootstrap: str) -> None:
    deployment = bridge_deployment()
    _helm_keda(True)
    try:
        kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"scaledobject/{deployment}", "--timeout=180s",
                timeout=200)
        hpa = f"keda-hpa-{deployment}"
        wait_until(lambda: _hpa_sample(hpa, deployment).replicas == 1, 300, "the bridge at one replica")
        assert _lag(kafka_bootstrap) == 0
        label = f"keda-{uuid.uuid4().hex[:6]}"
        t0 = time.time()
        produce(kafka_bootstrap, BRIDGE_TOPICS.input,
                [raw_record(f"{label}-{n:05d}", jpeg(48, 48, seed=n, quality=70), {"n": n}) for n in range(BURST)])
        produced = time.time()
        samples: list[tuple[Sample, int]] = []
        t_out = t_drained = t_in = None
        deadline = time.time() + 900
        while time.time() < deadline:
            sample, lag = _hpa_sample(hpa, deployment), _lag(kafka_bootstrap)
            samples.append((sample, lag))
            if t_out is None and sample.replicas >= 2:
                t_out = sample.t
            if t_drained is None and lag == 0:
                t_drained = sample.t
            if t_drained is not None and sample.replicas == 1 and sample.desired == 1:
                t_in = sample.t
                break
            time.sleep(3)
        # Drain rate per ready-replica count, from consecutive samples while the lag was falling.
        by_replicas: dict[int, list[float]] = {}
        for (a, lag_a), (b, lag_b) in zip(samples, samples[1:], strict=False):
            if lag_a > 0 and a.replicas == b.replicas:
                by_replicas.setdefault(a.replicas, []).append((lag_a - lag_b) / (b.t - a.t))
        rates = ", ".join(f"{r} replica(s): {sum(v) / len(v):.1f} records/s over {len(v)} samples"
                          for r, v in sorted(by_replicas.items()))
        timeline = "; ".join(f"+{s.t - t0:.0f}s ready={s.replicas} desired={s.desired} lag={lag}"
                             for i, (s, lag) in enumerate(samples)
                             if i == 0 or (s.replicas, s.desired) != (samples[i - 1][0].replicas,
                                                                      samples[i - 1][0].desired))
        _report(f"KEDA bridge ({BURST} records in {produced - t0:.0f}s, lagThreshold 50): scaled out "
                + (f"+{t_out - t0:.0f}s" if t_out else "NEVER") + ", lag drained "
                + (f"+{t_drained - t0:.0f}s" if t_drained else "NOT within 900 s") + ", back to 1 replica "
                + (f"+{t_in - t0:.0f}s" if t_in else "NOT within 900 s"))
        _report(f"  drain rate: {rates}")
        _report(f"  HPA decisions: {' | '.join(_rescale_events(hpa, t0))}")
        _report(f"  replicas over time: {timeline}")
        assert t_out is not None, "the burst did not raise the bridge's replicas"
        assert t_drained is not None, "the lag did not drain"
        assert t_in is not None, "the bridge did not scale back in"
        assert max(s.replicas for s, _ in samples) <= 3  # maxReplicas of the local values
    finally:
        _helm_keda(False)
