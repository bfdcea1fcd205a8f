"""Turn KServe's own install chart into manifests this cluster can apply without cert-manager.

KServe's `charts/kserve-resources` (from the same `github.com/kserve/kserve` module the controller is
built from) expects cert-manager to issue the webhook certificate and inject its CA. There is no
cert-manager here, so this script drops the cert-manager objects, adds the webhook Secret from the
certificate `cluster/pki.sh` made, and writes our CA into every webhook's `caBundle`. It also drops the
controller's kube-rbac-proxy sidecar (an image from quay.io, unreachable here; it only guards the
controller's metrics port). Everything else (RBAC, the Deployment, the `inferenceservice-config`
ConfigMap, the webhook configurations) is KServe's, unchanged.

    helm template ... | python cluster/kserve_manifests.py --pki .run/cluster/pki > kserve.yaml
"""

from __future__ import annotations

import argparse
import base64
import sys
from pathlib import Path

import yaml

WEBHOOK_SECRET = "kserve-webhook-server-cert"
DROPPED_SIDECARS = {"kube-rbac-proxy"}
WEBHOOK_KINDS = {"MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"}


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def adapt(docs: list[dict], pki: Path, namespace: str) -> list[dict]:
    """KServe's objects minus cert-manager's, plus the webhook Secret; CA bundles filled in."""
    ca = b64(pki / "ca.crt")
    out: list[dict] = []
    for doc in docs:
        if not doc:
            continue
        if doc.get("apiVersion", "").startswith("cert-manager.io/"):
            continue
        if doc.get("kind") in WEBHOOK_KINDS:
            doc.get("metadata", {}).get("annotations", {}).pop("cert-manager.io/inject-ca-from", None)
            for hook in doc.get("webhooks", []):
                hook.setdefault("clientConfig", {})["caBundle"] = ca
        if doc.get("kind") == "Deployment":
            pod = doc["spec"]["template"]["spec"]
            pod["containers"] = [c for c in pod["containers"] if c["name"] not in DROPPED_SIDECARS]
        if doc.get("kind") == "CustomResourceDefinition":
            conversion = doc.get("spec", {}).get("conversion", {})
            client = conversion.get("webhook", {}).get("clientConfig")
            if client is not None:
                client["caBundle"] = ca
        out.append(doc)
    out.append({
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": WEBHOOK_SECRET, "namespace": namespace},
        "data": {"tls.crt": b64(pki / "kserve-webhook.crt"), "tls.key": b64(pki / "kserve-webhook.key")},
    })
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pki", type=Path, required=True, help="folder with ca.crt and kserve-webhook.{crt,key}")
    parser.add_argument("--namespace", default="kserve")
    args = parser.parse_args(argv)
    docs = list(yaml.safe_load_all(sys.stdin))
    yaml.safe_dump_all(adapt(docs, args.pki, args.namespace), sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
