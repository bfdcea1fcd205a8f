"""Shared helpers of the Kubernetes and monitoring tests: pinned tools, chart rendering, KServe's pod merge,
and a real Prometheus scraping the local stack with the chart's own monitors and rules.

Tools come from `make k8s-tools` (scripts/k8s-tools.sh): helm, kubeconform, kube-score, kustomize in
.cache/tools/bin, promtool/prometheus from Debian, schemas generated from the pinned real API definitions.
"""

from __future__ import annotations

import copy
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Iterator
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


def scrape_configs(docs: list[dict[str, Any]], interval: str = "2s",
                   bridge_target: str | None = None) -> list[dict[str, Any]]:
    """Static scrape jobs equivalent to the chart's PodMonitor and ServiceMonitor, aimed at the local stack.

    Job names and metric relabelings are taken from the rendered monitors; `namespace` and `pod` are the
    labels the operator's Kubernetes discovery would attach."""
    cfg = stack()
    jobs = []
    targets = {
        "PodMonitor": (f"{cfg['STACK_HOST']}:{cfg['TORCHSERVE_METRICS_PORT']}", "predictor-local"),
        "ServiceMonitor": (bridge_target or f"{cfg['STACK_HOST']}:{cfg['BRIDGE_PORT']}", "bridge-local"),
    }
    for kind, (target, pod) in targets.items():
        for mon in find(docs, kind):
            endpoints = mon["spec"].get("podMetricsEndpoints") or mon["spec"]["endpoints"]
            (ep,) = endpoints
            job = next(r["replacement"] for r in ep.get("relabelings", []) if r.get("targetLabel") == "job")
            metric_relabel = [
                {k: v for k, v in {"action": r.get("action"), "regex": r.get("regex")}.items() if v}
                for r in ep.get("metricRelabelings", [])
            ]
            jobs.append(
                {
                    "job_name": job,
                    "metrics_path": ep.get("path", "/metrics"),
                    "scrape_interval": interval,
                    "static_configs": [{"targets": [target], "labels": {"namespace": NAMESPACE, "pod": pod}}],
                    "metric_relabel_configs": metric_relabel,
                }
            )
    return jobs


@contextmanager
def prometheus(workdir: Path, docs: list[dict[str, Any]], interval: str = "2s",
               bridge_target: str | None = None) -> Iterator[str]:
    """A real Prometheus (Debian package) on PROMETHEUS_PORT with the chart's rules; yields its base URL.

    `bridge_target` scrapes a test's own bridge (host:port) instead of the stack.env one."""
    cfg = stack()
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "rules.yaml").write_text(yaml.safe_dump(rules_of(docs), sort_keys=False))
    self_target = f"{cfg['STACK_HOST']}:{cfg['PROMETHEUS_PORT']}"
    config = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": [str(workdir / "rules.yaml")],
        "scrape_configs": [
            {"job_name": "prometheus", "static_configs": [{"targets": [self_target]}]},
            *scrape_configs(docs, interval, bridge_target),
        ],
    }
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    check = run([tool("promtool"), "check", "config", str(workdir / "prometheus.yml")])
    assert check.returncode == 0, check.stdout + check.stderr
    base = f"http://{cfg['STACK_HOST']}:{cfg['PROMETHEUS_PORT']}"
    log = (workdir / "prometheus.log").open("w")
    proc = subprocess.Popen(
        [
            tool("prometheus"),
            f"--config.file={workdir / 'prometheus.yml'}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address={cfg['STACK_HOST']}:{cfg['PROMETHEUS_PORT']}",
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
