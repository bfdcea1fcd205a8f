#!/usr/bin/env bash
# The local cluster's one set of names, pins, paths and address ranges. Sourced by every cluster/*.sh.
# State (certificates, kubeconfig, etcd data, logs, pidfiles) lives in .run/cluster/ of the clone; built
# binaries and images in a cache outside it, so `make cluster-down` + `make cluster-up` rebuilds nothing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Pins (bump together with cluster/README.md).
KUBERNETES_VERSION="${KUBERNETES_VERSION:-v1.34.4}"   # k8s.io/kubernetes module; staging modules at v0.34.4
KSERVE_VERSION="${KSERVE_VERSION:-v0.20.0}"           # the CRDs the chart is validated against (scripts/k8s-tools.sh)
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
# NetworkPolicy enforcement: kube-router's firewall (iptables + ipset). sigs.k8s.io/kube-network-policies
# was tried first: it needs nftables' `queue` expression, which this kernel lacks (nft: No such file).
KUBE_ROUTER_VERSION="${KUBE_ROUTER_VERSION:-v2.1.0}"
# Autoscaling add-ons (`cluster/addons.sh scale`, not part of cluster-up).
METRICS_SERVER_VERSION="${METRICS_SERVER_VERSION:-v0.8.0}"   # sigs.k8s.io/metrics-server module
# k8s.io/kube-state-metrics/v2: the proxy lists no version (403), but this exact one is served (v2.16.0 fails
# the checksum database, v2.17.0 and v2.14.0 are refused). It feeds the dashboard's kube_* panels.
KUBE_STATE_METRICS_VERSION="${KUBE_STATE_METRICS_VERSION:-v2.15.0}"
# KEDA's binaries must match the KEDA CRDs addons.sh applies, so its one pin is scripts/k8s-tools.sh's.
KEDA_VERSION="$(sed -n 's/^KEDA_VERSION="\(v[^"]*\)".*/\1/p' "$ROOT/scripts/k8s-tools.sh")"
[[ -n "$KEDA_VERSION" ]] || { echo "env.sh: no KEDA_VERSION in scripts/k8s-tools.sh" >&2; exit 1; }

CLUSTER_CACHE="${CLUSTER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/image-moderation/cluster}"
CLUSTER_BIN="$CLUSTER_CACHE/bin"
CLUSTER_DIR="${CLUSTER_DIR:-$ROOT/.run/cluster}"       # all state; `make cluster-down` removes it
# The node's disk: the kubelet evicts (and refuses new pods) below CLUSTER_EVICTION_GB free; cluster-up
# refuses to start with less than that plus CLUSTER_HEADROOM_GB (images imported, pods' logs and volumes).
CLUSTER_EVICTION_GB="${CLUSTER_EVICTION_GB:-2}"
CLUSTER_HEADROOM_GB="${CLUSTER_HEADROOM_GB:-4}"
export KUBECONFIG="${KUBECONFIG_LOCAL:-$CLUSTER_DIR/kubeconfig}"

# Addresses. The node gets a /32 on a bridge the project creates (a node IP cannot be loopback: logs,
# exec and port-forward need an InternalIP); pods live on the CNI bridge; the Service range is routed to
# a local bridge so nothing for a cluster address ever follows the default route out of the machine.
NODE_BRIDGE="${NODE_BRIDGE:-imnode0}"
NODE_IP="${NODE_IP:-10.231.0.1}"
CNI_BRIDGE="${CNI_BRIDGE:-imcni0}"
POD_CIDR="${POD_CIDR:-10.232.0.0/24}"
POD_GATEWAY="${POD_GATEWAY:-10.232.0.1}"
SERVICE_CIDR="${SERVICE_CIDR:-10.233.0.0/24}"
APISERVER_SERVICE_IP="${APISERVER_SERVICE_IP:-10.233.0.1}"
DNS_SERVICE_IP="${DNS_SERVICE_IP:-10.233.0.10}"
CLUSTER_DOMAIN="${CLUSTER_DOMAIN:-cluster.local}"
NODE_NAME="${NODE_NAME:-im-node}"
APISERVER_PORT="${APISERVER_PORT:-6443}"
ETCD_CLIENT_PORT="${ETCD_CLIENT_PORT:-2379}"
ETCD_PEER_PORT="${ETCD_PEER_PORT:-2380}"
KSERVE_WEBHOOK_PORT="${KSERVE_WEBHOOK_PORT:-9443}"
CONTAINERD_SOCK="/run/containerd/containerd.sock"     # cAdvisor only finds containerd at this path
PAUSE_IMAGE="registry.k8s.io/pause:local"             # built from the kubernetes module's pause.c
COREDNS_IMAGE="localhost/image-moderation/coredns:$COREDNS_VERSION"
KSERVE_IMAGE="localhost/image-moderation/kserve-controller:$KSERVE_VERSION"
METRICS_SERVER_IMAGE="localhost/image-moderation/metrics-server:$METRICS_SERVER_VERSION"
KUBE_STATE_METRICS_IMAGE="localhost/image-moderation/kube-state-metrics:$KUBE_STATE_METRICS_VERSION"
KEDA_OPERATOR_IMAGE="localhost/image-moderation/keda-operator:$KEDA_VERSION"
KEDA_ADAPTER_IMAGE="localhost/image-moderation/keda-metrics-apiserver:$KEDA_VERSION"


rebind_released_pv() {  # rebind_released_pv NAME : a Retain volume whose claim was deleted stays Released;
  # forget the old claim's UID so a new claim of the same name binds again
  if [[ "$("$CLUSTER_BIN/kubectl" get pv "$1" -o jsonpath='{.status.phase}' 2>/dev/null)" == Released ]]; then
    "$CLUSTER_BIN/kubectl" patch pv "$1" --type json -p '[{"op": "remove", "path": "/spec/claimRef/uid"}]'
  fi
}

why_not_ready() {  # why_not_ready NAMESPACE : after a rollout or wait timed out, say why in a few lines
  # (the phase prints the log's last lines): node pressure and taints, each unready pod's state, the
  # namespace's last warnings. A node under DiskPressure refuses every pod that is not critical.
  local k="$CLUSTER_BIN/kubectl"
  {
    echo "-- why not ready (namespace $1):"
    "$k" get node "$NODE_NAME" -o jsonpath='node: {range .status.conditions[?(@.status=="True")]}{.type} {end}taints: {.spec.taints[*].key}{"\n"}' 2>&1
    "$k" -n "$1" get pods -o jsonpath='{range .items[*]}pod {.metadata.name}: {.status.phase} {.status.reason} {.status.message} {.status.conditions[?(@.status=="False")].message} {.status.containerStatuses[*].state.waiting.reason} {.status.containerStatuses[*].lastState.terminated.reason}{"\n"}{end}' 2>&1
    "$k" -n "$1" get events --field-selector type=Warning --sort-by=.lastTimestamp \
      -o custom-columns=REASON:.reason,OBJECT:.involvedObject.name,MESSAGE:.message --no-headers 2>&1 | tail -n 6
  } >&2
}

rollout() {  # rollout NAMESPACE KIND/NAME TIMEOUT : wait for it, or say why it is not ready
  "$CLUSTER_BIN/kubectl" -n "$1" rollout status "$2" --timeout="$3" || { why_not_ready "$1"; return 1; }
}

mkdir -p "$CLUSTER_DIR/logs"
PHASE_LOG="${PHASE_LOG:-$CLUSTER_DIR/logs/phases.log}"
# fd 3 is the terminal: phase lines of nested scripts reach it while their tools' output goes to the log.
{ true >&3; } 2>/dev/null || exec 3>&1
phase() {  # phase "what" CMD... : one line per phase with its duration; output in $PHASE_LOG
  local what="$1" t0 rc=0; shift
  t0=$(date +%s%N)
  echo "== $what" >>"$PHASE_LOG"
  # In a subshell with errexit, outside any `||` (which would switch errexit off inside the function):
  # the first failing command ends the phase and shows here, instead of being silently stepped over.
  local errexit=0; [[ $- == *e* ]] && errexit=1
  set +e
  ( set -e; "$@" ) >>"$PHASE_LOG" 2>&1
  rc=$?
  [[ $errexit -eq 1 ]] && set -e
  printf '%-60s %7.1f s%s\n' "$what" "$((($(date +%s%N) - t0) / 1000000))e-3" \
    "$([[ $rc -eq 0 ]] || echo "  FAILED ($rc), see $PHASE_LOG")" >&3
  [[ $rc -eq 0 ]] || tail -n 25 "$PHASE_LOG" >&3
  return $rc
}
