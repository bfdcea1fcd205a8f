#!/usr/bin/env bash
# The cluster's own images, each one static binary built by cluster/build.sh in an image `FROM scratch`
# (buildah, Debian), imported into the node's containerd. No registry is involved: the kubelet finds
# them in containerd (imagePullPolicy IfNotPresent). An image is rebuilt only when its binary changed.
#   cluster/addon-images.sh [base|scale]   base: what cluster-up needs; scale: metrics-server and KEDA
set -euo pipefail
# shellcheck source=cluster/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
STAMPS="$CLUSTER_CACHE/images"
mkdir -p "$STAMPS"

image() {  # image REF BINARY USER [PATH] : the binary at PATH (default /BINARY) as entrypoint, as USER
  local ref="$1" bin="$2" user="$3" path="${4:-/$2}" sum ctr archive
  sum="$(echo "$path" | cat - "$CLUSTER_BIN/$bin" | sha256sum | cut -c1-16)"
  if [[ "$(cat "$STAMPS/$bin.sum" 2>/dev/null)" == "$sum" ]] \
     && ctr -a "$CONTAINERD_SOCK" -n k8s.io images ls -q | grep -qx "$ref"; then
    return 0
  fi
  ctr="$(buildah from scratch)"
  buildah copy --chmod 0755 "$ctr" "$CLUSTER_BIN/$bin" "$path" >/dev/null
  buildah config --entrypoint "[\"$path\"]" --user "$user" \
    --label "org.opencontainers.image.source=cluster/build.sh" "$ctr"
  buildah commit -q "$ctr" "$ref" >/dev/null
  buildah rm "$ctr" >/dev/null
  archive="$STAMPS/$bin.oci.tar"
  rm -f "$archive"
  buildah push -q "$ref" "oci-archive:$archive:$ref"
  ctr -a "$CONTAINERD_SOCK" -n k8s.io images import "$archive" >/dev/null
  ctr -a "$CONTAINERD_SOCK" -n k8s.io images label "$ref" io.cri-containerd.pinned=pinned >/dev/null
  rm -f "$archive"
  echo "$sum" > "$STAMPS/$bin.sum"
  echo "image $ref imported"
}

case "${1:-base}" in
  base)
    image "$PAUSE_IMAGE" pause 65535:65535
    image "$COREDNS_IMAGE" coredns 65532:65532
    image "$KSERVE_IMAGE" kserve-manager 65532:65532 /manager   # KServe's manifests run /manager
    image "$KUBE_STATE_METRICS_IMAGE" kube-state-metrics 65534:65534
    ;;
  scale)
    image "$METRICS_SERVER_IMAGE" metrics-server 65532:65532
    # Paths as in KEDA's own images. No CA bundle: both trust the API server through their service
    # account's CA and each other through KEDA's own CA; public roots would serve only scalers reaching
    # outside the machine, which no pod here can. /tmp (some scalers write there) is an emptyDir in keda.yaml.
    image "$KEDA_OPERATOR_IMAGE" keda-operator 65532:65532 /keda
    image "$KEDA_ADAPTER_IMAGE" keda-adapter 65532:65532 /keda-adapter
    ;;
  *) echo "usage: $0 [base|scale]" >&2; exit 2 ;;
esac
