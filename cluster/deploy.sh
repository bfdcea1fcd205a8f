#!/usr/bin/env bash
# `make cluster-deploy`: install the chart on the local cluster exactly as a user would (`helm upgrade
# --install --wait` with helm/image-moderation/ci/local-cluster-values.yaml), after the two things a
# real cluster would already have: the images in the node's containerd (`make images`, then imported)
# and the archives of `make models` in a volume (a hostPath PersistentVolume + PVC, for pvc://).
#   cluster/deploy.sh            install or upgrade (after the local broker, cluster/kafka.sh), wait until
#                                both InferenceServices and the bridge are Ready
#   cluster/deploy.sh uninstall  helm uninstall + the namespace
#   cluster/deploy.sh kustomize  the same objects with `kubectl apply -k k8s/overlays/local-cluster`
#                                (namespace im-kustomize), then wait until Ready
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
KUBECTL="$CLUSTER_BIN/kubectl"
HELM="$ROOT/.cache/tools/bin/helm"
NAMESPACE="${NAMESPACE:-image-moderation}"
RELEASE="${RELEASE:-image-moderation}"
VALUES="${VALUES:-$ROOT/helm/image-moderation/ci/local-cluster-values.yaml}"
MODELS_DIR="$ROOT/model-archive/build"

"$KUBECTL" get --raw /readyz >/dev/null 2>&1 || { echo "no cluster: run 'make cluster-up' first" >&2; exit 1; }

load_images() {  # load_images [HELM_ARGS...]: the bridge and the predictor image of the runtime deployed
  local predictor=predictor
  [[ " $* " != *"runtime=kserve"* ]] || predictor=kserve-predictor
  CONTAINERD_ADDRESS="$CONTAINERD_SOCK" "$ROOT/scripts/images.sh" load bridge "$predictor"  # kafka.sh loads its own
}

namespace() {
  # The restricted Pod Security profile is enforced, not only audited: a pod that breaks it is refused.
  "$KUBECTL" create namespace "$NAMESPACE" --dry-run=client -o yaml | "$KUBECTL" apply -f -
  "$KUBECTL" label --overwrite namespace "$NAMESPACE" \
    pod-security.kubernetes.io/enforce=restricted pod-security.kubernetes.io/enforce-version=latest \
    pod-security.kubernetes.io/warn=restricted pod-security.kubernetes.io/audit=restricted
}

model_volume() {
  [[ -f "$MODELS_DIR/config/config.properties" ]] || { echo "no archives: run 'make models'" >&2; return 1; }
  rebind_released_pv "image-moderation-models-$NAMESPACE"  # its namespace may have been removed by hand
  sed -e "s#@NAMESPACE@#$NAMESPACE#g" -e "s#@PATH@#$MODELS_DIR#g" -e "s#@NODE@#$NODE_NAME#g" \
    "$HERE/manifests/models-volume.yaml" | "$KUBECTL" apply -f -
  "$KUBECTL" -n "$NAMESPACE" wait --for=jsonpath='{.status.phase}'=Bound pvc/image-moderation-models --timeout=60s
}

install() {
  "$HELM" upgrade --install "$RELEASE" "$ROOT/helm/image-moderation" --namespace "$NAMESPACE" \
    -f "$VALUES" "$@" --wait --timeout 15m || { why_not_ready "$NAMESPACE"; return 1; }
  "$KUBECTL" -n "$NAMESPACE" wait --for=condition=Ready inferenceservice --all --timeout=10m \
    || { why_not_ready "$NAMESPACE"; return 1; }
}

case "${1:-install}" in
  install)
    shift || true
    phase "images imported into the node's containerd" load_images "$@"
    phase "namespace $NAMESPACE (Pod Security: restricted, enforced)" namespace
    phase "model volume: hostPath PV of model-archive/build + PVC" model_volume
    "$HERE/kafka.sh" install  # the broker the chart's bridge consumes from
    phase "helm upgrade --install --wait: both InferenceServices Ready" install "$@"
    "$KUBECTL" -n "$NAMESPACE" get inferenceservices,deployments,pods -o wide >&3
    ;;
  kustomize)
    NAMESPACE=im-kustomize
    phase "images imported into the node's containerd" load_images
    phase "namespace $NAMESPACE (Pod Security: restricted, enforced)" namespace
    phase "model volume: hostPath PV of model-archive/build + PVC" model_volume
    phase "kubectl apply -k k8s/overlays/local-cluster: InferenceServices Ready" bash -c \
      "'$KUBECTL' apply -k '$ROOT/k8s/overlays/local-cluster' && '$KUBECTL' -n $NAMESPACE wait --for=condition=Ready inferenceservice --all --timeout=10m"
    ;;
  uninstall)
    phase "helm uninstall $RELEASE" "$HELM" uninstall "$RELEASE" --namespace "$NAMESPACE" --wait
    phase "namespace $NAMESPACE and the model volume deleted" bash -c \
      "'$KUBECTL' delete namespace '$NAMESPACE' --wait --timeout=120s --ignore-not-found && '$KUBECTL' delete pv image-moderation-models-$NAMESPACE --ignore-not-found"
    ;;
  *) echo "usage: $0 [install [helm args...]|uninstall]" >&2; exit 2 ;;
esac
