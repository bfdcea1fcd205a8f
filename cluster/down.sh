#!/usr/bin/env bash
# `make cluster-down`: stop everything cluster-up started (by recorded PID, never by name), remove the
# pods' containers first so no shim outlives the kubelet, undo the network changes, delete the state.
# Safe to run when nothing is up. The caches (binaries, images) stay.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
RUN_DIR="$CLUSTER_DIR"
[[ -d "$CLUSTER_DIR" ]] || { echo "cluster not up (no $CLUSTER_DIR)"; exit 0; }
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
KUBECTL="$CLUSTER_BIN/kubectl"

drain_pods() {
  # Let the kubelet stop the pods it runs, then remove whatever sandbox is left through the CRI.
  if is_running kube-apiserver && is_running kubelet; then
    "$KUBECTL" delete namespace --ignore-not-found --wait=false \
      $("$KUBECTL" get ns -o name | grep -vE '/(default|kube-system|kube-public|kube-node-lease)$' | cut -d/ -f2) 2>/dev/null || true
    "$KUBECTL" -n kube-system delete deployment --all --wait=false 2>/dev/null || true
    for _ in $(seq 1 60); do
      [[ -z "$("$KUBECTL" get pods -A --no-headers 2>/dev/null)" ]] && break
      sleep 1
    done
  fi
  stop_bg kubelet TERM 20
  if is_running containerd; then
    local ns=k8s.io c t
    for c in $(ctr -a "$CONTAINERD_SOCK" -n $ns containers ls -q 2>/dev/null); do
      for t in $(ctr -a "$CONTAINERD_SOCK" -n $ns tasks ls -q 2>/dev/null | grep -x "$c" || true); do
        ctr -a "$CONTAINERD_SOCK" -n $ns tasks kill -s KILL "$t" >/dev/null 2>&1 || true
      done
      sleep 0.2
      ctr -a "$CONTAINERD_SOCK" -n $ns tasks delete -f "$c" >/dev/null 2>&1 || true
      ctr -a "$CONTAINERD_SOCK" -n $ns containers delete "$c" >/dev/null 2>&1 || true
    done
  fi
}

stop_processes() {
  local name
  for name in kube-router kube-proxy kube-scheduler kube-controller-manager kube-apiserver containerd etcd; do
    stop_bg "$name" TERM 20
  done
}

unmount_all() {
  # The kubelet bind-mounts its root dir onto itself, and pods' volumes and sandboxes are mounts too.
  local m
  for m in $(awk '{print $5}' /proc/self/mountinfo | grep -E "^($CLUSTER_DIR|$CLUSTER_CACHE/containerd|/run/containerd)" | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
}

network_cleanup() {
  "$CLUSTER_BIN/kube-proxy" --cleanup >/dev/null 2>&1 || true
  "$CLUSTER_BIN/kube-router" --cleanup-config >/dev/null 2>&1 || true
  # kube-proxy's cleanup leaves the kubelet's chains and jumps behind.
  local table chain
  for table in filter nat mangle; do
    iptables -t "$table" -S 2>/dev/null | grep -E '^-A [A-Z-]+ .*-j (KUBE-[A-Z-]+)' | sed 's/^-A/-D/' | while read -r rule; do
      eval "iptables -t $table $rule" 2>/dev/null || true
    done || true  # no KUBE-* jump left: grep finds nothing
    for chain in $(iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\)$/\1/p'); do
      iptables -t "$table" -F "$chain" 2>/dev/null || true
    done
    for chain in $(iptables -t "$table" -S 2>/dev/null | sed -n 's/^-N \(KUBE-[A-Z0-9-]*\)$/\1/p'); do
      iptables -t "$table" -X "$chain" 2>/dev/null || true
    done
  done
  # kube-router's ipsets (pod, namespace and policy address sets).
  local set
  for set in $(ipset list -n 2>/dev/null | grep -E '^(KUBE-|kube-router-)' || true); do
    ipset destroy "$set" 2>/dev/null || true
  done
  iptables -D FORWARD -j IM-CLUSTER-GUARD 2>/dev/null || true
  iptables -F IM-CLUSTER-GUARD 2>/dev/null || true
  iptables -X IM-CLUSTER-GUARD 2>/dev/null || true
  ip route del "$SERVICE_CIDR" dev "$NODE_BRIDGE" 2>/dev/null || true
  local link
  for link in $(ip -o link show master "$CNI_BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
    ip link del "$link" 2>/dev/null || true
  done
  ip link del "$CNI_BRIDGE" 2>/dev/null || true
  ip link del "$NODE_BRIDGE" 2>/dev/null || true
  if [[ -f "$CLUSTER_DIR/ip_forward.orig" ]]; then sysctl -qw "net.ipv4.ip_forward=$(cat "$CLUSTER_DIR/ip_forward.orig")"; fi
}

remove_state() {
  rm -rf "$CLUSTER_DIR"
}

phase "pods and containers removed, kubelet stopped" drain_pods
phase "control plane, containerd, etcd stopped" stop_processes
phase "mounts released" unmount_all
phase "iptables, bridges, routes, ip_forward restored" network_cleanup
# The log is inside the state folder: print the last line before it goes.
PHASE_LOG=/dev/null phase "state removed (.run/cluster)" remove_state
