#!/usr/bin/env bash
# Checks, before minutes of work, that this machine has what a make goal needs, and names ALL that is
# missing in one message (with how to install each), exit 1. Silent and exit 0 when everything is there.
#   scripts/preflight.sh setup|demo|test|cluster      (each mode includes the ones before it)
# setup   `make setup`: python3 3.11 with venv (pyproject's requires-python)
# demo    `make demo` / `make up`: + Java 17 (TorchServe, Kafka), Maven (Kafka jars), curl, setsid
# test    `make test`: + Go (go install of helm, kubeconform, ...; the dashboard schema validator),
#         prometheus/promtool and kcat from Debian (installed by make when root; otherwise they must be there)
# cluster `make cluster-up` / `make e2e*`: + root, gcc (static pause binary), openssl, ip, and apt-get for the
#         Debian packages cluster/up.sh installs (etcd, containerd, runc, CNI plugins, iptables, buildah, ...)
# every mode: free disk for what the goal writes and is not there yet (PREFLIGHT_SKIP_DISK=1 skips the check)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-setup}"
case "$MODE" in setup) level=1 ;; demo) level=2 ;; test) level=3 ;; cluster) level=4 ;;
  *) echo "usage: $0 setup|demo|test|cluster" >&2; exit 2 ;; esac

# The highest `go` directive among the pinned Go modules (helm v3.22.0, kustomize v5.8.2,
# monitoring/dashboard-schema/go.mod): GOTOOLCHAIN=local forbids fetching a newer toolchain.
GO_MIN="1.26"
JAVA_MIN=17
PY_MIN="$(sed -n 's/^requires-python = ">=\([0-9.]*\).*/\1/p' "$ROOT/pyproject.toml")"  # 3.11
VENV_PY="$ROOT/.venv/bin/python"

