"""Shared helpers of the Kubernetes and monitoring tests: pinned tools, chart rendering, KServe's pod merge,
and a real Prometheus with the chart's own monitors and rules, scraping the local stack (static targets) or a
cluster (the operator's Kubernetes-discovery jobs, used by cluster/tests/prometheus_support.py), and the checks
that every dashboard query and recording rule returns data.

Tools come from `make k8s-tools` (scripts/k8s-tools.sh): helm, kubeconform, kube-score, kustomize in
.cache/tools/bin, promtool/prometheus from Debian, schemas generated from the pinned real API definitions.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from handlers.stack import stack

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "image-moderation"
PRODUCTION_VALUES = CHART / "values-production.yaml"
K8S_DIR = ROOT / "k8s"
TOOLS_SH = ROOT / "scripts" / "k8s-tools.sh"
BIN = ROOT / ".cache" / "tools" / "bin"
RELEASE = "image-moderation"
NAMESPACE = "image-moderation"
KUBE_VERSION = "1.34.2"

# kube-score checks switched off, each for a stated reason (also listed in helm/image-moderation/README.md).
KUBE_SCORE_IGNORES = {
    # Tags are pinned (IfNotPresent + immutable tags); Always adds a registry round-trip to every pod start.
    "container-image-pull-policy",
    # Spreading uses topologySpreadConstraints (kube-score only recognises podAntiAffinity).
    "deployment-has-host-podantiaffinity",
}


def tool(name: str) -> str:
    """Absolute path of a pinned tool; fails (not skips) with the command that installs it."""
    path = BIN / name if (BIN / name).exists() else shutil.which(name)
    if not path:
        pytest.fail(f"{name} is missing: run `make k8s-tools`")
    return str(path)


def run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, check=False, **kw)


def schema_dir() -> Path:
    """Directory of the generated strict schemas (generated once per pinned version set)."""
    res = run([str(TOOLS_SH), "schemas"])
    if res.returncode != 0:
        pytest.fail(f"schema generation failed (make k8s-schemas):\n{res.stderr}")
    return Path(res.stdout.strip().splitlines()[-1])


def helm_template(
    values: Iterable[Path] = (), sets: Iterable[str] = (), release: str = RELEASE, namespace: str = NAMESPACE
) -> str:
    cmd = [tool("helm"), "template", release, str(CHART), "--namespace", namespace, "--kube-version", KUBE_VERSION]
    for v in values:
        cmd += ["-f", str(v)]
    for s in sets:
        cmd += ["--set", s]
    res = run(cmd)
    assert res.returncode == 0, f"helm template failed:\n{res.stderr}"
    return res.stdout


def load_docs(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]


def predictor_deployments(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The Deployment KServe (Standard mode) derives from each InferenceService + its runtime, so the
    predictor pods can be validated and linted like any workload: runtime container with the
    InferenceService's args appended, env merged, its resources; runtime volumes; predictor pod fields.
    KServe's storage-initializer init container is KServe's own and is not modelled."""
    runtimes = {d["metadata"]["name"]: d for d in docs if d["kind"] in {"ServingRuntime", "ClusterServingRuntime"}}
    out = []
    for isvc in find(docs, "InferenceService"):
        pred = isvc["spec"]["predictor"]
        model = pred["model"]
        runtime = runtimes[model["runtime"]]["spec"]
        container = copy.deepcopy(runtime["containers"][0])
        container["args"] = container.get("args", []) + model.get("args", [])
        env = {e["name"]: e for e in container.get("env", [])}
        env.update({e["name"]: e for e in model.get("env", [])})
        container["env"] = list(env.values())
        container["resources"] = model.get("resources", container.get("resources"))
        labels = {**pred.get("labels", {}), "serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}
        pod_spec = {
            "containers": [container],
            "volumes": runtime.get("volumes", []),
            "securityContext": pred.get("securityContext", {}),
            "automountServiceAccountToken": pred.get("automountServiceAccountToken", True),
        }
        for key in ("serviceAccountName", "nodeSelector", "tolerations", "affinity", "imagePullSecrets"):
            if key in pred:
                pod_spec[key] = pred[key]
        out.append(
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {
                    "name": f"{isvc['metadata']['name']}-predictor",
                    "namespace": isvc["metadata"]["namespace"],
                    # kube-score exemptions stated on the runtime apply to the pods it runs.
                    "annotations": {
                        k: v for k, v in runtimes[model["runtime"]]["metadata"].get("annotations", {}).items()
                        if k.startswith("kube-score/")
                    },
                },
                "spec": {
                    "selector": {"matchLabels": {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"]}},
                    "template": {"metadata": {"labels": labels}, "spec": pod_spec},
                },
            }
        )
    return out


def pod_specs(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """name -> pod spec of every workload the chart runs (bridge Deployment + KServe-derived predictors)."""
    workloads = find(docs, "Deployment") + predictor_deployments(docs)
    return {d["metadata"]["name"]: d["spec"]["template"]["spec"] for d in workloads}


def rules_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The PrometheusRule's spec as a Prometheus rule file."""
    (rule,) = find(docs, "PrometheusRule")
    return {"groups": rule["spec"]["groups"]}


def dashboard_of(docs: list[dict[str, Any]]) -> dict[str, Any]:
    import json

    (cm,) = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-dashboard")]
    return json.loads(cm["data"]["image-moderation.json"])


# ------------------------------------------------------------------------------------------ Prometheus


def relabel_config(rule: dict[str, Any]) -> dict[str, Any]:
    """A monitor's RelabelConfig (camelCase) as Prometheus config, as the operator writes it (action lowercased)."""
    keys = {"sourceLabels": "source_labels", "separator": "separator", "targetLabel": "target_label",
            "regex": "regex", "modulus": "modulus", "replacement": "replacement", "action": "action"}
    unknown = set(rule) - set(keys)
    assert not unknown, f"relabeling fields not translated: {unknown}"
    out = {keys[k]: v for k, v in rule.items()}
    if "action" in out:
        out["action"] = out["action"].lower()
    return out


def monitor_endpoints(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any], str]]:
    """(monitor, its one endpoint, the job label its relabelings set) of the chart's PodMonitor/ServiceMonitor."""
    out = []
    for kind in ("PodMonitor", "ServiceMonitor"):
        for mon in find(docs, kind):
            (ep,) = mon["spec"].get("podMetricsEndpoints") or mon["spec"]["endpoints"]
            job = next(r["replacement"] for r in ep.get("relabelings", []) if r.get("targetLabel") == "job")
            out.append((mon, ep, job))
    return out


def scrape_configs(docs: list[dict[str, Any]], interval: str = "2s",
                   bridge_target: str | None = None) -> list[dict[str, Any]]:
    """Static scrape jobs equivalent to the chart's PodMonitor and ServiceMonitor, aimed at the local stack.

    Job names and metric relabelings are taken from the rendered monitors; `namespace` and `pod` are the
    labels the operator's Kubernetes discovery would attach."""
    cfg = stack()
    targets = {
        "PodMonitor": (f"{cfg['STACK_HOST']}:{cfg['TORCHSERVE_METRICS_PORT']}", "predictor-local"),
        "ServiceMonitor": (bridge_target or f"{cfg['STACK_HOST']}:{cfg['BRIDGE_PORT']}", "bridge-local"),
    }
    jobs = []
    for mon, ep, job in monitor_endpoints(docs):
        target, pod = targets[mon["kind"]]
        jobs.append(
            {
                "job_name": job,
                "metrics_path": ep.get("path", "/metrics"),
                "scrape_interval": interval,
                "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE, "pod": pod}}],
                "metric_relabel_configs": [relabel_config(r) for r in ep.get("metricRelabelings", [])],
            }
        )
    return jobs


# Endpoint fields kubernetes_scrape_configs translates; any other field fails the translation (not ignored).
_TRANSLATED_ENDPOINT_FIELDS = {"port", "portNumber", "path", "interval", "scheme", "params", "honorLabels",
                               "relabelings", "metricRelabelings", "filterRunning"}


def _running() -> dict[str, Any]:
    """generateRunningFilter: pods that have ended are not scraped."""
    return {"action": "drop", "source_labels": ["__meta_kubernetes_pod_phase"], "regex": "(Failed|Succeeded)"}


def _label(name: str) -> str:
    """The operator's sanitizeLabelName: every character outside [a-zA-Z0-9_] becomes `_`."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def _from_label(source: str, target: str) -> dict[str, Any]:
    """A discovered label onto the target, when it is set."""
    return {"source_labels": [source], "target_label": target, "regex": "(.+)", "replacement": "${1}"}


def _copy_labels(meta: str, names: list[str]) -> list[dict[str, Any]]:
    """podTargetLabels / targetLabels: each of the object's labels under its sanitized name."""
    return [_from_label(f"{meta}_{_label(n)}", _label(n)) for n in names]


def _selector_relabelings(selector: dict[str, Any], role: str) -> list[dict[str, Any]]:
    """The monitor's label selector as `keep`/`drop` relabelings on the pod's or service's labels."""
    label, present = f"__meta_kubernetes_{role}_label", f"__meta_kubernetes_{role}_labelpresent"
    out = [
        {"action": "keep", "source_labels": [f"{label}_{_label(k)}", f"{present}_{_label(k)}"], "regex": f"({v});true"}
        for k, v in sorted(selector.get("matchLabels", {}).items())
    ]
    for exp in selector.get("matchExpressions", []):
        key, op = _label(exp["key"]), exp["operator"]
        if op in ("In", "NotIn"):
            out.append({"action": "keep" if op == "In" else "drop",
                        "source_labels": [f"{label}_{key}", f"{present}_{key}"],
                        "regex": f"({'|'.join(exp['values'])});true"})
        else:
            out.append({"action": "keep" if op == "Exists" else "drop", "source_labels": [f"{present}_{key}"],
                        "regex": "true"})
    return out


def _pod_monitor_relabelings(mon: dict[str, Any], ep: dict[str, Any]) -> list[dict[str, Any]]:
    """generatePodMonitorConfig: running pods, selector, container port (by name or number), labels, job."""
    spec, meta = mon["spec"], mon["metadata"]
    out = [_running()] if ep.get("filterRunning", True) else []
    out += _selector_relabelings(spec["selector"], "pod")
    if ep.get("port"):
        out.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                    "regex": ep["port"]})
    elif ep.get("portNumber"):
        # Only ports the container declares are discovered: an undeclared portNumber selects no target.
        out.append({"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_number"],
                    "regex": str(ep["portNumber"])})
    out += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        *_copy_labels("__meta_kubernetes_pod_label", spec.get("podTargetLabels", [])),
        {"target_label": "job", "replacement": f"{meta['namespace']}/{meta['name']}"},
    ]
    if spec.get("jobLabel"):
        out.append(_from_label(f"__meta_kubernetes_pod_label_{_label(spec['jobLabel'])}", "job"))
    return out


