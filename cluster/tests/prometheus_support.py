"""A real Prometheus (Debian's 2.42, `make k8s-tools`) scraping the local cluster: the cluster half of the dashboard's
live check (tests/test_monitoring_dashboard.py checks the same queries against the local stack).

Its scrape jobs are the ones prometheus-operator generates from the chart's PodMonitor and ServiceMonitor
(`tests.k8s_support.kubernetes_scrape_configs`), so the monitors themselves are proven, not a hand-written
equivalent; plus the kubelet's cAdvisor endpoint, whose container_* series feed the dashboard's CPU and memory
panels, and kube-state-metrics for its kube_* panels. The chart's PrometheusRule is loaded as rules.

Debian builds Prometheus without Kubernetes discovery (client-go is not packaged: `promtool check config` answers
"field kubernetes_sd_configs not found"). `KubernetesDiscovery` stands in for it: an HTTP service discovery
endpoint that reads pods, Endpoints and Services from the API server (`kubectl get --raw`, the cluster's
kubeconfig) and answers with the targets and `__meta_kubernetes_*` labels Prometheus' own discovery makes of them
(discovery/kubernetes: pod.go, endpoints.go). Each `kubernetes_sd_configs` entry of the operator's jobs becomes an
`http_sd_configs` entry for the same role and namespaces; the operator's relabelings run unchanged in Prometheus.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlparse

import httpx

from cluster.tests.conftest import KUBECONFIG, KUBECTL, NAMESPACE, RELEASE, ROOT, cluster_pin
from tests import k8s_support as k
from tests.kafka_support import free_port

CLUSTER_DIR = Path(os.environ.get("CLUSTER_DIR", ROOT / ".run" / "cluster"))
PKI = CLUSTER_DIR / "pki"  # cluster/pki.sh: ca.crt signs the kubelet's serving cert; admin.* is system:masters
NODE_IP = os.environ.get("NODE_IP") or cluster_pin("NODE_IP")
KUBELET_PORT = 10250  # cluster/config/kubelet.yaml
VALUES = ROOT / "helm" / "image-moderation" / "ci" / "local-cluster-values.yaml"
CADVISOR_JOB = "kubelet-cadvisor"
KUBE_STATE_METRICS_JOB = "kube-state-metrics"
META = "__meta_kubernetes_"


def chart_docs() -> list[dict[str, Any]]:
    """The chart rendered as `make cluster-deploy` installs it (same release, namespace and values)."""
    return k.load_docs(k.helm_template(values=[VALUES], release=RELEASE, namespace=NAMESPACE))


# ------------------------------------------------------------------------- Kubernetes discovery over HTTP SD


def _label(name: str) -> str:
    """strutil.SanitizeLabelName: every character outside [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _object_labels(obj: dict[str, Any], role: str) -> dict[str, str]:
    """addObjectMetaLabels: name, labels and annotations of an object, each with its *present label."""
    meta = obj["metadata"]
    out = {f"{META}{role}_name": meta["name"]}
    for kind, values in (("label", meta.get("labels", {})), ("annotation", meta.get("annotations", {}))):
        for key, value in values.items():
            out[f"{META}{role}_{kind}_{_label(key)}"] = value
            out[f"{META}{role}_{kind}present_{_label(key)}"] = "true"
    return out


def _pod_labels(pod: dict[str, Any]) -> dict[str, str]:
    """podLabels: the pod's address, readiness, phase, node, uid, metadata and controlling owner."""
    status = pod["status"]
    ready = next((c["status"].lower() for c in status.get("conditions", []) if c["type"] == "Ready"), "unknown")
    out = {
        f"{META}pod_ip": status.get("podIP", ""),
        f"{META}pod_ready": ready,
        f"{META}pod_phase": status.get("phase", ""),
        f"{META}pod_node_name": pod["spec"].get("nodeName", ""),
        f"{META}pod_host_ip": status.get("hostIP", ""),
        f"{META}pod_uid": pod["metadata"].get("uid", ""),
        **_object_labels(pod, "pod"),
    }
    owner = next((o for o in pod["metadata"].get("ownerReferences", []) if o.get("controller")), None)
    if owner:
        out[f"{META}pod_controller_kind"] = owner["kind"]
        out[f"{META}pod_controller_name"] = owner["name"]
    return out


def _containers(pod: dict[str, Any]) -> Iterator[tuple[dict[str, Any], bool]]:
    """(container, is init container), app containers first."""
    yield from ((c, False) for c in pod["spec"].get("containers", []))
    yield from ((c, True) for c in pod["spec"].get("initContainers", []))


def _address(host: str, port: int | str) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _container_port(container: dict[str, Any], port: dict[str, Any], init: bool) -> dict[str, str]:
    return {
        f"{META}pod_container_name": container["name"],
        f"{META}pod_container_image": container.get("image", ""),
        f"{META}pod_container_port_name": port.get("name", ""),
        f"{META}pod_container_port_number": str(port["containerPort"]),
        f"{META}pod_container_port_protocol": port.get("protocol", "TCP"),
        f"{META}pod_container_init": str(init).lower(),
    }


def pod_targets(pods: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role pod (Pod.buildPod): one target per declared container port, one without a port per container that
    declares none; a pod without an IP has none. An undeclared port is never a target."""
    out = []
    for pod in pods:
        ip = pod["status"].get("podIP")
        if not ip:
            continue
        common = {**_pod_labels(pod), f"{META}namespace": pod["metadata"]["namespace"]}
        for container, init in _containers(pod):
            if not container.get("ports"):
                out.append({**common, "__address__": ip, f"{META}pod_container_name": container["name"],
                            f"{META}pod_container_image": container.get("image", ""),
                            f"{META}pod_container_init": str(init).lower()})
            for port in container.get("ports", []):
                out.append({**common, "__address__": _address(ip, port["containerPort"]),
                            **_container_port(container, port, init)})
    return out


def endpoints_targets(endpoints: list[dict[str, Any]], services: list[dict[str, Any]],
                      pods: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Role endpoints (Endpoints.buildEndpoints): one target per address and port with the Service's and the
    backing pod's labels, then one per container port of those pods that no endpoint port covers."""
    by_name = {(o["metadata"]["namespace"], o["metadata"]["name"]): o for o in services}
    pod_by_name = {(p["metadata"]["namespace"], p["metadata"]["name"]): p for p in pods}
    out = []
    for eps in endpoints:
        ns = eps["metadata"]["namespace"]
        common = {f"{META}namespace": ns, **_object_labels(eps, "endpoints")}
        if (ns, eps["metadata"]["name"]) in by_name:
            common.update(_object_labels(by_name[ns, eps["metadata"]["name"]], "service"))
        seen: dict[str, tuple[dict[str, Any], set[int]]] = {}
        for subset in eps.get("subsets", []):
            for port in subset.get("ports", []):
                addresses = [(a, "true") for a in subset.get("addresses", [])]
                addresses += [(a, "false") for a in subset.get("notReadyAddresses", [])]
                for addr, ready in addresses:
                    target = {**common, "__address__": _address(addr["ip"], port["port"]),
                              f"{META}endpoint_port_name": port.get("name", ""),
                              f"{META}endpoint_port_protocol": port.get("protocol", "TCP"),
                              f"{META}endpoint_ready": ready}
                    ref = addr.get("targetRef")
                    if ref:
                        target[f"{META}endpoint_address_target_kind"] = ref["kind"]
                        target[f"{META}endpoint_address_target_name"] = ref["name"]
                    if addr.get("nodeName"):
                        target[f"{META}endpoint_node_name"] = addr["nodeName"]
                    if addr.get("hostname"):
                        target[f"{META}endpoint_hostname"] = addr["hostname"]
                    pod = None
                    if ref and ref["kind"] == "Pod":
                        pod = pod_by_name.get((ref.get("namespace", ns), ref["name"]))
                    if pod is not None:
                        target.update(_pod_labels(pod))
                        match = next(((c, p, init) for c, init in _containers(pod) for p in c.get("ports", [])
                                      if p["containerPort"] == port["port"]), None)
                        if match:
                            target.update(_container_port(*match))
                            target[f"{META}pod_container_port_protocol"] = port.get("protocol", "TCP")
                        seen.setdefault(pod["metadata"]["name"], (pod, set()))[1].add(port["port"])
                    out.append(target)
        for pod, ports in seen.values():
            if not pod["status"].get("podIP"):
                continue
            for container, init in _containers(pod):
                for port in container.get("ports", []):
                    if port["containerPort"] not in ports:
                        out.append({**common, **_pod_labels(pod),
                                    "__address__": _address(pod["status"]["podIP"], port["containerPort"]),
                                    **_container_port(container, port, init)})
    return out


class KubernetesDiscovery:
    """HTTP SD endpoint (`/<role>?namespace=...`) answering with what Prometheus' Kubernetes discovery would find."""

    def __init__(self, kubeconfig: str | Path) -> None:
        self.kubeconfig = str(kubeconfig)
        discovery = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlparse(self.path)
                try:
                    body = json.dumps(discovery.groups(url.path.strip("/"), parse_qs(url.query).get("namespace", [])))
                    code = 200
                except Exception as exc:  # any failure: Prometheus reports it as a discovery error
                    body, code = str(exc), 500
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json" if code == 200 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def list(self, resource: str, namespaces: list[str]) -> list[dict[str, Any]]:
        """Objects of a core/v1 resource in the namespaces (all namespaces when none are given)."""
        paths = [f"/api/v1/namespaces/{ns}/{resource}" for ns in namespaces] or [f"/api/v1/{resource}"]
        items = []
        for path in paths:
            done = subprocess.run([KUBECTL, "get", "--raw", path], capture_output=True, text=True, timeout=30,
                                  env={**os.environ, "KUBECONFIG": self.kubeconfig})
            if done.returncode != 0:
                raise RuntimeError(f"kubectl get --raw {path}: {done.stderr.strip()}")
            items += json.loads(done.stdout)["items"]
        return items

    def groups(self, role: str, namespaces: list[str]) -> list[dict[str, Any]]:
        """HTTP SD answer: one target group per target, its `__meta_kubernetes_*` labels as the group's labels."""
        if role == "pod":
            targets = pod_targets(self.list("pods", namespaces))
        elif role == "endpoints":
            targets = endpoints_targets(self.list("endpoints", namespaces), self.list("services", namespaces),
                                        self.list("pods", namespaces))
        else:
            raise ValueError(f"role {role!r} is not emulated")
        return [{"targets": [t.pop("__address__")], "labels": t} for t in targets]

    def sd_url(self, sd: dict[str, Any]) -> str:
        """This endpoint's URL for a kubernetes_sd_configs entry (its role and namespaces)."""
        query = urlencode({"namespace": sd.get("namespaces", {}).get("names", [])}, doseq=True)
        return f"{self.url}/{sd['role']}?{query}"

    def http_sd(self, jobs: list[dict[str, Any]], refresh: str = "10s") -> list[dict[str, Any]]:
        """The jobs with each kubernetes_sd_configs entry served by this endpoint (same role and namespaces)."""
        out = []
        for job in jobs:
            for sd in job.get("kubernetes_sd_configs", []):
                assert sd.get("kubeconfig_file", self.kubeconfig) == self.kubeconfig, sd
                assert set(sd) <= {"role", "namespaces", "kubeconfig_file"}, f"not emulated: {sd}"
            sds = job.get("kubernetes_sd_configs")
            if sds:  # renamed in place, so the job reads as before
                job = {("http_sd_configs" if key == "kubernetes_sd_configs" else key): v for key, v in job.items()}
                job["http_sd_configs"] = [{"url": self.sd_url(sd), "refresh_interval": refresh} for sd in sds]
            out.append(job)
        return out

    def __enter__(self) -> KubernetesDiscovery:
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


# ------------------------------------------------------------------------------------------------ Prometheus


def kubelet_cadvisor_job(pki: Path = PKI, target: str = f"{NODE_IP}:{KUBELET_PORT}",
                         interval: str = "5s") -> dict[str, Any]:
    """The kubelet's /metrics/cadvisor, as kube-prometheus-stack's kubelet ServiceMonitor scrapes it.

    TLS is verified against the cluster CA (the kubelet's serving cert names the node IP), and the admin client
    certificate passes the kubelet's webhook authorization. honor_labels keeps the kubelet's own
    namespace/pod/container labels, the ones the dashboard's container_* queries select on."""
    return {
        "job_name": CADVISOR_JOB,
        "honor_labels": True,
        "scrape_interval": interval,
        "scheme": "https",
        "metrics_path": "/metrics/cadvisor",
        "tls_config": {
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "admin.crt"),
            "key_file": str(pki / "admin.key"),
        },
        "static_configs": [{"targets": [target]}],
    }


def kube_state_metrics_job(kubeconfig: str | Path, interval: str = "5s") -> dict[str, Any]:
    """kube-state-metrics (cluster/manifests/kube-state-metrics.yaml) through its Service's endpoints, as
    kube-prometheus-stack scrapes it: honor_labels keeps the namespace of the objects it describes."""
    return {
        "job_name": KUBE_STATE_METRICS_JOB,
        "honor_labels": True,
        "scrape_interval": interval,
        "kubernetes_sd_configs": [{"role": "endpoints", "namespaces": {"names": ["kube-system"]},
                                   "kubeconfig_file": str(kubeconfig)}],
        "relabel_configs": [
            {"action": "keep", "source_labels": [f"{META}service_name", f"{META}endpoint_port_name"],
             "regex": "kube-state-metrics;http-metrics"},
            {"target_label": "job", "replacement": KUBE_STATE_METRICS_JOB},
        ],
    }


def scrape_configs(docs: list[dict[str, Any]], discovery: KubernetesDiscovery, pki: Path = PKI,
                   cadvisor_target: str = f"{NODE_IP}:{KUBELET_PORT}", interval: str = "5s") -> list[dict[str, Any]]:
    """The chart's monitors as the operator runs them (discovery through `discovery`), the kubelet's cAdvisor and
    kube-state-metrics."""
    jobs = discovery.http_sd([*k.kubernetes_scrape_configs(docs, discovery.kubeconfig, interval),
                              kube_state_metrics_job(discovery.kubeconfig, interval)])
    return [*jobs, kubelet_cadvisor_job(pki, cadvisor_target, interval)]


@contextmanager
def cluster_prometheus(workdir: Path, docs: list[dict[str, Any]], interval: str = "5s",
                       kubeconfig: str | Path = KUBECONFIG, pki: Path = PKI,
                       cadvisor_target: str = f"{NODE_IP}:{KUBELET_PORT}") -> Iterator[str]:
    """Prometheus on a free 127.0.0.1 port scraping the cluster, with the chart's rules; yields its base URL.

    A context manager rather than a session fixture: it is stopped (by its PID) as soon as the check is done, so
    it does not take CPU from the 2-core node or scrape through the later helm upgrade and uninstall."""
    with KubernetesDiscovery(kubeconfig) as discovery:
        scrape = scrape_configs(docs, discovery, pki, cadvisor_target, interval)
        with k.prometheus(workdir, docs, interval, scrape=scrape, listen=f"127.0.0.1:{free_port()}") as base:
            yield base


def active_targets(base: str) -> dict[str, list[dict[str, Any]]]:
    """job label -> its active targets."""
    out: dict[str, list[dict[str, Any]]] = {}
    targets = httpx.get(f"{base}/api/v1/targets", params={"state": "active"}, timeout=10).json()["data"]
    for t in targets["activeTargets"]:
        out.setdefault(t["labels"].get("job", t["scrapePool"]), []).append(t)
    return out


def dropped_targets(base: str, scrape_pool: str) -> list[str]:
    """What discovery found for a scrape pool but its relabelings dropped: pod/container:port, to tell why."""
    targets = httpx.get(f"{base}/api/v1/targets", params={"state": "dropped"}, timeout=10).json()["data"]
    return sorted(
        f"{d.get(META + 'pod_name', '?')}/{d.get(META + 'pod_container_name', '?')}"
        f":{d.get(META + 'pod_container_port_number', 'no declared port')}"
        for d in (t["discoveredLabels"] for t in targets["droppedTargets"])
        # 2.42 may show a dropped target's labels partly relabeled: the operator's first rule copies `job`.
        if scrape_pool in (d.get("job"), d.get("__tmp_prometheus_job_name"))
    )
