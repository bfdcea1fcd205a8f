#!/usr/bin/env bash
# What every real cluster of this project has besides the control plane: the CRDs the chart uses
# (KServe, prometheus-operator, KEDA; the same module versions the offline validation pins), cluster
# DNS (CoreDNS) and KServe's controller with its webhooks. Idempotent (server-side apply).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
KUBECTL="$CLUSTER_BIN/kubectl"
HELM="$ROOT/.cache/tools/bin/helm"
PY="${PY:-$ROOT/.venv/bin/python}"
PKI="$CLUSTER_DIR/pki"
apply() { "$KUBECTL" apply --server-side --force-conflicts --field-manager=image-moderation-cluster "$@"; }

crds() {
  local sources kserve promop keda
  sources="$("$ROOT/scripts/k8s-tools.sh" sources)"
  kserve="$(sed -n 's/^kserve=//p' <<<"$sources")"
  promop="$(sed -n 's/^prometheus-operator=//p' <<<"$sources")"
  keda="$(sed -n 's/^keda=//p' <<<"$sources")"
  "$HELM" template kserve-crd "$kserve/charts/kserve-crd" | apply -f -
  for f in servicemonitors podmonitors prometheusrules; do
    apply -f "$promop/example/prometheus-operator-crd/monitoring.coreos.com_$f.yaml"
  done
  for f in scaledobjects scaledjobs triggerauthentications clustertriggerauthentications; do
    apply -f "$keda/config/crd/bases/keda.sh_$f.yaml"
  done
  # A CRD just created may have no conditions yet (kubectl wait then errors instead of waiting): retry.
  for _ in $(seq 1 30); do
    "$KUBECTL" wait --for=condition=Established --timeout=60s crd --all 2>/dev/null && return 0
    sleep 1
  done
  "$KUBECTL" wait --for=condition=Established --timeout=10s crd --all
}

coredns() {
  sed -e "s#@DOMAIN@#$CLUSTER_DOMAIN#g" -e "s#@DNS@#$DNS_SERVICE_IP#g" -e "s#@IMAGE@#$COREDNS_IMAGE#g" \
    "$HERE/manifests/coredns.yaml" | apply -f -
  "$KUBECTL" -n kube-system rollout status deployment/coredns --timeout=120s
}

kserve() {
  local sources src
  sources="$("$ROOT/scripts/k8s-tools.sh" sources)"
  src="$(sed -n 's/^kserve=//p' <<<"$sources")"
  "$KUBECTL" create namespace kserve --dry-run=client -o yaml | apply -f -
  "$HELM" template kserve "$src/charts/kserve-resources" --namespace kserve \
    -f "$HERE/config/kserve-values.yaml" \
    --set "kserve.controller.image=${KSERVE_IMAGE%:*}" --set "kserve.controller.tag=${KSERVE_IMAGE##*:}" \
    | "$PY" "$HERE/kserve_manifests.py" --pki "$PKI" --namespace kserve > "$CLUSTER_DIR/kserve.yaml"
  apply -f "$CLUSTER_DIR/kserve.yaml"
  "$KUBECTL" -n kserve rollout status deployment/kserve-controller-manager --timeout=180s
}

phase "  CRDs: KServe $KSERVE_VERSION, prometheus-operator, KEDA" crds
phase "  CoreDNS $COREDNS_VERSION ($DNS_SERVICE_IP)" coredns
phase "  KServe controller + webhooks $KSERVE_VERSION" kserve