def _service_monitor_relabelings(mon: dict[str, Any], ep: dict[str, Any]) -> list[dict[str, Any]]:
    """generateServiceMonitorConfig (role endpoints): selector, Service port by name, labels, running pods, job."""
    spec = mon["spec"]
    out = _selector_relabelings(spec["selector"], "service")
    if ep.get("port"):
        out.append({"action": "keep", "source_labels": ["__meta_kubernetes_endpoint_port_name"], "regex": ep["port"]})
    target = ["__meta_kubernetes_endpoint_address_target_kind", "__meta_kubernetes_endpoint_address_target_name"]
    out += [
        {"source_labels": list(target), "separator": ";", "regex": f"{kind};(.*)", "replacement": "${1}",
         "target_label": kind.lower()}
        for kind in ("Node", "Pod")
    ]
    out += [
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_service_name"], "target_label": "service"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"},
    ]
    out += [_running()] if ep.get("filterRunning", True) else []
    out += _copy_labels("__meta_kubernetes_service_label", spec.get("targetLabels", []))
    out += _copy_labels("__meta_kubernetes_pod_label", spec.get("podTargetLabels", []))
    out.append({"source_labels": ["__meta_kubernetes_service_name"], "target_label": "job", "replacement": "${1}"})
    if spec.get("jobLabel"):
        out.append(_from_label(f"__meta_kubernetes_service_label_{_label(spec['jobLabel'])}", "job"))
    return out


