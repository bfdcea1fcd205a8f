"""The Helm chart, validated offline: helm lint, strict schema validation of every rendered object against
the pinned Kubernetes / KServe / prometheus-operator / KEDA schemas, kube-score, and the chart's own rules
(restricted Pod Security, thread sizing, replica caps, no default secrets)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.config import DEFAULTS as BRIDGE_DEFAULTS
from kserve_runtime.config import DEFAULTS as KSERVE_DEFAULTS
from tests import k8s_support as k

# Values `runtime`: TorchServe (docker/predictor.Dockerfile) or `python -m kserve_runtime`
# (docker/kserve-predictor.Dockerfile). The validation below runs every variant with each.
RUNTIMES = ["torchserve", "kserve"]

# Value sets that exercise every template branch; each must render and validate. Besides the defaults and
# values-production.yaml, one file per tested scenario in the chart's ci/ (prometheus-community's layout), so a
# user reads exactly what was tested; ci/local-cluster-values.yaml is what `make cluster-deploy` installs.
SCENARIOS = sorted((k.CHART / "ci").glob("*-values.yaml"))
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "production": {"values": [k.PRODUCTION_VALUES]},
    **{path.name.removesuffix("-values.yaml"): {"values": [path]} for path in SCENARIOS},
}


def test_scenario_files_say_which_setup_they_are() -> None:
    """The tested setups are files a user can read and install, each saying which setup it is."""
    assert {"knative", "cluster-runtime", "keda-sasl-mtls", "local-cluster", "external-inference"} <= set(VARIANTS)
    for path in SCENARIOS:
        assert path.read_text().startswith("# "), f"{path.name}: say which setup it is, in a comment"


def render(name: str, runtime: str = "torchserve") -> str:
    v = VARIANTS[name]
    return k.helm_template(v.get("values", []), [*v.get("sets", []), f"runtime={runtime}"])


@pytest.fixture(scope="module")
def schemas() -> Path:
    return k.schema_dir()


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return k.load_docs(render("default"))


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("values", [[], [k.PRODUCTION_VALUES]], ids=["default", "production"])
def test_helm_lint_strict(values: list[Path], runtime: str) -> None:
    cmd = [k.tool("helm"), "lint", "--strict", str(k.CHART), "--kube-version", k.KUBE_VERSION, "--set",
           f"runtime={runtime}"]
    for v in values:
        cmd += ["-f", str(v)]
    res = k.run(cmd)
    assert res.returncode == 0, res.stdout + res.stderr


def kubeconform(schemas: Path, manifest: Path) -> list[dict[str, Any]]:
    res = k.run(
        [
            k.tool("kubeconform"), "-strict", "-output", "json", "-verbose",
            "-schema-location", f"{schemas}/kubernetes/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json",
            "-schema-location", f"{schemas}/crds/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json",
            str(manifest),
        ]
    )
    resources = json.loads(res.stdout)["resources"]
    bad = [r for r in resources if r["status"] != "statusValid"]
    assert res.returncode == 0 and not bad, json.dumps(bad, indent=1) + res.stderr
    return resources


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_object_valid_against_pinned_schemas(variant: str, runtime: str, schemas: Path,
                                                   tmp_path: Path) -> None:
    docs = k.load_docs(render(variant, runtime))
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(docs + k.predictor_deployments(docs)))
    resources = kubeconform(schemas, manifest)
    # Nothing skipped: every kind (including the CRDs) had a schema.
    assert len(resources) == len(docs) + len(k.find(docs, "InferenceService"))


def test_schema_validation_rejects_unknown_fields(
    schemas: Path, default_docs: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The strict schemas really are strict, for core kinds and for CRDs (a typo must not pass)."""
    for kind, path in [("Deployment", ("spec",)), ("InferenceService", ("spec", "predictor"))]:
        doc = json.loads(json.dumps(k.find(default_docs, kind)[0]))
        node = doc
        for key in path:
            node = node[key]
        node["minReplica"] = 1
        bad = tmp_path / f"{kind}.yaml"
        bad.write_text(yaml.safe_dump(doc))
        res = k.run([k.tool("kubeconform"), "-strict", "-schema-location",
                     f"{schemas}/kubernetes/{{{{.ResourceKind}}}}{{{{.KindSuffix}}}}.json", "-schema-location",
                     f"{schemas}/crds/{{{{.Group}}}}/{{{{.ResourceKind}}}}_{{{{.ResourceAPIVersion}}}}.json", str(bad)])
        assert res.returncode != 0 and "minReplica" in res.stdout, res.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("variant", ["default", "production"])
