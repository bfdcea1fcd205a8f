#!/usr/bin/env bash
# What every real cluster of this project has besides the control plane: the CRDs the chart uses
# (KServe, prometheus-operator, KEDA; the same module versions the offline validation pins), cluster
# DNS (CoreDNS) and KServe's controller with its webhooks. Idempotent (server-side apply).
#   cluster/addons.sh [base]   the above (cluster-up runs it)
#   cluster/addons.sh scale    autoscaling: metrics-server (resource metrics) and KEDA (external metrics),
#                              built, imported and applied on a running cluster; not part of cluster-up
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

kube_state_metrics() {
  sed -e "s#@IMAGE@#$KUBE_STATE_METRICS_IMAGE#g" "$HERE/manifests/kube-state-metrics.yaml" | apply -f -
  rollout kube-system deployment/kube-state-metrics 120s
}

coredns() {
  sed -e "s#@DOMAIN@#$CLUSTER_DOMAIN#g" -e "s#@DNS@#$DNS_SERVICE_IP#g" -e "s#@IMAGE@#$COREDNS_IMAGE#g" \
    "$HERE/manifests/coredns.yaml" | apply -f -
  rollout kube-system deployment/coredns 120s
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
  rollout kserve deployment/kserve-controller-manager 180s
}

until_true() {  # until_true TIMEOUT_S CMD... : poll CMD every 2 s until it succeeds
  local timeout="$1"; shift
  for _ in $(seq 1 $((timeout / 2))); do
    "$@" >/dev/null 2>&1 && return 0
    sleep 2
  done
  echo "not true after ${timeout}s: $*" >&2
  "$@"
}

apiservice_available() {  # apiservice_available NAME : the aggregator reaches the API server behind it
  [[ "$("$KUBECTL" get apiservice "$1" -o jsonpath='{.status.conditions[?(@.type=="Available")].status}')" == True ]]
}

node_metrics() {  # the node appears in metrics.k8s.io (after metrics-server's first scrapes)
  [[ "$("$KUBECTL" get --raw /apis/metrics.k8s.io/v1beta1/nodes)" == *"\"name\":\"$NODE_NAME\""* ]]
}

metrics_server() {
  # pki.sh keeps every existing file, so on a running cluster it only issues what is missing.
  "$HERE/pki.sh"
  [[ -f "$PKI/metrics-server.crt" ]] || { echo "cluster/pki.sh issued no metrics-server certificate" >&2; return 1; }
  # The kubelet's serving certificate is signed by the cluster CA: metrics-server verifies it with that CA.
  "$KUBECTL" -n kube-system create configmap kubelet-serving-ca --from-file=ca.crt="$PKI/ca.crt" \
    --dry-run=client -o yaml | apply -f -
  "$KUBECTL" -n kube-system create secret tls metrics-server-tls \
    --cert="$PKI/metrics-server.crt" --key="$PKI/metrics-server.key" --dry-run=client -o yaml | apply -f -
  sed -e "s#@IMAGE@#$METRICS_SERVER_IMAGE#g" -e "s#@CA_BUNDLE@#$(base64 -w0 "$PKI/ca.crt")#g" \
    "$HERE/manifests/metrics-server.yaml" | apply -f -
  rollout kube-system deployment/metrics-server 180s
  until_true 120 apiservice_available v1beta1.metrics.k8s.io
  until_true 120 node_metrics
}

keda_secret_filled() {
  [[ -n "$("$KUBECTL" -n keda get secret kedaorg-certs -o jsonpath='{.data.tls\.crt}')" ]]
}

keda_autoscaler() {
  "$KUBECTL" get crd scaledobjects.keda.sh >/dev/null   # applied by the base add-ons (crds)
  sed -e "s#@OPERATOR_IMAGE@#$KEDA_OPERATOR_IMAGE#g" -e "s#@ADAPTER_IMAGE@#$KEDA_ADAPTER_IMAGE#g" \
    -e "s#@DOMAIN@#$CLUSTER_DOMAIN#g" "$HERE/manifests/keda.yaml" | apply -f -
  # The operator creates its CA and certificate in Secret kedaorg-certs, exits once to load them, and
  # writes the CA into the APIService.
  until_true 180 keda_secret_filled
  # An adapter pod started on the still empty Secret crash-loops on the missing files with a growing
  # back-off; a new pod mounts the filled Secret at once.
  if ! "$KUBECTL" -n keda rollout status deployment/keda-metrics-apiserver --timeout=5s >/dev/null 2>&1; then
    "$KUBECTL" -n keda rollout restart deployment/keda-metrics-apiserver
  fi
  rollout keda deployment/keda-operator 300s
  rollout keda deployment/keda-metrics-apiserver 300s
  until_true 300 apiservice_available v1beta1.external.metrics.k8s.io
  "$KUBECTL" get --raw /apis/external.metrics.k8s.io/v1beta1 >/dev/null
}

case "${1:-base}" in
  base)
    phase "  CRDs: KServe $KSERVE_VERSION, prometheus-operator, KEDA" crds
    phase "  CoreDNS $COREDNS_VERSION ($DNS_SERVICE_IP)" coredns
    phase "  KServe controller + webhooks $KSERVE_VERSION" kserve
    phase "  kube-state-metrics $KUBE_STATE_METRICS_VERSION (kube_* series)" kube_state_metrics
    ;;
  scale)
    phase "  binaries: metrics-server $METRICS_SERVER_VERSION, KEDA $KEDA_VERSION (cache)" "$HERE/build.sh" scale
    phase "  images: metrics-server, keda-operator, keda-metrics-apiserver" "$HERE/addon-images.sh" scale
    phase "  metrics-server $METRICS_SERVER_VERSION (metrics.k8s.io, node metrics served)" metrics_server
    phase "  KEDA $KEDA_VERSION operator + metrics API server (external.metrics.k8s.io)" keda_autoscaler
    ;;
  *) echo "usage: $0 [base|scale]" >&2; exit 2 ;;
esac