missing=()
need() { missing+=("$1"); }  # need "WHAT (WHY): HOW TO INSTALL"
have() { command -v "$1" >/dev/null 2>&1; }
version_ge() { [[ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -1)" == "$2" ]]; }  # version_ge HAVE MIN
is_root() { [[ $(id -u) -eq 0 ]]; }

debian_pkg() {  # debian_pkg PACKAGE WHY COMMAND... : fine if present, or if make can apt-get it (root)
  local pkg="$1" why="$2" cmd absent=(); shift 2
  for cmd in "$@"; do have "$cmd" || [[ -e "$cmd" ]] || absent+=("${cmd##*/}"); done
  [[ ${#absent[@]} -eq 0 ]] && return 0
  if is_root && have apt-get; then return 0; fi  # make installs it (scripts/lib.sh apt_install)
  need "${absent[*]} ($why): sudo apt-get install -y $pkg, or run make as root to have it installed"
}

# setup: the interpreter the venv is made with (an existing .venv's own, else python3 on PATH).
if [[ -x "$VENV_PY" ]] && "$VENV_PY" -c 'import sys' 2>/dev/null; then py="$VENV_PY"; else py="python3"; fi
if ! have "$py" && [[ ! -x "$py" ]]; then
  need "python3 $PY_MIN (the project's .venv): sudo apt-get install -y python3 python3-venv (Debian 12 ships $PY_MIN)"
else
  pyv="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo "?")"
  if [[ "$pyv" != "$PY_MIN" ]]; then
    need "python3 $PY_MIN (pyproject requires-python; found $pyv): sudo apt-get install -y python$PY_MIN python$PY_MIN-venv"
  elif [[ "$py" == python3 ]] && ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    need "python3 venv module (creates .venv): sudo apt-get install -y python3-venv"
  fi
fi

if (( level >= 2 )); then
  if ! have java; then
    need "java $JAVA_MIN (TorchServe, Kafka broker): sudo apt-get install -y openjdk-17-jre-headless"
  else
    jv="$(java -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)"
    [[ "${jv:-0}" -ge $JAVA_MIN ]] \
      || need "java $JAVA_MIN (TorchServe, Kafka broker; found ${jv:-?}): sudo apt-get install -y openjdk-17-jre-headless"
  fi
  have mvn || need "mvn (fetches the pinned Kafka jars from Maven Central): sudo apt-get install -y maven"
  have curl || need "curl (readiness checks of the local stack): sudo apt-get install -y curl"
  have setsid || need "setsid (runs each service in its own process group): sudo apt-get install -y util-linux"
fi

if (( level >= 3 )); then
  if ! have go; then
    need "go >= $GO_MIN (go install of helm, kubeconform, kube-score, kustomize; dashboard schema validator): https://go.dev/dl/ (unpack to /usr/local/go, add /usr/local/go/bin to PATH)"
  else
    gov="$(go env GOVERSION 2>/dev/null | sed 's/^go//')"
    version_ge "${gov:-0}" "$GO_MIN" \
      || need "go >= $GO_MIN (the pinned modules' go directive; found ${gov:-?}): https://go.dev/dl/"
  fi
  debian_pkg prometheus "promtool rule tests, live dashboard check" promtool prometheus
  debian_pkg kcat "Kafka interop tests" kcat
fi

if (( level >= 4 )); then
  is_root || need "root (network links, containerd, kubelet, apt-get): sudo make ... (cluster-up, e2e)"
  have gcc || need "gcc (static pause binary of the cluster): sudo apt-get install -y gcc libc6-dev"
  have openssl || need "openssl (cluster certificates): sudo apt-get install -y openssl"
  have ip || need "ip (node bridge and routes): sudo apt-get install -y iproute2"
  debian_pkg etcd-server "cluster state" etcd
  debian_pkg containerd "container runtime" containerd ctr
  debian_pkg runc "OCI runtime" runc
  debian_pkg containernetworking-plugins "pod network" /usr/lib/cni/bridge
  debian_pkg iptables "kube-proxy, NetworkPolicy" iptables
  debian_pkg conntrack "kube-proxy" conntrack
  debian_pkg ipset "NetworkPolicy" ipset
  have docker || debian_pkg "buildah debootstrap" "image builds without Docker" buildah debootstrap
fi

# Disk: what this goal writes that is not there yet (sizes measured on this project's machine: .venv 7.4 GB,
# the wheelhouse 3.7 GB, the clone's Go tools and run state ~3 GB; for a cluster, once: the Go module and build
# cache 12 GB, buildah's images 7 GB, containerd's store 11 GB; later, changed images: a predictor rebuild and
# import a few GB, a torchserve base rebuild ~8 GB above the old one while it commits). Too little space failed
# runs half-way, in odd places.
free_gb() { df -Pk "$1" 2>/dev/null | awk 'NR == 2 {print int($4 / 1048576)}'; }
cache_root="$HOME/.cache/image-moderation"
need_gb=1
[[ -f "$ROOT/.venv/.setup-done" ]] || need_gb=$((need_gb + 8))
[[ -d "${WHEELHOUSE:-$cache_root/wheels}" ]] || need_gb=$((need_gb + 4))
(( level >= 3 )) && need_gb=$((need_gb + 3))
if (( level >= 4 )); then
  if [[ -x "$cache_root/cluster/bin/kubelet" ]]; then need_gb=$((need_gb + 8)); else need_gb=$((need_gb + 32)); fi
fi
mkdir -p "$cache_root" 2>/dev/null || true
if [[ -z ${PREFLIGHT_SKIP_DISK:-} ]]; then
  for dir in "$ROOT" "$cache_root"; do
    have_gb="$(free_gb "$dir")"
    if [[ -n $have_gb ]] && (( have_gb < need_gb )); then
      need "$need_gb GB of free disk at $dir ($MODE; found $have_gb GB): free some (make clean; make cluster-down), or PREFLIGHT_SKIP_DISK=1 to try anyway"
      break
    fi
  done
fi

if [[ ${#missing[@]} -gt 0 ]]; then
  {
    echo "preflight ($MODE): this machine lacks ${#missing[@]} requirement(s); nothing was started:"
    printf '  - %s\n' "${missing[@]}"
    echo "Install these, then run make again (README.md, Requirements)."
  } >&2
  exit 1
fi
