#!/usr/bin/env bash
# `make cluster-status`: which cluster processes run, the node, and every pod.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
RUN_DIR="$CLUSTER_DIR"
[[ -d "$CLUSTER_DIR" ]] || { echo "cluster: down"; exit 0; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
for name in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy kube-router; do
  if is_running "$name"; then echo "$name: running (pid $(cat "$(pidfile "$name")"))"; else echo "$name: stopped"; fi
done
echo "KUBECONFIG=$KUBECONFIG"
"$CLUSTER_BIN/kubectl" get nodes -o wide 2>/dev/null && "$CLUSTER_BIN/kubectl" get pods -A -o wide 2>/dev/null || true