def test_kube_score_clean(variant: str, runtime: str, tmp_path: Path) -> None:
    docs = k.load_docs(render(variant, runtime))
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(docs + k.predictor_deployments(docs)))
    cmd = [k.tool("kube-score"), "score", "--output-format", "ci", str(manifest)]
    for check in sorted(k.KUBE_SCORE_IGNORES):
        cmd += ["--ignore-test", check]
    if variant == "default":
        # One replica is the small default; production values run two (checked without this ignore).
        cmd += ["--ignore-test", "horizontalpodautoscaler-replicas", "--ignore-test", "deployment-replicas"]
    else:
        # The bridge's replicas belong to KEDA (kube-score does not read ScaledObjects): check them here.
        assert k.find(docs, "ScaledObject")[0]["spec"]["minReplicaCount"] >= 2
        cmd += ["--ignore-test", "deployment-replicas"]
    res = k.run(cmd)
    problems = [line for line in res.stdout.splitlines() if line.startswith(("[CRITICAL]", "[WARNING]"))]
    assert res.returncode == 0 and not problems, res.stdout


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_restricted_pod_security(variant: str, runtime: str) -> None:
    """Pod Security 'restricted' for every container the chart runs, plus a read-only root filesystem."""
    for name, spec in k.pod_specs(k.load_docs(render(variant, runtime))).items():
        pod_sc = spec["securityContext"]
        assert pod_sc["runAsNonRoot"] is True and pod_sc["seccompProfile"]["type"] == "RuntimeDefault", name
        assert spec["automountServiceAccountToken"] is False, name
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["readOnlyRootFilesystem"] is True, name
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), name
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] > 0, name
            assert c["resources"]["limits"]["cpu"] and c["resources"]["limits"]["memory"], name
            assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]), f"{name}: writable /tmp"


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_inference_services_use_current_kserve_fields(runtime: str) -> None:
    """One InferenceService per model, the same shape with either runtime; each loads only its own archive."""
    docs = k.load_docs(render("default", runtime))
    isvcs = {d["metadata"]["name"]: d for d in k.find(docs, "InferenceService")}
    assert set(isvcs) == {"image-moderation-mobilenet-v2", "image-moderation-resnet50"}
    for name, isvc in isvcs.items():
        model_name = isvc["metadata"]["labels"]["image-moderation/model"]
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
        assert not any(a.startswith("autoscaling.knative.dev") for a in isvc["metadata"]["annotations"]), name
        pred = isvc["spec"]["predictor"]
        assert (pred["minReplicas"], pred["maxReplicas"], pred["scaleMetric"], pred["scaleTarget"]) == (1, 4, "cpu", 70)
        model = pred["model"]
        assert model["modelFormat"]["name"] == "pytorch" and model["protocolVersion"] == "v2"
        assert model["storageUri"] == "pvc://image-moderation-models"
        assert model["runtime"] == f"image-moderation-{runtime}"
        env = {e["name"]: e["value"] for e in model["env"]}
        if runtime == "kserve":
            assert "args" not in model and env["KSERVE_MODELS"] == model_name
        else:
            assert model["args"] == ["--models", f"{model_name}={model_name}.mar"] and "KSERVE_MODELS" not in env
    (serving_runtime,) = k.find(docs, "ServingRuntime")
    assert serving_runtime["metadata"]["name"] == f"image-moderation-{runtime}"
    (container,) = serving_runtime["spec"]["containers"]
    if runtime == "kserve":
        # docker/kserve-predictor.Dockerfile (python -m kserve_runtime, ONNX Runtime, no torch).
        assert container["image"] == "image-moderation/kserve-predictor:0.1.0"
        assert container["command"] == ["python", "-m", "kserve_runtime"] and "args" not in container
        return
    # docker/predictor.Dockerfile (TorchServe 0.12 + ONNX Runtime), tagged with the chart's appVersion.
    assert container["image"] == "image-moderation/predictor:0.1.0"
    assert "--model-store=/mnt/models/model-store" in container["args"]
    assert "--ts-config=/mnt/models/config/config.properties" in container["args"]


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(
    ("cpu", "workers", "threads"), [("2", 1, "2"), ("4", 2, "2"), ("1500m", 1, "1"), ("3", 1, "3")]
)
def test_torch_threads_match_cpu_limit(cpu: str, workers: int, threads: str, runtime: str) -> None:
    """Both runtimes run the archive's minWorkers forward passes at once (TorchServe workers, or the kserve
    runtime's batcher), each with MODERATION_TORCH_THREADS_<MODEL> threads (torch or ONNX Runtime intra-op)."""
    sets = [f"models.resnet50.resources.limits.cpu={cpu}", f"models.resnet50.workers={workers}", f"runtime={runtime}"]
    docs = k.load_docs(k.helm_template(sets=sets))
    (isvc,) = k.find(docs, "InferenceService", "image-moderation-resnet50")
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["MODERATION_TORCH_THREADS_RESNET50"] == threads
    if runtime == "torchserve":
        assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == threads
    else:  # no torch, no OpenMP in that image
        assert "OMP_NUM_THREADS" not in env and "MKL_NUM_THREADS" not in env


