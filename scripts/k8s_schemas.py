"""Turn real API definitions into strict JSON schemas that kubeconform reads from disk (no network).

Sources (fetched by scripts/k8s-tools.sh through the Go module proxy, versions pinned there):
- Kubernetes: the OpenAPI v3 documents the apiserver publishes, checked in as api/openapi-spec/v3 of the
  k8s.io/kubernetes module. One schema per group/version/kind: the kind's definition with every definition it
  reaches copied under `definitions` (refs rewritten locally), so each file stands alone.
- CRDs (KServe, prometheus-operator, KEDA): each served version's `openAPIV3Schema` from the projects' own
  CustomResourceDefinition YAML.

Strict like the apiserver's field validation: objects with declared properties reject unknown fields unless
they preserve unknown fields; `x-kubernetes-int-or-string` accepts an integer or a string; `nullable` allows
null. Layout (kubeconform -schema-location templates, see mk/k8s.mk):
  <out>/kubernetes/{kind}{-group}-{version}.json    e.g. deployment-apps-v1.json, service-v1.json
  <out>/crds/{group}/{kind}_{version}.json         e.g. serving.kserve.io/inferenceservice_v1beta1.json
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REF_PREFIX = "#/components/schemas/"
DROP_KEYS = {"description", "example", "externalDocs"}


def strictify(node: Any) -> Any:
    """Copy of an OpenAPI v3 schema node as draft-compatible JSON schema with closed objects."""
    if isinstance(node, list):
        return [strictify(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP_KEYS or key.startswith("x-") or key == "nullable":
            continue
        if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
            out[key] = "#/definitions/" + value[len(REF_PREFIX) :]
        elif key in {"properties", "patternProperties", "definitions"}:
            out[key] = {name: strictify(sub) for name, sub in value.items()}
        else:
            out[key] = strictify(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if node.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    preserve = node.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def refs_in(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str) and value.startswith(REF_PREFIX):
                yield value[len(REF_PREFIX) :]
            else:
                yield from refs_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs_in(value)


def closure(name: str, schemas: dict[str, Any]) -> list[str]:
    """Every definition reachable from `name` (itself excluded unless recursive)."""
    seen: set[str] = set()
    todo = list(refs_in(schemas[name]))
    while todo:
        ref = todo.pop()
        if ref in seen:
            continue
        seen.add(ref)
        todo.extend(refs_in(schemas[ref]))
    return sorted(seen)


def pin_gvk(schema: dict[str, Any], group: str, version: str, kind: str) -> dict[str, Any]:
    """apiVersion and kind must be exactly this resource's (as the apiserver routes them)."""
    api_version = f"{group}/{version}" if group else version
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "enum": [api_version]}
    props["kind"] = {"type": "string", "enum": [kind]}
    return schema


def kubernetes_schemas(spec_dir: Path, out: Path) -> int:
    schemas: dict[str, Any] = {}
    for doc in sorted(spec_dir.glob("*_openapi.json")):
        schemas.update(json.loads(doc.read_text()).get("components", {}).get("schemas", {}))
    written = 0
    out.mkdir(parents=True, exist_ok=True)
    for name, definition in sorted(schemas.items()):
        for gvk in definition.get("x-kubernetes-group-version-kind", []):
            group, version, kind = gvk.get("group", ""), gvk["version"], gvk["kind"]
            if kind in {"WatchEvent", "DeleteOptions", "Status", "APIGroup", "APIVersions"} or kind[-4:] == "List":
                continue
            root = pin_gvk(strictify(definition), group, version, kind)
            root["$schema"] = "http://json-schema.org/draft-07/schema#"
            root["definitions"] = {ref: strictify(schemas[ref]) for ref in closure(name, schemas)}
            suffix = f"-{group.split('.')[0]}-{version}" if group else f"-{version}"
            (out / f"{kind.lower()}{suffix}.json").write_text(json.dumps(root, separators=(",", ":")))
            written += 1
    return written


def crd_schemas(crd_files: list[Path], out: Path) -> list[str]:
    written: list[str] = []
    for path in crd_files:
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                if not version.get("served", True):
                    continue
                schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
                root = pin_gvk(strictify(schema), group, version["name"], kind)
                root["$schema"] = "http://json-schema.org/draft-07/schema#"
                target = out / group / f"{kind.lower()}_{version['name']}.json"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(json.dumps(root, separators=(",", ":")))
                written.append(f"{group}/{version['name']}/{kind}")
    return written


# CRD files of each pinned project, relative to its module root (the projects' own generated CRDs).
CRD_SOURCES: dict[str, list[str]] = {
    "kserve": [
        "config/crd/full/serving.kserve.io_inferenceservices.yaml",
        "config/crd/full/serving.kserve.io_servingruntimes.yaml",
        "config/crd/full/serving.kserve.io_clusterservingruntimes.yaml",
    ],
    "prometheus-operator": [
        "example/prometheus-operator-crd/monitoring.coreos.com_servicemonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_podmonitors.yaml",
        "example/prometheus-operator-crd/monitoring.coreos.com_prometheusrules.yaml",
    ],
    "keda": [
        "config/crd/bases/keda.sh_scaledobjects.yaml",
        "config/crd/bases/keda.sh_triggerauthentications.yaml",
    ],
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=Path, required=True, help="KEY=DIR lines (scripts/k8s-tools.sh sources)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    dirs = dict(line.split("=", 1) for line in args.sources.read_text().split() if "=" in line)
    count = kubernetes_schemas(Path(dirs["kubernetes"]) / "api/openapi-spec/v3", args.out / "kubernetes")
    crd_files = [Path(dirs[key]) / rel for key, rels in CRD_SOURCES.items() for rel in rels]
    missing = [str(p) for p in crd_files if not p.is_file()]
    if missing:
        print("missing CRD sources:\n  " + "\n  ".join(missing), file=sys.stderr)
        return 1
    crds = crd_schemas(crd_files, args.out / "crds")
    print(f"{count} Kubernetes schemas, {len(crds)} CRD schemas -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
