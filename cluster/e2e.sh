#!/usr/bin/env bash
# `make e2e`: cluster-up + images + deploy + the end-to-end checks, then one summary: the time of each
# phase, the checks' result and the cluster's memory footprint with the chart deployed. The cluster stays up for inspection
# (`make cluster-down` removes it; .ci/run always does).
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
PY="${PY:-$ROOT/.venv/bin/python}"
cd "$ROOT"
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
  && step "deploy (helm --wait)" "$HERE/deploy.sh" install \
  && footprint \
  && step "checks (pytest cluster/tests)" "$PY" -m pytest -q -p no:cacheprovider "$ROOT/cluster/tests" ${PYTEST_ARGS:-}
echo
echo "== make e2e summary"
printf '%s\n' "${SUMMARY[@]}"
if [[ -n "$FOOTPRINT" ]]; then echo "$FOOTPRINT" | sed '1s/$/, with the chart deployed and idle/'; fi
exit $RC
