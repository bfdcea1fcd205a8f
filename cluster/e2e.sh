#!/usr/bin/env bash
# cluster-up + images + deploy + one set of checks, then one summary: the time of each phase, the checks'
# result and the cluster's memory footprint with the chart deployed. The cluster stays up for inspection
# (`make cluster-down` removes it; .ci/run always does).
#   cluster/e2e.sh [checks]   `make e2e`: cluster/tests/test_e2e.py (ends with helm uninstall + kustomize)
#   cluster/e2e.sh chaos      `make e2e-chaos`: cluster/tests/test_chaos.py (CHAOS_N, CHAOS_RUNS, CHAOS_RATE)
#   cluster/e2e.sh scale      `make e2e-scale`: cluster/tests/test_scale.py (metrics-server, HPA, KEDA)
#   cluster/e2e.sh kserve     `make e2e-kserve`: the chart with runtime=kserve, cluster/tests/test_kserve_runtime.py
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
PY="${PY:-$ROOT/.venv/bin/python}"
cd "$ROOT"
MODE="${1:-checks}"
case "$MODE" in
  checks) TESTS=test_e2e.py; TARGET=e2e; REPORT="" ;;
  # -rP: the runs' numbers (recovery times, HPA decisions, throughput) are the point, shown when passing too.
  chaos) TESTS=test_chaos.py; TARGET=e2e-chaos; REPORT="-rP" ;;
  scale) TESTS=test_scale.py; TARGET=e2e-scale; REPORT="-rP" ;;
  kserve) TESTS=test_kserve_runtime.py; TARGET=e2e-kserve; REPORT="" ;;
  *) echo "usage: $0 [checks|chaos|scale|kserve]" >&2; exit 2 ;;
esac
DEPLOY_ARGS=()
[[ $MODE != kserve ]] || DEPLOY_ARGS=(--set runtime=kserve)
declare -a SUMMARY=()
RC=0

step() {  # step NAME CMD... : run one phase, remember its duration and outcome
  local name="$1" t0 rc; shift
  t0=$(date +%s)
  "$@"; rc=$?
  SUMMARY+=("$(printf '%-34s %5d s  %s' "$name" "$(($(date +%s) - t0))" "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED ($rc)")")")
  [[ $rc -eq 0 ]] || RC=$rc
  return $rc
}

FOOTPRINT=""
footprint() { FOOTPRINT="$("$PY" "$HERE/footprint.py")"; }

step "cluster-up" "$HERE/up.sh" \
  && step "images (build if changed)" "$ROOT/scripts/images.sh" build \
  && step "deploy (helm --wait)" "$HERE/deploy.sh" install "${DEPLOY_ARGS[@]}" \
  && { [[ $MODE != scale ]] || step "metrics-server + KEDA (addons.sh scale)" "$HERE/addons.sh" scale; } \
  && footprint \
  && step "$MODE (pytest cluster/tests/$TESTS)" "$PY" -m pytest -q -p no:cacheprovider $REPORT \
    "$ROOT/cluster/tests/$TESTS" ${PYTEST_ARGS:-}
echo
echo "== make $TARGET summary"
printf '%s\n' "${SUMMARY[@]}"
if [[ -n "$FOOTPRINT" ]]; then echo "$FOOTPRINT" | sed '1s/$/, with the chart deployed and idle/'; fi
exit $RC