def test_backend_override_reaches_the_handler_variable(default_docs: list[dict[str, Any]]) -> None:
    """Empty keeps the archive's backend (no variable); a value becomes MODERATION_BACKEND_<MODEL>."""
    from handlers.settings import BACKENDS

    (isvc,) = k.find(default_docs, "InferenceService", "image-moderation-mobilenet-v2")
    assert not any(e["name"].startswith("MODERATION_BACKEND") for e in isvc["spec"]["predictor"]["model"]["env"])
    (isvc,) = k.find(k.load_docs(render("cluster-runtime")), "InferenceService", "image-moderation-mobilenet-v2")
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["MODERATION_BACKEND_MOBILENET_V2"] == "onnx" and env["MODERATION_THRESHOLD_MOBILENET_V2"] == "0.41"
    schema = json.loads((k.CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["models"]["additionalProperties"]["properties"]["backend"]["enum"]
    assert set(allowed) == {"", *BACKENDS}  # the chart offers exactly what the handler accepts


def test_operating_point_reaches_the_handler_variable(default_docs: list[dict[str, Any]]) -> None:
    """Empty keeps the archive's operating point (no variable); a value becomes MODERATION_OPERATING_POINT_<MODEL>,
    and the schema offers exactly the points the handler accepts."""
    from handlers.settings import OPERATING_POINTS

    (isvc,) = k.find(default_docs, "InferenceService", "image-moderation-mobilenet-v2")
    assert not any(e["name"].startswith("MODERATION_OPERATING_POINT")
                   for e in isvc["spec"]["predictor"]["model"]["env"])
    docs = k.load_docs(k.helm_template([], ["models.mobilenet_v2.operatingPoint=out_of_source"]))
    (isvc,) = k.find(docs, "InferenceService", "image-moderation-mobilenet-v2")
    env = {e["name"]: e["value"] for e in isvc["spec"]["predictor"]["model"]["env"]}
    assert env["MODERATION_OPERATING_POINT_MOBILENET_V2"] == "out_of_source"
    schema = json.loads((k.CHART / "values.schema.json").read_text())
    allowed = schema["properties"]["models"]["additionalProperties"]["properties"]["operatingPoint"]["enum"]
    assert set(allowed) == {"", *OPERATING_POINTS}


def test_review_band_values_reach_the_predictors_and_the_bridge(default_docs: list[dict[str, Any]]) -> None:
    """models.<m>.reviewThreshold -> MODERATION_REVIEW_THRESHOLD_<MODEL> (0 is a threshold, not "unset"; empty sets
    nothing, so the trained one serves); bridge.kafka.reviewTopic -> KAFKA_REVIEW_TOPIC, kept when empty, which is
    how the bridge is told to write no review copies."""
    from bridge.config import Config

    def model_env(docs: list[dict[str, Any]], isvc: str) -> dict[str, str]:
        (obj,) = k.find(docs, "InferenceService", f"image-moderation-{isvc}")
        return {e["name"]: e["value"] for e in obj["spec"]["predictor"]["model"]["env"]}

    def bridge_config(docs: list[dict[str, Any]]) -> dict[str, str]:
        (cm,) = [d for d in k.find(docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
        return cm["data"]

    for isvc in ("mobilenet-v2", "resnet50"):
        assert not any(n.startswith("MODERATION_REVIEW_THRESHOLD") for n in model_env(default_docs, isvc))
    assert Config.from_env(bridge_config(default_docs)).review_topic == "image_review"
    for runtime in ("torchserve", "kserve"):
        docs = k.load_docs(k.helm_template(sets=[f"runtime={runtime}", "models.mobilenet_v2.reviewThreshold=0",
                                                 "models.resnet50.reviewThreshold=0.12", "bridge.kafka.reviewTopic="]))
        assert model_env(docs, "mobilenet-v2")["MODERATION_REVIEW_THRESHOLD_MOBILENET_V2"] == "0"
        assert model_env(docs, "resnet50")["MODERATION_REVIEW_THRESHOLD_RESNET50"] == "0.12"
        assert bridge_config(docs)["KAFKA_REVIEW_TOPIC"] == ""
        assert Config.from_env(bridge_config(docs)).review_topic == ""
    res = k.run([k.tool("helm"), "template", "x", str(k.CHART), "--set", "models.resnet50.reviewThreshold=1.5"])
    assert res.returncode != 0 and "values don't meet the specifications of the schema" in res.stderr


def test_chart_workers_are_the_archives_workers() -> None:
    """Threads per worker are computed from models.<m>.workers: it must be the .mar's worker count."""
    values = yaml.safe_load((k.ROOT / "helm" / "image-moderation" / "values.yaml").read_text())
    for model, m in values["models"].items():
        archive = yaml.safe_load((k.ROOT / "model-archive" / "config" / f"{model}.yaml").read_text())
        assert m["workers"] == archive["minWorkers"] == archive["maxWorkers"], model


def test_predictor_images_are_built_from_the_project_dockerfiles() -> None:
    """The default backend (ONNX) needs onnxruntime, which the stock TorchServe image lacks."""
    dockerfile = (k.ROOT / "docker" / "predictor.Dockerfile").read_text()
    # The published base by default; `make images` on a machine without a registry passes a local stand-in.
    assert "ARG TORCHSERVE_IMAGE=pytorch/torchserve:0.12.0-cpu" in dockerfile
    assert "FROM ${TORCHSERVE_IMAGE}" in dockerfile
    assert "predictor-requirements.txt" in dockerfile
    assert "onnxruntime==" in (k.ROOT / "docker" / "predictor-requirements.txt").read_text()
    refs = k.run([str(k.ROOT / "scripts" / "images.sh"), "refs"])
    assert refs.returncode == 0, refs.stderr
    chart = yaml.safe_load((k.ROOT / "helm" / "image-moderation" / "Chart.yaml").read_text())
    values = yaml.safe_load((k.ROOT / "helm" / "image-moderation" / "values.yaml").read_text())
    for name in ("predictor", "bridge"):
        # `make images` builds the chart's defaults (as containerd names them: docker.io/ + repository).
        assert f"docker.io/image-moderation/{name}:{chart['appVersion']}" in refs.stdout.split(), refs.stdout
        repo = values[name]["image"]["repository"]
        assert repo == f"image-moderation/{name}", repo
    # runtime=kserve: docker/kserve-predictor.Dockerfile, `scripts/images.sh build kserve-predictor`.
    assert f"docker.io/image-moderation/kserve-predictor:{chart['appVersion']}" in refs.stdout.split(), refs.stdout
    assert values["predictor"]["kserveImage"]["repository"] == "image-moderation/kserve-predictor"
    assert "ENTRYPOINT [\"python\", \"-m\", \"kserve_runtime\"]" in (
        k.ROOT / "docker" / "kserve-predictor.Dockerfile").read_text()


def test_bridge_replicas_capped_at_partitions() -> None:
    docs = k.load_docs(k.helm_template(sets=["bridge.kafka.inputPartitions=3", "bridge.autoscaling.maxReplicas=10"]))
    assert k.find(docs, "HorizontalPodAutoscaler")[0]["spec"]["maxReplicas"] == 3
    docs = k.load_docs(k.helm_template(sets=["bridge.kafka.inputPartitions=4", "bridge.keda.enabled=true"]))
    (so,) = k.find(docs, "ScaledObject")
    assert so["spec"]["maxReplicaCount"] == 4 and not k.find(docs, "HorizontalPodAutoscaler")
    trigger = so["spec"]["triggers"][0]["metadata"]
    assert (trigger["consumerGroup"], trigger["topic"], trigger["allowIdleConsumers"]) == (
        "image-moderation-bridge", "image_data", "false")


def test_bridge_settings_are_real_bridge_variables(default_docs: list[dict[str, Any]]) -> None:
    """Every variable the chart sets is one bridge/config.py reads (no typo silently ignored)."""
    (cm,) = [d for d in k.find(default_docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    assert set(cm["data"]) <= set(BRIDGE_DEFAULTS)
    predictor = "image-moderation-mobilenet-v2-predictor"
    assert cm["data"]["INFERENCE_URL"] == f"http://{predictor}.image-moderation.svc.cluster.local"
    # The predictor is TorchServe itself: its readiness is /ping (tests/test_bridge_e2e.py runs that topology).
    assert cm["data"]["INFERENCE_READY_PATH"] == "/ping"
    docs = k.load_docs(render("production"))
    (dep,) = k.find(docs, "Deployment")
    env = {e["name"] for e in dep["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env == {"KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD_FILE", "KAFKA_SSL_CAFILE"}
    assert {n.removesuffix("_FILE") for n in env} <= set(BRIDGE_DEFAULTS)


def test_no_secret_by_default_and_sasl_needs_credentials(default_docs: list[dict[str, Any]]) -> None:
    assert not k.find(default_docs, "Secret")
    assert not k.find(k.load_docs(render("production")), "Secret")  # existingSecret only
    res = k.run([k.tool("helm"), "template", "x", str(k.CHART), "--set", "bridge.kafka.securityProtocol=SASL_SSL"])
    assert res.returncode != 0 and "sasl.password" in res.stderr or "sasl.username" in res.stderr


def test_values_schema_rejects_bad_values() -> None:
    for bad in ["predictor.deploymentMode=Serverless", "models.resnet50.scaleMetric=gpu", "bridge.protocol=v3",
                "bridge.kafka.securityProtocol=TLS", "monitoring.prometheusRule.latencySeconds=0.4",
                "models.mobilenet_v2.backend=tensorrt", "runtime=triton"]:
        res = k.run([k.tool("helm"), "template", "x", str(k.CHART), "--set", bad])
        assert res.returncode != 0 and "values don't meet the specifications of the schema" in res.stderr, bad


def test_network_policies_cover_every_pod(default_docs: list[dict[str, Any]]) -> None:
    policies = k.find(default_docs, "NetworkPolicy")
    for name in k.pod_specs(default_docs):
        workload = next(d for d in default_docs + k.predictor_deployments(default_docs)
                        if d["kind"] == "Deployment" and d["metadata"]["name"] == name)
        labels = workload["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in policies if p["spec"]["podSelector"]["matchLabels"].items() <= labels.items()]
        assert matching and all("Ingress" in p["spec"]["policyTypes"] for p in matching), name
    bridge = k.find(default_docs, "NetworkPolicy", "image-moderation-bridge")[0]
    assert "Egress" in bridge["spec"]["policyTypes"]
    ports = {p["port"] for rule in bridge["spec"]["egress"] for p in rule["ports"]}
    assert {53, 9092, 8080} <= ports


def test_standard_labels_everywhere(default_docs: list[dict[str, Any]]) -> None:
    for d in default_docs:
        labels = d["metadata"]["labels"]
        for key in ("app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
                    "app.kubernetes.io/managed-by", "app.kubernetes.io/component", "helm.sh/chart"):
            assert key in labels, f"{d['kind']}/{d['metadata']['name']} lacks {key}"


def test_predictor_hpa_owned_by_kserve_or_by_the_chart() -> None:
    """Default: KServe makes each predictor's HPA (no behavior field, so a 5-minute scale-down window).
    owner=chart: the chart's HPA with the same bounds and metric plus `behavior`, aimed at the Deployment KServe
    makes, and the InferenceService tells KServe to make none (autoscalerClass external)."""
    docs = k.load_docs(k.helm_template())
    targets = [h["spec"]["scaleTargetRef"]["name"] for h in k.find(docs, "HorizontalPodAutoscaler")]
    assert not [t for t in targets if "predictor" in t]
    assert all("serving.kserve.io/autoscalerClass" not in i["metadata"]["annotations"]
               for i in k.find(docs, "InferenceService"))
    behavior = {"scaleDown": {"stabilizationWindowSeconds": 30}}
    docs = k.load_docs(k.helm_template(sets=["predictor.hpa.owner=chart", "models.resnet50.maxReplicas=3",
                                             "predictor.hpa.behavior.scaleDown.stabilizationWindowSeconds=30"]))
    deployments = {d["metadata"]["name"] for d in k.predictor_deployments(docs)}
    hpas = {h["spec"]["scaleTargetRef"]["name"]: h for h in k.find(docs, "HorizontalPodAutoscaler")
            if "predictor" in h["spec"]["scaleTargetRef"]["name"]}
    assert set(hpas) == deployments == {f"image-moderation-{m}-predictor" for m in ("mobilenet-v2", "resnet50")}
    # KServe deletes an HPA named like its own (<isvc>-predictor) when the class is external.
    assert {h["metadata"]["name"] for h in hpas.values()} == {f"image-moderation-{m}-hpa"
                                                              for m in ("mobilenet-v2", "resnet50")}
    for isvc in k.find(docs, "InferenceService"):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/autoscalerClass"] == "external"
        hpa = hpas[f"{isvc['metadata']['name']}-predictor"]["spec"]
        pred = isvc["spec"]["predictor"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                         "name": f"{isvc['metadata']['name']}-predictor"}
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (pred["minReplicas"], pred["maxReplicas"])
        assert hpa["metrics"] == [{"type": "Resource", "resource": {"name": pred["scaleMetric"], "target": {
            "type": "Utilization", "averageUtilization": pred["scaleTarget"]}}}]
        assert hpa["behavior"] == behavior
    assert hpas["image-moderation-resnet50-predictor"]["spec"]["maxReplicas"] == 3
    res = k.run([k.tool("helm"), "template", "x", str(k.CHART), "--set", "predictor.hpa.owner=chart",
                 "--set", "predictor.deploymentMode=Knative"])
    assert res.returncode != 0 and "needs predictor.deploymentMode=Standard" in res.stderr, res.stderr


def test_pod_monitor_reaches_the_undeclared_metrics_port(default_docs: list[dict[str, Any]]) -> None:
    """Prometheus discovers only declared container ports, and TorchServe's :8082 is not declared (Knative
    allows one port): the PodMonitor keeps the runtime container's target and rewrites its address to :8082
    (a `portNumber: 8082` selected nothing on the local cluster)."""
    (mon,) = k.find(default_docs, "PodMonitor")
    (ep,) = mon["spec"]["podMetricsEndpoints"]
    declared = {p["containerPort"] for d in k.predictor_deployments(default_docs)
                for c in d["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert 8082 not in declared and "portNumber" not in ep and "port" not in ep, (declared, ep)
    rules = ep["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_container_name"], "action": "keep",
            "regex": "kserve-container"} in rules
    (address,) = [r for r in rules if r.get("targetLabel") == "__address__"]
    assert address["sourceLabels"] == ["__meta_kubernetes_pod_ip"] and address["replacement"] == "$1:8082"
    containers = {c["name"] for d in k.predictor_deployments(default_docs)
                  for c in d["spec"]["template"]["spec"]["containers"]}
    assert containers == {"kserve-container"}


def render_notes(tmp_path: Path, sets: tuple[str, ...] = ()) -> str:
    """NOTES.txt as `helm install` prints it: a chart copy with one extra template that emits `im.notes`."""
    chart = tmp_path / "chart"
    shutil.copytree(k.CHART, chart)
    (chart / "templates" / "zz-notes-probe.yaml").write_text('notes: {{ include "im.notes" . | toJson }}\n')
    cmd = [k.tool("helm"), "template", k.RELEASE, str(chart), "--namespace", k.NAMESPACE,
           "--show-only", "templates/zz-notes-probe.yaml"] + [a for s in sets for a in ("--set", s)]
    res = k.run(cmd)
    assert res.returncode == 0, res.stderr
    return yaml.safe_load(res.stdout)["notes"]


def test_release_notes_warn_about_random_init_weights_of_the_committed_checkpoints(tmp_path: Path) -> None:
    """The chart cannot see the archive, so the warning is a value; it must match models/<m>/model.pt."""
    import torch

    from handlers.provenance import Provenance

    values = yaml.safe_load((k.CHART / "values.yaml").read_text())["models"]
    notes = render_notes(tmp_path)
    for model, settings in values.items():
        meta = torch.load(k.ROOT / "models" / model / "model.pt", weights_only=True)["meta"]
        random_init = not Provenance.from_meta(model, meta).pretrained
        assert bool(settings["weightsWarning"]) == random_init, model
        assert (f"WARNING: {model} was fine-tuned from RANDOM weights" in notes) == random_init, notes
    assert "WARNING" not in render_notes(tmp_path / "off", ("models.resnet50.enabled=false",))


@pytest.mark.parametrize("mode", ["Standard", "Knative"])
def test_kserve_runtime_container(mode: str) -> None:
    """runtime=kserve: `python -m kserve_runtime` configured only by the KSERVE_* variables it reads, REST :8080 +
    gRPC :8081 (h2c; Knative allows one port), KServe v2 health probes, nothing of TorchServe."""
    sets = ["runtime=kserve", f"predictor.deploymentMode={mode}", "models.resnet50.backend=onnx"]
    if mode == "Knative":
        sets += ["models.mobilenet_v2.scaleMetric=concurrency", "models.resnet50.scaleMetric=rps"]
    docs = k.load_docs(k.helm_template(sets=sets))
    (runtime,) = k.find(docs, "ServingRuntime", "image-moderation-kserve")
    assert "grpc-v2" in runtime["spec"]["protocolVersions"]
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8080"
    for deployment in k.predictor_deployments(docs):
        model = deployment["metadata"]["name"].removeprefix("image-moderation-").removesuffix("-predictor")
        model = model.replace("-", "_")
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e["value"] for e in c["env"]}
        assert {n for n in env if n.startswith("KSERVE_")} <= set(KSERVE_DEFAULTS)
        assert env["KSERVE_HOST"] == "0.0.0.0" and env["KSERVE_MODEL_STORE"] == "/mnt/models/model-store"
        assert (env["KSERVE_HTTP_PORT"], env["KSERVE_GRPC_PORT"]) == ("8080", "8081")
        assert env["KSERVE_MODELS"] == model  # each InferenceService serves its own archive
        assert env["KSERVE_WORKDIR"].startswith("/tmp/")  # the emptyDir: the root FS is read-only
        assert any(m["mountPath"] == "/tmp" for m in c["volumeMounts"])
        assert env["MODERATION_MAX_IMAGE_BYTES"] == "20971520"
        if model == "resnet50":
            assert env["MODERATION_BACKEND_RESNET50"] == "onnx"
        # Nothing of TorchServe: no torchserve command or flags, no config.properties, no Java/TorchServe env.
        assert c["command"] == ["python", "-m", "kserve_runtime"] and not c.get("args")
        assert not {"TEMP", "LOG_LOCATION", "METRICS_LOCATION", "JAVA_TOOL_OPTIONS", "OMP_NUM_THREADS"} & set(env)
        assert "config.properties" not in json.dumps(c) and "torchserve" not in json.dumps(c)
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert ports == ({"http1": 8080} if mode == "Knative" else {"http1": 8080, "h2c": 8081})
        assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
        assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert c["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8080}
        assert c["startupProbe"]["periodSeconds"] * c["startupProbe"]["failureThreshold"] == 600
    # Metrics: /metrics on the REST port (declared, so selected by number), no rewrite to TorchServe's :8082.
    (mon,) = k.find(docs, "PodMonitor")
    (ep,) = mon["spec"]["podMetricsEndpoints"]
    assert (ep["portNumber"], ep["path"]) == (8080, "/metrics")
    assert not [r for r in ep["relabelings"] if r.get("targetLabel") == "__address__"]
    # NetworkPolicy: inference on 8080 (+ gRPC 8081) from the same peers; scrapes reach 8080, 8082 is closed.
    (policy,) = k.find(docs, "NetworkPolicy", "image-moderation-predictor")
    inference, metrics = policy["spec"]["ingress"]
    assert {p["port"] for p in inference["ports"]} == {8080, 8081, 8012}
    assert {p["port"] for p in metrics["ports"]} == {8080, 9091}
    # The bridge waits for its model's KServe v2 readiness (TorchServe's /ping does not exist here).
    (cm,) = [d for d in k.find(docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    assert cm["data"]["INFERENCE_READY_PATH"] == "/v2/models/mobilenet_v2/ready"


def test_torchserve_runtime_keeps_its_metrics_port_and_ready_path(default_docs: list[dict[str, Any]]) -> None:
    (policy,) = k.find(default_docs, "NetworkPolicy", "image-moderation-predictor")
    assert [p["port"] for p in policy["spec"]["ingress"][1]["ports"]] == [8082, 9091]
    assert not k.find(default_docs, "ServingRuntime", "image-moderation-kserve")
    docs = k.load_docs(k.helm_template(sets=["runtime=kserve", "bridge.inferenceReadyPath="]))
    (cm,) = [d for d in k.find(docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    assert cm["data"]["INFERENCE_READY_PATH"] == ""  # "": the bridge's own protocol default


def test_kserve_runtime_refuses_the_eager_backend() -> None:
    """The kserve image has no torch: an `eager` backend would fail at load, so the chart refuses it."""
    res = k.run([k.tool("helm"), "template", "x", str(k.CHART), "--set", "runtime=kserve",
                 "--set", "models.resnet50.backend=eager"])
    assert res.returncode != 0 and "runtime kserve serves the ONNX backends only" in res.stderr, res.stderr


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_release_notes_name_the_runtime(runtime: str, tmp_path: Path) -> None:
    notes = render_notes(tmp_path, (f"runtime={runtime}",))
    expected = {"torchserve": "runtime torchserve: TorchServe 0.12 image image-moderation/predictor:0.1.0",
                "kserve": "runtime kserve: python -m kserve_runtime, image image-moderation/kserve-predictor:0.1.0"}
    assert expected[runtime] in notes, notes


def test_reference_settings_reach_the_bridge_and_the_kserve_predictors() -> None:
    """The chart's `references` values are the FETCH_* variables of handlers/fetch.py, rendered once for the bridge
    and the kserve predictors (which fetch); defaults refuse S3 and private networks; TorchServe gets none."""
    from handlers.fetch import FETCH_DEFAULTS, FetchSettings

    sets = ["runtime=kserve", "references.s3Buckets={uploads,archive}", "references.privateNetworks={10.96.0.0/12}",
            "references.s3EndpointUrl=http://minio.storage.svc:9000",
            "references.networkPolicyPeers[0].ipBlock.cidr=10.96.0.0/12"]
    docs = k.load_docs(k.helm_template(sets=sets))
    (cm,) = [d for d in k.find(docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    fetch = {n: v for n, v in cm["data"].items() if n.startswith("FETCH_")}
    assert set(fetch) == set(FETCH_DEFAULTS)
    settings = FetchSettings.from_env(fetch)
    assert settings.s3_buckets == {"uploads", "archive"} and settings.s3_endpoint_url == "http://minio.storage.svc:9000"
    assert [str(n) for n in settings.private_networks] == ["10.96.0.0/12"]
    for deployment in k.predictor_deployments(docs):
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {e["name"]: e["value"] for e in c["env"] if e["name"].startswith("FETCH_")} == fetch
    (bridge_np,) = [d for d in k.find(docs, "NetworkPolicy") if d["metadata"]["name"] == "image-moderation-bridge"]
    assert {"ipBlock": {"cidr": "10.96.0.0/12"}} in [p for rule in bridge_np["spec"]["egress"] for p in rule["to"]]
    default_docs = k.load_docs(k.helm_template())
    (cm,) = [d for d in k.find(default_docs, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    defaults = FetchSettings.from_env({n: v for n, v in cm["data"].items() if n.startswith("FETCH_")})
    assert defaults.s3_buckets == frozenset() and defaults.private_networks == () and defaults.url_hosts == ("*",)
    for deployment in k.predictor_deployments(default_docs):  # TorchServe never fetches
        (c,) = deployment["spec"]["template"]["spec"]["containers"]
        assert not [e for e in c.get("env", []) if e["name"].startswith("FETCH_")]