def kubernetes_scrape_configs(docs: list[dict[str, Any]], kubeconfig: str | Path,
                              interval: str = "5s") -> list[dict[str, Any]]:
    """The scrape jobs prometheus-operator generates from the chart's PodMonitor and ServiceMonitor.

    Mirrors pkg/prometheus/promcfg.go of the pinned operator (PROMETHEUS_OPERATOR_VERSION in scripts/k8s-tools.sh),
    so a cluster check proves the monitors as the operator would run them: `kubernetes_sd_configs` (role pod /
    endpoints, the monitor's namespaces, reached through `kubeconfig`), the selector and port as `keep`
    relabelings, the namespace/pod/container/service labels, the default job, then the monitor's own relabelings.
    Left out: the monitor's interval (`interval` replaces it, so a test sees data in seconds) and the operator's
    sharding relabelings (one shard). An endpoint field not translated here fails instead of being dropped."""
    jobs = []
    for mon, ep, _ in monitor_endpoints(docs):
        pod_monitor = mon["kind"] == "PodMonitor"
        meta, namespaces = mon["metadata"], mon["spec"].get("namespaceSelector", {})
        unknown = set(ep) - _TRANSLATED_ENDPOINT_FIELDS
        assert not unknown, f"{mon['kind']} {meta['name']}: endpoint fields not translated: {unknown}"
        sd: dict[str, Any] = {"role": "pod" if pod_monitor else "endpoints", "kubeconfig_file": str(kubeconfig)}
        if not namespaces.get("any"):
            sd["namespaces"] = {"names": namespaces.get("matchNames") or [meta["namespace"]]}
        relabel = [{"source_labels": ["job"], "target_label": "__tmp_prometheus_job_name"}]
        relabel += _pod_monitor_relabelings(mon, ep) if pod_monitor else _service_monitor_relabelings(mon, ep)
        if ep.get("port"):
            relabel.append({"target_label": "endpoint", "replacement": ep["port"]})
        relabel += [relabel_config(r) for r in ep.get("relabelings", [])]
        job: dict[str, Any] = {
            "job_name": f"{'podMonitor' if pod_monitor else 'serviceMonitor'}/{meta['namespace']}/{meta['name']}/0",
            "honor_labels": bool(ep.get("honorLabels", False)),
            "kubernetes_sd_configs": [sd],
            "scrape_interval": interval,
            "metrics_path": ep.get("path", "/metrics"),
            **{key: ep[key] for key in ("scheme", "params") if key in ep},
            "relabel_configs": relabel,
            "metric_relabel_configs": [relabel_config(r) for r in ep.get("metricRelabelings", [])],
        }
        jobs.append(job)
    return jobs


