#!/usr/bin/env bash
# Builds the local cluster's binaries from their Go modules (Go module proxy only, nothing else fetched),
# into a cache OUTSIDE the clone so a second `make cluster-up` on the same machine skips every build:
#   kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl   k8s.io/kubernetes
#   manager (KServe controller)                                                             github.com/kserve/kserve
#   coredns                                                                                 github.com/coredns/coredns
#   kube-router, firewall only (NetworkPolicy enforcement: iptables + ipset)                  github.com/cloudnativelabs/kube-router/v2
#   pause (the pod sandbox), from the kubernetes module's build/pause/linux/pause.c         gcc -static
#   kube-state-metrics (kube_* series of the chart's dashboard)                             k8s.io/kube-state-metrics/v2
# and, only for `scale` (autoscaling add-ons, not part of `all`, which cluster-up runs):
#   metrics-server                                                                          sigs.k8s.io/metrics-server
#   keda-operator (./cmd/operator), keda-adapter (./cmd/adapter, the external metrics API)   github.com/kedacore/keda/v2
# Each binary is stamped with its version and skipped when its stamp exists.
#   cluster/build.sh [all|kubernetes|kserve|coredns|netpol|pause|scale|metrics-server|keda]
set -euo pipefail
# shellcheck source=cluster/env.sh
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOMODCACHE="$CLUSTER_CACHE/go/mod" GOCACHE="$CLUSTER_CACHE/go/build"
export GOPATH="$CLUSTER_CACHE/go/path" CGO_ENABLED=0 GOPROXY="${GOPROXY:-https://proxy.golang.org,direct}"
mkdir -p "$CLUSTER_BIN" "$GOMODCACHE" "$GOCACHE"

locked() {  # locked TARGET : build_TARGET under a lock of its own
  # Two runs of one target (make e2e and a hand-run cluster-up) wait for each other, then skip; other
  # targets go on meanwhile (a long KEDA build never holds up cluster-up's binaries).
  local fd
  exec {fd}>"$CLUSTER_CACHE/.build-$1.lock"
  flock "$fd"
  "build_${1//-/_}"
  exec {fd}>&-
}

module_dir() {  # module_dir MODULE@VERSION : a writable copy of the downloaded module (the cache is read-only)
  local mod="$1" src dst="$CLUSTER_CACHE/src/${1//\//_}" fd
  # Targets sharing a module (kubernetes, pause) have separate locks: one copies, the other waits here.
  # module_dir runs in $(...), so this lock ends with it.
  mkdir -p "$CLUSTER_CACHE/src"
  exec {fd}>"$dst.lock"
  flock "$fd"
  if [[ ! -f "$dst/.copied" ]]; then
    src="$(go mod download -json "$mod" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
    [[ -n "$src" ]] || { echo "go mod download $mod failed" >&2; return 1; }
    rm -rf "$dst"; mkdir -p "$(dirname "$dst")"
    cp -r "$src" "$dst"; chmod -R u+w "$dst"; touch "$dst/.copied"
  fi
  echo "$dst"
}

have() { [[ -x "$CLUSTER_BIN/$1" && -f "$CLUSTER_BIN/.$1-$2" ]]; }
stamp() { touch "$CLUSTER_BIN/.$1-$2"; }

