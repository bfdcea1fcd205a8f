"""k8s/: the kustomize base equals the chart's defaults, and every overlay builds and validates strictly."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests import k8s_support as k
from tests.test_k8s_chart import kubeconform

sys.path.insert(0, str(k.ROOT / "scripts"))
from k8s_render import as_kustomize  # noqa: E402

OVERLAYS = ["base", "overlays/production", "overlays/knative", "overlays/local-cluster", "overlays/kserve"]


def kustomize(path: str) -> list[dict[str, Any]]:
    res = k.run([k.tool("kustomize"), "build", str(k.K8S_DIR / path)])
    assert res.returncode == 0, res.stderr
    return k.load_docs(res.stdout)


def key(doc: dict[str, Any]) -> tuple[str, str]:
    return doc["kind"], doc["metadata"]["name"]


@pytest.mark.parametrize(("path", "sets"), [("base", []), ("overlays/kserve", ["runtime=kserve"])],
                         ids=["base", "kserve"])
def test_manifests_match_helm_template(path: str, sets: list[str]) -> None:
    """A chart change without `make k8s-render` fails here (and, for the kserve overlay, without updating its
    hand-written patches)."""
    chart = {key(d): as_kustomize(d) for d in k.load_docs(k.helm_template(sets=sets))}
    built = {key(d): d for d in kustomize(path)}
    assert sorted(built) == sorted(chart)
    for name, doc in chart.items():
        assert built[name] == doc, f"k8s/{path} differs from the chart for {name}: run `make k8s-render`"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly(overlay: str, tmp_path: Path) -> None:
    docs = kustomize(overlay)
    manifest = tmp_path / "all.yaml"
    manifest.write_text(yaml.safe_dump_all(docs + k.predictor_deployments(docs)))
    resources = kubeconform(k.schema_dir(), manifest)
    assert len(resources) == len(docs) + len(k.find(docs, "InferenceService"))
    for name, spec in k.pod_specs(docs).items():
        assert spec["securityContext"]["runAsNonRoot"] is True, name


def test_overlays_change_what_they_say() -> None:
    prod = kustomize("overlays/production")
    for isvc in k.find(prod, "InferenceService"):
        assert isvc["spec"]["predictor"]["minReplicas"] == 2
        assert isvc["spec"]["predictor"]["model"]["storageUri"].startswith("s3://")
    (cm,) = [d for d in k.find(prod, "ConfigMap") if d["metadata"]["name"] == "image-moderation-bridge"]
    assert cm["data"]["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL" and not k.find(prod, "Secret")
    knative = kustomize("overlays/knative")
    for isvc in k.find(knative, "InferenceService"):
        assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"