@contextmanager
def prometheus(workdir: Path, docs: list[dict[str, Any]], interval: str = "2s",
               bridge_target: str | None = None, *, scrape: list[dict[str, Any]] | None = None,
               listen: str | None = None) -> Iterator[str]:
    """A real Prometheus (Debian package) with the chart's rules; yields its base URL.

    By default it listens on PROMETHEUS_PORT and scrapes the local stack (`scrape_configs`; `bridge_target`
    scrapes a test's own bridge, host:port, instead of the stack.env one). `scrape` replaces those jobs (the
    cluster check passes `kubernetes_scrape_configs`) and `listen` (host:port) the address."""
    cfg = stack()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules_of(docs), sort_keys=False))
    listen = listen or f"{cfg['STACK_HOST']}:{cfg['PROMETHEUS_PORT']}"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [listen]}]},
            *(scrape if scrape is not None else scrape_configs(docs, interval, bridge_target)),
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    check = run([tool("promtool"), "check", "config", str(workdir / "prometheus.yml")])
    assert check.returncode == 0, check.stdout + check.stderr
    base = f"http://{listen}"
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={listen}",
            "--storage.tsdb.retention.time=1h",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not start:\n{(workdir / 'prometheus.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def query(base: str, expr: str) -> list[dict[str, Any]]:
    res = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    body = res.json()
    assert res.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
    return body["data"]["result"]


def grafana_expr(expr: str, rate_interval: str = "1m") -> str:
    """A dashboard query as Grafana sends it with every variable on `All` (regex `.*`)."""
    return (
        expr.replace("$__rate_interval", rate_interval).replace("$namespace", ".*").replace("$model", ".*")
    )


def finite(result: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def recording_rules(docs: list[dict[str, Any]]) -> list[str]:
    return sorted({r["record"] for g in rules_of(docs)["groups"] for r in g["rules"] if "record" in r})


def panel_queries(dashboard: dict[str, Any], skip: Callable[[dict[str, Any]], bool]) -> dict[str, str]:
    """'<panel title> [<refId>]' -> its query as Grafana sends it (`grafana_expr`), for every panel not skipped."""
    return {
        f"{p['title']} [{t['refId']}]": grafana_expr(t["expr"])
        for p in dashboard["panels"]
        if not skip(p)
        for t in p["targets"]
    }


def without_data(base: str, docs: list[dict[str, Any]], dashboard: dict[str, Any],
                 skip: Callable[[dict[str, Any]], bool]) -> list[str]:
    """The recording rules, panel queries (but the skipped panels') and query variables that return no finite
    value yet; a variable `label_values(metric, label)` needs the metric to carry the label."""
    missing = [r for r in recording_rules(docs) if not finite(query(base, r))]
    missing += [name for name, expr in panel_queries(dashboard, skip).items() if not finite(query(base, expr))]
    for var in (v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"):
        metric, label = re.match(r"label_values\((.+), (\w+)\)$", var).groups()
        if not any(label in r["metric"] for r in query(base, grafana_expr(metric))):
            missing.append(f"variable {var}")
    return missing
