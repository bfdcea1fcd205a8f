#!/usr/bin/env bash
# `make cluster-up`: a real single-node Kubernetes cluster on this machine, from upstream code only.
# Host processes (like "Kubernetes the hard way"): etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd (+ runc, CNI bridge), kubelet, kube-proxy (iptables), kube-router's
# NetworkPolicy firewall. In the cluster: CoreDNS, KServe's controller with its webhooks.
# Idempotent: a second run only starts what is not running. Every phase prints one line with its duration; logs are in .run/cluster/logs.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
RUN_DIR="$CLUSTER_DIR"
# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"   # start_bg / stop_bg / is_running / apt_install, pidfiles in $RUN_DIR
PKI="$CLUSTER_DIR/pki"
KUBECTL="$CLUSTER_BIN/kubectl"
[[ $(id -u) -eq 0 ]] || { echo "cluster-up needs root (network links, containerd, kubelet)" >&2; exit 1; }
mkdir -p "$CLUSTER_DIR"/{logs,etcd,kubelet,cni/net.d,cni/state,containerd-state} "$CLUSTER_CACHE"

packages() {
  apt_install etcd-server etcd
  apt_install containerd containerd ctr
  apt_install runc runc
  apt_install containernetworking-plugins /usr/lib/cni/bridge
  apt_install iptables iptables
  apt_install conntrack conntrack
  apt_install ipset ipset
  # buildah with its recommended packages (fuse-overlayfs, netavark), as `make images` was tested.
  if ! command -v buildah >/dev/null || ! command -v debootstrap >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap >/dev/null \
      || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q buildah debootstrap >/dev/null; }
  fi
}

network() {
  # Remember the forwarding setting to restore it at cluster-down.
  [[ -f "$CLUSTER_DIR/ip_forward.orig" ]] || cat /proc/sys/net/ipv4/ip_forward > "$CLUSTER_DIR/ip_forward.orig"
  modprobe br_netfilter 2>/dev/null || true
  modprobe overlay 2>/dev/null || true
  if ! ip link show "$NODE_BRIDGE" >/dev/null 2>&1; then
    ip link add "$NODE_BRIDGE" type bridge
    ip addr add "$NODE_IP/32" dev "$NODE_BRIDGE"
    ip link set "$NODE_BRIDGE" up
  fi
  if ! ip link show "$CNI_BRIDGE" >/dev/null 2>&1; then
    # Created here (the CNI bridge plugin adopts it) so the pod range is on-link before any pod exists.
    ip link add "$CNI_BRIDGE" type bridge
    ip addr add "$POD_GATEWAY/${POD_CIDR#*/}" dev "$CNI_BRIDGE"
    ip link set "$CNI_BRIDGE" up
  fi
  # Service addresses stay on this machine even before kube-proxy has written a rule for them.
  ip route replace "$SERVICE_CIDR" dev "$NODE_BRIDGE"
  sysctl -qw net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1
  # Pods may only talk to each other, the node and Services: nothing they send is forwarded elsewhere.
  iptables -N IM-CLUSTER-GUARD 2>/dev/null || iptables -F IM-CLUSTER-GUARD
  iptables -A IM-CLUSTER-GUARD -i "$CNI_BRIDGE" -o "$CNI_BRIDGE" -j RETURN
  iptables -A IM-CLUSTER-GUARD -s "$POD_CIDR" -j DROP
  iptables -A IM-CLUSTER-GUARD -d "$POD_CIDR" ! -i "$CNI_BRIDGE" -j DROP
  iptables -C FORWARD -j IM-CLUSTER-GUARD 2>/dev/null || iptables -I FORWARD 1 -j IM-CLUSTER-GUARD
}

write_configs() {
  sed -e "s#@POD_CIDR@#$POD_CIDR#g" -e "s#@POD_GATEWAY@#$POD_GATEWAY#g" -e "s#@CNI_BRIDGE@#$CNI_BRIDGE#g" \
      -e "s#@SERVICE_CIDR@#$SERVICE_CIDR#g" -e "s#@NODE_IP@#$NODE_IP#g" -e "s#@CNI_STATE@#$CLUSTER_DIR/cni/state#g" \
      "$HERE/config/10-image-moderation.conflist" > "$CLUSTER_DIR/cni/net.d/10-image-moderation.conflist"
  sed -e "s#@CACHE@#$CLUSTER_CACHE#g" -e "s#@STATE@#$CLUSTER_DIR/containerd-state#g" -e "s#@SOCK@#$CONTAINERD_SOCK#g" \
      -e "s#@PAUSE@#$PAUSE_IMAGE#g" -e "s#@CNI_CONF@#$CLUSTER_DIR/cni/net.d#g" \
      "$HERE/config/containerd.toml" > "$CLUSTER_DIR/containerd.toml"
  sed -e "s#@PKI@#$PKI#g" -e "s#@NODE_IP@#$NODE_IP#g" -e "s#@DNS@#$DNS_SERVICE_IP#g" -e "s#@DOMAIN@#$CLUSTER_DOMAIN#g" \
      -e "s#@SOCK@#$CONTAINERD_SOCK#g" -e "s#@MIN_FREE@#${CLUSTER_EVICTION_GB}Gi#g" \
      "$HERE/config/kubelet.yaml" > "$CLUSTER_DIR/kubelet.yaml"
}

