"""`make e2e`: the chart as installed by helm on the local cluster answers like the local stack.

Order matters and is kept by the file: read-only checks first, then `helm upgrade` under load and a deleted
predictor pod, then `helm uninstall` and the kustomize overlay last.
"""

from __future__ import annotations

import calendar
import os
import re
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cluster.tests import prometheus_support
from cluster.tests.conftest import (
    BRIDGE_TOPICS,
    HELM,
    KUBECONFIG,
    KUBECTL,
    MODELS,
    NAMESPACE,
    RELEASE,
    ROOT,
    bridge_deployment,
    cluster_pin,
    delete_predictor_pod,
    http_client,
    isvc_name,
    kube_json,
    kubectl,
    restart_counts,
    wait_until,
)
from demo.samples import skimage_photos
from handlers.envelopes import predictions_from, v1_request, v2_request
from tests import k8s_support as k
from tests.image_factory import jpeg, refused_variants
from tests.kafka_support import collect, produce, raw_record

pytestmark = pytest.mark.usefixtures("cluster_ready")
VALUES = ROOT / "helm" / "image-moderation" / "ci" / "local-cluster-values.yaml"


def test_node_runs_the_pinned_upstream_components() -> None:
    node = kube_json("get", "node")["items"][0]
    info = node["status"]["nodeInfo"]
    pinned = cluster_pin("KUBERNETES_VERSION")
    assert info["kubeletVersion"] == pinned and info["kubeProxyVersion"] in (pinned, "")
    assert info["containerRuntimeVersion"].startswith("containerd://")
    ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert ready["Ready"] == "True"
    assert kube_json("version")["serverVersion"]["gitVersion"] == pinned
    for namespace, deployment in (("kube-system", "coredns"), ("kserve", "kserve-controller-manager")):
        status = kube_json("-n", namespace, "get", "deployment", deployment)["status"]
        assert status.get("readyReplicas") == 1, (namespace, deployment, status)