build_kubernetes() {
  local v="$KUBERNETES_VERSION" minor dir ldflags missing=() name
  for name in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
    have "$name" "$v" || missing+=("$name")
  done
  [[ ${#missing[@]} -eq 0 ]] && return 0
  dir="$(module_dir "k8s.io/kubernetes@$v")"
  # The module's go.mod points every k8s.io/* staging module at ./staging/src/..., which the module
  # download does not contain: point each at the published module of the same release (v1.34.4 -> v0.34.4).
  if [[ ! -f "$dir/.replaced" ]]; then
    rm -rf "$dir/vendor" "$dir/go.work" "$dir/go.work.sum"
    sed -i -E "s#^(\s*)(k8s\.io/[a-z0-9-]+) => \./staging/src/k8s\.io/[a-z0-9-]+#\1\2 => \2 v0${v#v1}#" "$dir/go.mod"
    touch "$dir/.replaced"
  fi
  minor="$(cut -d. -f2 <<<"$v")"
  ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1"
  ldflags+=" -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=$minor"
  for name in "${missing[@]}"; do
    phase "build $name $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '$ldflags' -o '$CLUSTER_BIN/$name' ./cmd/$name"
    stamp "$name" "$v"
  done
}

build_kserve() {
  local v="$KSERVE_VERSION" dir
  have kserve-manager "$v" && return 0
  dir="$(module_dir "github.com/kserve/kserve@$v")"
  phase "build kserve-manager $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '-s -w' -o '$CLUSTER_BIN/kserve-manager' ./cmd/manager"
  stamp kserve-manager "$v"
}

build_coredns() {
  local v="$COREDNS_VERSION" dir
  have coredns "$v" && return 0
  dir="$(module_dir "github.com/coredns/coredns@$v")"
  phase "build coredns $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '-s -w' -o '$CLUSTER_BIN/coredns' ."
  stamp coredns "$v"
}

build_netpol() {
  local v="$KUBE_ROUTER_VERSION" dir
  have kube-router "$v" && return 0
  dir="$(module_dir "github.com/cloudnativelabs/kube-router/v2@$v")"
  phase "build kube-router $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=$v' -o '$CLUSTER_BIN/kube-router' ./cmd/kube-router"
  stamp kube-router "$v"
}

build_pause() {
  local v="$KUBERNETES_VERSION" dir
  have pause "$v" && return 0
  dir="$(module_dir "k8s.io/kubernetes@$v")"
  phase "build pause ($v build/pause)" gcc -Os -static -DVERSION="$v" -o "$CLUSTER_BIN/pause" "$dir/build/pause/linux/pause.c"
  strip "$CLUSTER_BIN/pause"
  stamp pause "$v"
}

build_metrics_server() {
  local v="$METRICS_SERVER_VERSION" dir ldflags
  have metrics-server "$v" && return 0
  dir="$(module_dir "sigs.k8s.io/metrics-server@$v")"
  # The module's Makefile stamps client-go's version package (what /version and the user agent report).
  ldflags="-s -w -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitTreeState=clean"
  phase "build metrics-server $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '$ldflags' -o '$CLUSTER_BIN/metrics-server' ./cmd/metrics-server"
  stamp metrics-server "$v"
}

build_kube_state_metrics() {
  local v="$KUBE_STATE_METRICS_VERSION" dir
  have kube-state-metrics "$v" && return 0
  dir="$(module_dir "k8s.io/kube-state-metrics/v2@$v")"
  phase "build kube-state-metrics $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '-s -w -X github.com/prometheus/common/version.Version=${v#v}' -o '$CLUSTER_BIN/kube-state-metrics' ."
  stamp kube-state-metrics "$v"
}

build_keda() {  # the operator and the metrics API server; the admission webhooks are left out (optional)
  local v="$KEDA_VERSION" dir ldflags name
  have keda-operator "$v" && have keda-adapter "$v" && return 0
  dir="$(module_dir "github.com/kedacore/keda/v2@$v")"
  ldflags="-s -w -X github.com/kedacore/keda/v2/version.Version=$v"
  for name in operator adapter; do
    have "keda-$name" "$v" && continue
    phase "build keda-$name $v" bash -c "cd '$dir' && nice -n 10 go build -trimpath -ldflags '$ldflags' -o '$CLUSTER_BIN/keda-$name' ./cmd/$name"
    stamp "keda-$name" "$v"
  done
}

case "${1:-all}" in
  all) for t in pause kubernetes coredns netpol kserve kube-state-metrics; do locked "$t"; done ;;
  scale) locked metrics-server; locked keda ;;
  kubernetes|kserve|coredns|netpol|pause|kube-state-metrics|metrics-server|keda) locked "$1" ;;
  *) echo "usage: $0 [all|kubernetes|kserve|coredns|netpol|pause|kube-state-metrics|scale|metrics-server|keda]" >&2; exit 2 ;;
esac