free_gb() {  # free_gb PATH : GiB an unprivileged writer may still use there (what the kubelet measures)
  df -B1G --output=avail "$1" | tail -n 1 | tr -d ' '
}

disk_space() {
  # The kubelet's file systems: its root dir (pods' volumes, logs) and containerd's (images, layers).
  local path free need=$((CLUSTER_EVICTION_GB + CLUSTER_HEADROOM_GB))
  for path in "$CLUSTER_DIR" "$CLUSTER_CACHE"; do
    free="$(free_gb "$path")"
    if ((free < need)); then
      echo "only ${free} GiB free for $path; the node needs ${need} GiB (eviction at ${CLUSTER_EVICTION_GB} GiB" \
        "+ ${CLUSTER_HEADROOM_GB} GiB for images and pods), or it refuses pods with DiskPressure." \
        "Free space (e.g. old clones' .venv, /tmp), or lower CLUSTER_HEADROOM_GB." >&2
      return 1
    fi
  done
}

wait_for() {  # wait_for NAME TIMEOUT_S CMD... : poll CMD until it succeeds, or show the log and fail
  local name="$1" timeout="$2"; shift 2
  for _ in $(seq 1 $((timeout * 2))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [[ -f "$(pidfile "$name")" ]] && ! is_running "$name"; then break; fi
    sleep 0.5
  done
  echo "$name not ready after ${timeout}s; last log lines:" >&2; tail -n 30 "$LOG_DIR/$name.log" >&2; return 1
}

start_etcd() {
  start_bg etcd etcd --name "$NODE_NAME" --data-dir "$CLUSTER_DIR/etcd" \
    --listen-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" --advertise-client-urls "https://127.0.0.1:$ETCD_CLIENT_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "$NODE_NAME=http://127.0.0.1:$ETCD_PEER_PORT" \
    --cert-file "$PKI/etcd-server.crt" --key-file "$PKI/etcd-server.key" \
    --trusted-ca-file "$PKI/ca.crt" --client-cert-auth --listen-metrics-urls "http://127.0.0.1:2381" >/dev/null
  wait_for etcd 60 curl -fs http://127.0.0.1:2381/health
}

start_apiserver() {
  start_bg kube-apiserver "$CLUSTER_BIN/kube-apiserver" \
    --bind-address="$NODE_IP" --advertise-address="$NODE_IP" --secure-port="$APISERVER_PORT" \
    --etcd-servers="https://127.0.0.1:$ETCD_CLIENT_PORT" --etcd-cafile="$PKI/ca.crt" \
    --etcd-certfile="$PKI/apiserver-etcd-client.crt" --etcd-keyfile="$PKI/apiserver-etcd-client.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
    --tls-cert-file="$PKI/kube-apiserver.crt" --tls-private-key-file="$PKI/kube-apiserver.key" \
    --client-ca-file="$PKI/ca.crt" --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
    --kubelet-client-certificate="$PKI/apiserver-kubelet-client.crt" --kubelet-client-key="$PKI/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$PKI/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --service-account-issuer="https://kubernetes.default.svc.$CLUSTER_DOMAIN" \
    --service-account-key-file="$PKI/service-account.pub" --service-account-signing-key-file="$PKI/service-account.key" \
    --requestheader-client-ca-file="$PKI/front-proxy-ca.crt" --requestheader-allowed-names=front-proxy-client \
    --requestheader-username-headers=X-Remote-User --requestheader-group-headers=X-Remote-Group \
    --requestheader-extra-headers-prefix=X-Remote-Extra- \
    --proxy-client-cert-file="$PKI/front-proxy-client.crt" --proxy-client-key-file="$PKI/front-proxy-client.key" \
    --enable-aggregator-routing=true --allow-privileged=false --profiling=false --v=1 >/dev/null
  wait_for kube-apiserver 120 "$KUBECTL" get --raw /readyz
  # The apiserver's kubelet client (logs, exec, port-forward, stats) may use the kubelet API; bound
  # before the kubelet starts, whose authorizer caches a denial for 30 s.
  "$KUBECTL" create clusterrolebinding kube-apiserver-kubelet-api --clusterrole=system:kubelet-api-admin \
    --user=kube-apiserver-kubelet-client --dry-run=client -o yaml | "$KUBECTL" apply -f -
}

start_controllers() {
  start_bg kube-controller-manager "$CLUSTER_BIN/kube-controller-manager" \
    --kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig="$PKI/kube-controller-manager.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
    --service-account-private-key-file="$PKI/service-account.key" --root-ca-file="$PKI/ca.crt" \
    --cluster-signing-cert-file="$PKI/ca.crt" --cluster-signing-key-file="$PKI/ca.key" \
    --service-cluster-ip-range="$SERVICE_CIDR" --cluster-cidr="$POD_CIDR" --allocate-node-cidrs=false \
    --horizontal-pod-autoscaler-sync-period=10s --v=1 >/dev/null
  start_bg kube-scheduler "$CLUSTER_BIN/kube-scheduler" \
    --kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig="$PKI/kube-scheduler.kubeconfig" \
    --bind-address=127.0.0.1 --leader-elect=false --v=1 >/dev/null
  wait_for kube-controller-manager 60 curl -fsk https://127.0.0.1:10257/healthz
  wait_for kube-scheduler 60 curl -fsk https://127.0.0.1:10259/healthz
}

start_containerd() {
  start_bg containerd containerd --config "$CLUSTER_DIR/containerd.toml" >/dev/null
  wait_for containerd 60 ctr -a "$CONTAINERD_SOCK" version
}

base_images() {  # the sandbox (pause) and the cluster add-ons, each a static binary in an image of its own
  "$HERE/addon-images.sh"
}

start_kubelet() {
  start_bg kubelet "$CLUSTER_BIN/kubelet" --config="$CLUSTER_DIR/kubelet.yaml" \
    --kubeconfig="$PKI/kubelet.kubeconfig" --node-ip="$NODE_IP" --hostname-override="$NODE_NAME" \
    --root-dir="$CLUSTER_DIR/kubelet" --cert-dir="$PKI" --v=1 >/dev/null
  wait_for kubelet 120 bash -c "'$KUBECTL' get node '$NODE_NAME' -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
}

start_proxy() {
  start_bg kube-proxy "$CLUSTER_BIN/kube-proxy" --kubeconfig="$PKI/kube-proxy.kubeconfig" \
    --hostname-override="$NODE_NAME" --cluster-cidr="$POD_CIDR" --proxy-mode=iptables \
    --nodeport-addresses="$NODE_IP/32" --iptables-localhost-nodeports=false --conntrack-max-per-core=0 \
    --bind-address=127.0.0.1 --metrics-bind-address=127.0.0.1:10249 --healthz-bind-address=127.0.0.1:10256 \
    --v=1 >/dev/null
  wait_for kube-proxy 60 curl -fs http://127.0.0.1:10256/healthz
}

start_network_policies() {
  # kube-router's firewall only (no routing, no service proxy: the bridge CNI and kube-proxy do those).
  "$KUBECTL" apply -f "$HERE/manifests/kube-router-rbac.yaml" >/dev/null
  start_bg kube-router "$CLUSTER_BIN/kube-router" --kubeconfig="$PKI/kube-router.kubeconfig" \
    --hostname-override="$NODE_NAME" --run-firewall=true --run-router=false --run-service-proxy=false \
    --service-cluster-ip-range="$SERVICE_CIDR" --health-port=0 --metrics-port=0 --v=1 >/dev/null
  wait_for kube-router 60 bash -c "iptables -S | grep -q KUBE-ROUTER-"
}

addons() {
  "$HERE/addons.sh"
}

phase "disk: $(free_gb "$CLUSTER_DIR") GiB free (eviction below ${CLUSTER_EVICTION_GB} GiB)" disk_space
phase "packages (Debian: etcd, containerd, runc, CNI, iptables, buildah)" packages
phase "binaries (cache: ${CLUSTER_CACHE/#$HOME/\~})" "$HERE/build.sh" all
phase "certificates and kubeconfigs (.run/cluster/pki)" "$HERE/pki.sh"
phase "node network ($NODE_BRIDGE $NODE_IP, $CNI_BRIDGE $POD_CIDR)" network
write_configs
phase "etcd $(etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')" start_etcd
phase "kube-apiserver $KUBERNETES_VERSION" start_apiserver
phase "kube-controller-manager + kube-scheduler" start_controllers
phase "containerd $(containerd --version | awk '{print $3}')" start_containerd
phase "pause + add-on images" base_images
phase "kubelet (node $NODE_NAME Ready)" start_kubelet
phase "kube-proxy (iptables)" start_proxy
phase "NetworkPolicy: kube-router $KUBE_ROUTER_VERSION firewall (iptables + ipset)" start_network_policies
phase "add-ons: CRDs, CoreDNS, KServe" addons
echo "cluster up: export KUBECONFIG=$KUBECONFIG  (kubectl: $KUBECTL)"