def test_namespace_enforces_restricted_pod_security() -> None:
    labels = kube_json("get", "namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    # A root pod is refused by the API server (admission), not only warned about.
    pod = ('{"apiVersion":"v1","kind":"Pod","metadata":{"name":"psa-probe"},"spec":{"containers":'
           '[{"name":"c","image":"registry.k8s.io/pause:local"}]}}')
    done = subprocess.run([KUBECTL, "-n", NAMESPACE, "apply", "--dry-run=server", "-f", "-"], input=pod,
                          capture_output=True, text=True, timeout=60, env={**os.environ, "KUBECONFIG": KUBECONFIG})
    assert done.returncode != 0 and 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr


def test_inference_services_ready_with_the_built_archives() -> None:
    for model in MODELS:
        isvc = kube_json("-n", NAMESPACE, "get", "inferenceservice", isvc_name(model))
        conditions = {c["type"]: c["status"] for c in isvc["status"]["conditions"]}
        assert conditions.get("Ready") == "True", conditions
        pods = kube_json("-n", NAMESPACE, "get", "pods", "-l",
                         f"serving.kserve.io/inferenceservice={isvc_name(model)}")["items"]
        assert pods, model
        for pod in pods:
            container = next(c for c in pod["spec"]["containers"] if c["name"] == "kserve-container")
            assert container["image"].endswith("image-moderation/predictor:" + container["image"].rsplit(":", 1)[1])
            mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
            assert mounts["/mnt/models"]["readOnly"] is True
            assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
            listing = kubectl("-n", NAMESPACE, "exec", pod["metadata"]["name"], "-c", "kserve-container", "--",
                              "ls", "/mnt/models/model-store")
            assert f"{model}.mar" in listing.split()


@pytest.mark.parametrize("model", MODELS)
def test_predictions_equal_the_local_stack(model: str, predictor_urls: dict[str, str],
                                           client: httpx.Client) -> None:
    photos = skimage_photos()
    assert len(photos) >= 5
    with http_client(predictor_urls[model]) as remote:
        for path in photos:
            image = path.read_bytes()
            local = predictions_from(client.post(f"/v2/models/{model}/infer", json=v2_request([image])).json())[0]
            v2 = remote.post(f"/v2/models/{model}/infer", json=v2_request([image], path.name))
            assert v2.status_code == 200, (path.name, v2.text)
            assert v2.json()["id"] == path.name
            v1 = remote.post(f"/v1/models/{model}:predict", json=v1_request([image]))
            assert v1.status_code == 200, (path.name, v1.text)
            for response in (v2.json(), v1.json()):
                got = predictions_from(response)[0]
                assert got.label == local.label, (path.name, got, local)
                assert abs(got.harmful_score - local.harmful_score) <= 1e-4, (path.name, got, local)
                assert abs(got.threshold - local.threshold) <= 1e-6


@pytest.mark.parametrize("model", MODELS)
def test_explanations_equal_the_local_stack(model: str, predictor_urls: dict[str, str],
                                            client: httpx.Client) -> None:
    """KServe v1 `:explain` is answered by TorchServe in the pod (captum is in the predictor image)."""
    image = skimage_photos()[0].read_bytes()
    headers = {"Content-Type": "image/png"}
    local = client.post(f"/v1/models/{model}:explain", content=image, headers=headers)
    with http_client(predictor_urls[model]) as remote:
        response = remote.post(f"/v1/models/{model}:explain", content=image, headers=headers)
    assert response.status_code == 200 and local.status_code == 200, (response.text, local.text)
    [got], [want] = response.json()["explanations"], local.json()["explanations"]
    assert got["label"] == want["label"] and abs(got["harmful_score"] - want["harmful_score"]) <= 1e-4
    assert len(got["grid"]) == len(want["grid"]) == 7
    assert max(abs(a - b) for ra, rb in zip(got["grid"], want["grid"], strict=True)
               for a, b in zip(ra, rb, strict=True)) <= 1e-3


def test_release_notes_warn_about_random_init_resnet50() -> None:
    notes = _helm("get", "notes", RELEASE, "-n", NAMESPACE)
    assert notes.returncode == 0, notes.stderr
    assert "WARNING: resnet50 was fine-tuned from RANDOM weights" in notes.stdout, notes.stdout


def test_health_and_metadata_as_the_chart_documents(predictor_urls: dict[str, str]) -> None:
    # The chart's predictors are TorchServe itself: /ping is readiness (probes and the bridge use it),
    # and the v2 health/metadata routes of the local gateway are not served there (helm chart README).
    for url in predictor_urls.values():
        with http_client(url) as remote:
            ping = remote.get("/ping")
            assert ping.status_code == 200 and ping.json()["status"] == "Healthy"
            assert remote.get("/v2/health/ready").status_code in (400, 404)


def test_bad_inputs_answer_4xx_and_no_pod_restarts() -> None:
    """Through the Service (kube-proxy): TorchServe closes the connection after every 4xx, and
    `kubectl port-forward` gives up on the first connection its backend closes with a reset."""
    before = restart_counts()
    with http_client(_service_url("mobilenet_v2")) as remote:
        for kind, (payload, reason) in sorted(refused_variants().items()):
            raw = remote.post("/v2/models/mobilenet_v2/infer", content=payload, headers={"Content-Type": "image/png"})
            assert raw.status_code in (400, 413), (kind, raw.status_code, raw.text)
            assert raw.json()["reason"] == reason, (kind, raw.text)
            if payload:
                batch = remote.post("/v2/models/mobilenet_v2/infer", json=v2_request([jpeg(), payload]))
                assert batch.status_code == raw.status_code and batch.json()["index"] == 1, (kind, batch.text)
        for body, reason in ((b'{"inputs": "nope"}', "malformed_request"), (b"{", "malformed_request"),
                             (b'{"instances": [{"b64": "!!"}]}', "bad_base64")):
            bad = remote.post("/v2/models/mobilenet_v2/infer", content=body,
                              headers={"Content-Type": "application/json"})
            assert bad.status_code == 400 and bad.json()["reason"] == reason, bad.text
        assert remote.post("/v2/models/mobilenet_v2/infer", json=v2_request([jpeg()])).status_code == 200
    time.sleep(5)  # a crashed worker or container would show within a probe period
    assert restart_counts() == before


def test_metrics_scraped_from_inside_the_pod_network() -> None:
    """A pod in the `monitoring` namespace (the chart's NetworkPolicy lets it scrape) reads :8082/metrics."""
    pods = kube_json("-n", NAMESPACE, "get", "pods", "-l", "serving.kserve.io/inferenceservice")["items"]
    targets = [f"http://{p['status']['podIP']}:8082/metrics" for p in pods if p["status"].get("podIP")]
    assert len(targets) >= 2
    kubectl("create", "namespace", "monitoring", check=False)
    # The pod also resolves a predictor Service by its cluster DNS name (CoreDNS) before scraping.
    service = f"{isvc_name(MODELS[0])}-predictor.{NAMESPACE}.svc.cluster.local"
    # NetworkPolicy is eventually consistent: the firewall admits a new pod once it has seen it (seconds).
    # `kubectl run -i` may attach after the first lines: the script waits 2 s and prints DNS last.
    script = ("import socket,sys,time,urllib.request\ntime.sleep(2)\n"
              "for u in sys.argv[2:]:\n for i in range(60):\n  try:\n"
              "   print(urllib.request.urlopen(u,timeout=10).read().decode()); print('# after', i, 's'); break\n"
              "  except OSError:\n   time.sleep(1)\n"
              "print('# resolved', socket.gethostbyname(sys.argv[1]))")
    out = kubectl("-n", "monitoring", "run", "e2e-scrape", "--rm", "-i", "--restart=Never", "--quiet",
                  "--image", _bridge_image(), "--image-pull-policy", "Never", "--command",
                  "--override-type=strategic", "--overrides", _restricted_overrides(),
                  "--", "python", "-c", script, service, *targets,
                  timeout=180)
    cluster_ip = kube_json("-n", NAMESPACE, "get", "service", f"{isvc_name(MODELS[0])}-predictor")["spec"]["clusterIP"]
    assert f"# resolved {cluster_ip}" in out, out[:300]
    families = {f.name: f for f in text_string_to_metric_families(out)}
    assert any(name.startswith("ts_inference_requests") for name in families), sorted(families)[:20]
    samples = [s for f in families.values() for s in f.samples if s.name.startswith("ts_inference_requests")]
    assert sum(s.value for s in samples) > 0


def test_network_policies_are_enforced() -> None:
    """A pod outside the namespaces the chart admits cannot open the predictor's inference port."""
    pod = kube_json("-n", NAMESPACE, "get", "pods", "-l", "serving.kserve.io/inferenceservice")["items"][0]
    target = f"http://{pod['status']['podIP']}:8080/ping"
    kubectl("create", "namespace", "e2e-outsider", check=False)
    # Waits first: `kubectl run -i` may attach after the first lines are written.
    script = ("import sys,time,urllib.request\ntime.sleep(3)\ntry:\n urllib.request.urlopen(sys.argv[1],timeout=5)\n"
              " print('REACHED')\nexcept Exception as e:\n print('BLOCKED', type(e).__name__)")
    out = kubectl("-n", "e2e-outsider", "run", "e2e-outsider", "--rm", "-i", "--restart=Never", "--quiet",
                  "--image", _bridge_image(), "--image-pull-policy", "Never", "--command",
                  "--override-type=strategic", "--overrides", _restricted_overrides("e2e-outsider"),
                  "--", "python", "-c", script, target,
                  timeout=180)
    assert "BLOCKED" in out and "REACHED" not in out, out
    kubectl("delete", "namespace", "e2e-outsider", "--wait=false", check=False)


def test_kafka_path_through_the_cluster(kafka_bootstrap: str) -> None:
    """Images written to the in-cluster broker come back on image_predictions from the chart's bridge, which
    calls the MobileNetV2 predictor through its Service; a corrupt image goes to the DLQ alone, with a reason."""
    deploy = kube_json("-n", NAMESPACE, "get", "deployment", bridge_deployment())
    assert deploy["status"].get("readyReplicas", 0) >= 1, deploy["status"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    env = kube_json("-n", NAMESPACE, "get", "configmap", bridge_deployment())["data"]
    assert env["KAFKA_BOOTSTRAP_SERVERS"] == "kafka.kafka.svc.cluster.local:9092"
    assert env["INFERENCE_URL"] == f"http://{isvc_name(MODELS[0])}-predictor.{NAMESPACE}.svc.cluster.local"

    label = f"e2e-{uuid.uuid4().hex[:8]}"
    good = {f"{label}-{n:03d}": jpeg(96, 96, seed=n) for n in range(24)}
    corrupt = f"{label}-corrupt"
    records = [raw_record(i, image, {"n": n}) for n, (i, image) in enumerate(good.items())]
    records.append(raw_record(corrupt, b"\xff\xd8\xff\xe0 truncated, not a JPEG"))
    t0 = time.monotonic()
    produce(kafka_bootstrap, BRIDGE_TOPICS.input, records)
    out = collect(kafka_bootstrap, BRIDGE_TOPICS, set(good) | {corrupt}, timeout_s=300)
    print(f"kafka path: {len(set(good) & set(out.predictions))} of {len(good)} images predicted, the corrupt one "
          f"dead-lettered ({out.dlq.get(corrupt, [{}])[0].get('error_class')}), {time.monotonic() - t0:.1f}s")
    assert set(good) <= set(out.predictions), sorted(set(good) - set(out.predictions))[:5]
    assert corrupt in out.dlq and corrupt not in out.predictions
    assert out.dlq[corrupt][0]["error_class"] not in ("", "retries_exhausted"), out.dlq[corrupt][0]
    for image_id in good:
        prediction = out.predictions[image_id][0]
        assert prediction["model"] == MODELS[0] and prediction["label"] in ("benign", "harmful"), prediction
        assert prediction["metadata"]["n"] == int(image_id.rsplit("-", 1)[1])


DASHBOARD_DEADLINE_S = 240


def _metrics_of(panel: dict[str, Any]) -> set[str]:
    """The metric names a panel selects (`name{...}`)."""
    return {m for t in panel["targets"] for m in re.findall(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", t["expr"])}


def _dashboard_traffic(kafka_bootstrap: str, round_no: int) -> None:
    """One bounded round: an image and a refused input per model through its Service (v2), and an image plus a
    record that is no image through Kafka (bridge -> predictor, and the DLQ)."""
    image = jpeg(96, 96, seed=round_no)
    for model in MODELS:
        with http_client(_service_url(model)) as remote:
            good = remote.post(f"/v2/models/{model}/infer", json=v2_request([image]))
            assert good.status_code == 200, (model, good.text)
            bad = remote.post(f"/v2/models/{model}/infer", json=v2_request([b"no image at all" * 10]))
            assert bad.status_code == 400, (model, bad.text)
    label = f"dashboard-{uuid.uuid4().hex[:8]}"
    produce(kafka_bootstrap, BRIDGE_TOPICS.input,
            [raw_record(f"{label}-image", image), raw_record(f"{label}-not-an-image", b"plain text, no image")])


def _targets_up(prom: str, jobs: list[str]) -> dict[str, list[str]]:
    """job -> the pods (or, for the kubelet, the instance) of its targets that are up."""
    active = prometheus_support.active_targets(prom)
    return {job: sorted(t["labels"].get("pod") or t["labels"]["instance"] for t in active.get(job, [])
                        if t["health"] == "up") for job in jobs}


def _wait_for_targets(prom: str, docs: list[dict[str, Any]], timeout_s: float = 120) -> dict[str, list[str]]:
    """Every job has a target up, and the predictor job one per running predictor pod; else fail saying what
    discovery found and the relabelings dropped."""
    jobs = [job for _, _, job in k.monitor_endpoints(docs)] + [prometheus_support.CADVISOR_JOB,
                                                                 prometheus_support.KUBE_STATE_METRICS_JOB]
    predictor_job = next(job for mon, _, job in k.monitor_endpoints(docs) if mon["kind"] == "PodMonitor")
    pods = kube_json("-n", NAMESPACE, "get", "pods", "-l", "serving.kserve.io/inferenceservice")["items"]
    running = {p["metadata"]["name"] for p in pods if p["status"].get("phase") == "Running"}
    deadline = time.monotonic() + timeout_s
    while True:
        up = _targets_up(prom, jobs)
        if all(up.values()) and running <= set(up[predictor_job]):
            return up
        if time.monotonic() > deadline:
            pool = next(j["job_name"] for j in k.kubernetes_scrape_configs(docs, KUBECONFIG)
                        if j["job_name"].startswith("podMonitor/"))
            pytest.fail(f"targets not all up after {timeout_s:.0f}s: {up}; predictor pods running: {sorted(running)}; "
                        f"discovered but dropped by {pool}: {prometheus_support.dropped_targets(prom, pool)[:6]} "
                        "(a PodMonitor's port/portNumber selects only container ports the pod declares)")
        time.sleep(2)


def test_dashboard_queries_return_data_from_the_cluster(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The chart's Grafana dashboard (Grafana itself is AGPL, so its queries are sent to Prometheus as Grafana
    would, every variable on All) against a real Prometheus that scrapes this cluster with the jobs the operator
    makes of the chart's PodMonitor/ServiceMonitor, plus the kubelet's cAdvisor and kube-state-metrics, and
    evaluates the chart's rules (cluster/tests/prometheus_support.py). Under real traffic every panel query and
    recording rule returns a finite value, the cluster-only panels (container_*, kube_*) included: the local
    check cannot have those."""
    docs = prometheus_support.chart_docs()
    dashboard = k.dashboard_of(docs)
    metrics = {m for p in dashboard["panels"] for m in _metrics_of(p)}
    assert any(m.startswith("kube_") for m in metrics) and any(m.startswith("container_") for m in metrics)
    with prometheus_support.cluster_prometheus(tmp_path / "prometheus", docs) as prom:
        print(f"targets up: {_wait_for_targets(prom, docs)}")
        deadline = time.monotonic() + DASHBOARD_DEADLINE_S
        round_no = 0
        while True:
            _dashboard_traffic(kafka_bootstrap, round_no)
            round_no += 1
            missing = k.without_data(prom, docs, dashboard, skip=lambda _panel: False)
            if not missing:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"no data after {DASHBOARD_DEADLINE_S}s ({round_no} traffic rounds) for: {missing}")
            time.sleep(3)
        for panel in dashboard["panels"]:
            counts = [f"{t['refId']}={len(k.query(prom, k.grafana_expr(t['expr'])))}" for t in panel["targets"]]
            print(f"{panel['title']}: {' '.join(counts)} series")
        print(f"dashboard on the cluster: {len(k.recording_rules(docs))} recording rules and "
              f"{len(k.panel_queries(dashboard, skip=lambda _panel: False))} panel queries returned data "
              f"after {round_no} traffic rounds")


def _bridge_image() -> str:
    chart = (ROOT / "helm" / "image-moderation" / "Chart.yaml").read_text()
    version = next(line.split('"')[1] for line in chart.splitlines() if line.startswith("appVersion:"))
    return f"docker.io/image-moderation/bridge:{version}"


def _restricted_overrides(name: str = "e2e-scrape") -> str:
    return ('{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":10001,"seccompProfile":'
            '{"type":"RuntimeDefault"}},"containers":[{"name":"' + name + '","securityContext":'
            '{"allowPrivilegeEscalation":false,"capabilities":{"drop":["ALL"]}}}]}}')


def _service_url(model: str) -> str:
    svc = kube_json("-n", NAMESPACE, "get", "service", f"{isvc_name(model)}-predictor")
    return f"http://{svc['spec']['clusterIP']}:80"


def test_helm_upgrade_rolls_out_without_a_failed_request(client: httpx.Client) -> None:
    """Two request streams to the Service (kube-proxy) while a changed threshold rolls out.

    `fresh`: a new connection per request, as a load balancer without connection reuse sends them; the
    preStop sleep keeps the old pod serving until kube-proxy stops sending it new connections.
    `keepalive`: one reused connection, retried once on a connection error (inference is idempotent),
    as the bridge and most HTTP clients do: a reused connection to the old pod is reset when it exits.
    """
    model = "mobilenet_v2"
    url = _service_url(model)
    with http_client(url) as probe:
        current = predictions_from(probe.post(f"/v2/models/{model}/infer", json=v2_request([jpeg()])).json())[0]
    new_threshold = 0.5 if abs(current.threshold - 0.5) > 1e-6 else 0.55
    outcomes: dict[str, list[tuple[int, float]]] = {"fresh": [], "keepalive": []}
    resets = {"fresh": 0, "keepalive": 0}
    errors: list[tuple[float, str, str]] = []  # (wall time, stream, exception): to line up with the pods' events
    stop = threading.Event()

    def send(remote: httpx.Client) -> tuple[int, float]:
        r = remote.post(f"/v2/models/{model}/infer", json=v2_request([jpeg(seed=3)]), timeout=30)
        return r.status_code, predictions_from(r.json())[0].threshold if r.status_code == 200 else -1.0

    def stream(kind: str) -> None:
        keep = http_client(url) if kind == "keepalive" else None
        while not stop.is_set():
            for attempt in (1, 2):
                try:
                    if keep is not None:
                        outcomes[kind].append(send(keep))
                    else:
                        with http_client(url) as once:
                            outcomes[kind].append(send(once))
                    break
                except httpx.TransportError as e:
                    resets[kind] += 1
                    errors.append((time.time(), kind, f"{type(e).__name__}: {e}"[:160]))
                    if attempt == 2 or kind == "fresh":
                        outcomes[kind].append((-1, -1.0))
                        break
            time.sleep(0.05)
        if keep is not None:
            keep.close()

    workers = [threading.Thread(target=stream, args=(k,), daemon=True) for k in outcomes]
    for w in workers:
        w.start()
    time.sleep(3)
    done = _helm("upgrade", RELEASE, str(ROOT / "helm" / "image-moderation"), "-n", NAMESPACE, "-f", str(VALUES),
                 "--set", f"models.{model}.threshold={new_threshold}", "--wait", "--timeout", "10m")
    assert done.returncode == 0, done.stderr
    kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", "inferenceservice", "--all", "--timeout=600s",
            timeout=620)
    wait_until(lambda: all(any(t == new_threshold for _, t in o[-3:]) for o in outcomes.values()), 300,
               "answers with the new threshold on both streams")
    time.sleep(8)  # past the old pod's preStop sleep and exit
    stop.set()
    for w in workers:
        w.join(timeout=60)
    if errors:
        print(_rollout_timeline(errors))
    for kind, seen in outcomes.items():
        failed = [o for o in seen if o[0] != 200]
        thresholds = sorted({t for _, t in seen})
        print(f"helm upgrade under load, {kind}: {len(seen)} requests, {resets[kind]} connection resets, "
              f"{len(failed)} failed, thresholds seen {thresholds}")
        assert not failed, kind
        # Answers moved from the archive's threshold to the new one, and once moved they stay moved.
        assert len(thresholds) == 2 and new_threshold in thresholds, (kind, thresholds)
        first_new = next(i for i, (_, t) in enumerate(seen) if t == new_threshold)
        assert all(t == new_threshold for _, t in seen[first_new:]), f"{kind}: old and new pods interleaved"


def test_a_deleted_predictor_pod_stops_after_its_prestop_sleep_not_its_deadline() -> None:
    """The kubelet's SIGTERM must reach TorchServe (docker/torchserve_init.py): a predictor pod then stops a few
    seconds after its preStop sleep. (`torchserve` as the container's PID 1 ignored it: every terminating pod
    was SIGKILLed at the end of its grace period, mid-request.)"""
    took, sleep, grace = delete_predictor_pod("resnet50")
    print(f"TorchServe predictor pod deleted in {took:.1f} s (preStop sleep {sleep} s, grace period {grace} s)")
    assert took < sleep + 12 < grace, took


def _rollout_timeline(errors: list[tuple[float, str, str]]) -> str:
    """The streams' transport errors among the namespace's pod events (scheduled, started, readiness failures,
    killed), in time order: whether an error came from a pod that had left the Service or from a new one."""
    events = kube_json("-n", NAMESPACE, "get", "events")["items"]
    lines = [(calendar.timegm(time.strptime(e["lastTimestamp"], "%Y-%m-%dT%H:%M:%SZ")),
              f"event {e['involvedObject']['name']}: {e['reason']} {e.get('message', '')[:100]}")
             for e in events if e.get("lastTimestamp") and e["involvedObject"].get("kind") == "Pod"]
    lines += [(at, f"stream {kind}: {error}") for at, kind, error in errors]
    return "\n".join(time.strftime("%H:%M:%S", time.gmtime(at)) + f" {line}" for at, line in sorted(lines))


def _helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([HELM, *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "KUBECONFIG": KUBECONFIG})


def test_uninstall_leaves_nothing_behind() -> None:
    done = _helm("uninstall", RELEASE, "-n", NAMESPACE, "--wait", "--timeout", "5m")
    assert done.returncode == 0, done.stderr
    kinds = ("deployments,replicasets,services,inferenceservices,servingruntimes,networkpolicies,"
             "poddisruptionbudgets,podmonitors,servicemonitors,prometheusrules,configmaps,secrets,"
             "serviceaccounts,horizontalpodautoscalers,scaledobjects")
    left = kubectl("-n", NAMESPACE, "get", kinds, "-l", f"app.kubernetes.io/instance={RELEASE}", "-o", "name")
    assert left.strip() == ""
    # Pods go after their preStop sleep and TorchServe's shutdown.
    wait_until(lambda: not kube_json("-n", NAMESPACE, "get", "pods")["items"], 180, "predictor pods to go")
    # Only what Kubernetes puts in every namespace remains (and the model volume claim, not the chart's).
    defaults = {("ConfigMap", "kube-root-ca.crt"), ("ServiceAccount", "default")}
    remaining = {(i["kind"], i["metadata"]["name"]) for i in kube_json("-n", NAMESPACE, "get", kinds)["items"]}
    assert remaining <= defaults, remaining


def _answers(remote: httpx.Client) -> bool:
    try:
        return remote.get("/ping", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_kustomize_overlay_deploys_the_same_objects() -> None:
    """`kubectl apply -k k8s/overlays/local-cluster` in a second namespace serves the same answers."""
    namespace = "im-kustomize"
    done = subprocess.run([str(ROOT / "cluster" / "deploy.sh"), "kustomize"], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "KUBECONFIG": KUBECONFIG})
    assert done.returncode == 0, done.stdout + done.stderr
    try:
        for model in MODELS:
            svc = kube_json("-n", namespace, "get", "service", f"{isvc_name(model)}-predictor")
            with http_client(f"http://{svc['spec']['clusterIP']}:80") as remote:
                # Ready is the pod's state; kube-proxy programs the new endpoint moments later (refused until
                # then, seen once under load): wait for the Service, as any client of a fresh Service must.
                wait_until(lambda: _answers(remote), 60, f"the {namespace} {model} Service to accept connections")
                r = remote.post(f"/v2/models/{model}/infer", json=v2_request([jpeg()]))
                assert r.status_code == 200, r.text
                assert predictions_from(r.json())[0].label in ("benign", "harmful")
    finally:
        kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=180s", timeout=200, check=False)
        kubectl("delete", "pv", f"image-moderation-models-{namespace}", "--ignore-not-found", check=False)
