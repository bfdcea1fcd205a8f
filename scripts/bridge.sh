#!/usr/bin/env bash
# Kafka bridge (python -m bridge) as a background service of the local stack.
#   scripts/bridge.sh start|stop|restart|status
# Configuration: the environment variables in bridge/README.md (defaults fit the local stack).
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
HEALTH="http://$STACK_HOST:${BRIDGE_PORT}"

start() {
  # Same topology as the Helm chart: the bridge calls TorchServe itself (no gateway hop: 218.6 -> 249.5
  # img/s through the bridge, loadtest/README.md), whose readiness is /ping; with the KServe runtime
  # (.run/runtime) it calls that on :INFERENCE_PORT, with the v2 model readiness. Either can be overridden.
  local url="http://$STACK_HOST:$TORCHSERVE_INFERENCE_PORT" ready=/ping
  if [[ $(cat "$RUN_DIR/runtime" 2>/dev/null) == kserve ]]; then url="http://$STACK_HOST:$INFERENCE_PORT" ready=""; fi
  local_s3_env  # s3:// references read the local object store (scripts/s3.sh) unless FETCH_*/AWS_* say otherwise
  INFERENCE_URL="${INFERENCE_URL:-$url}" INFERENCE_READY_PATH="${INFERENCE_READY_PATH-$ready}" \
    start_bg bridge "$PY" -m bridge
  # Live = HTTP server up; ready = consumer joined and the endpoint answers (may take longer, not awaited).
  wait_http "$HEALTH/livez" 30 bridge
  for _ in $(seq 1 $(( ${BRIDGE_START_TIMEOUT_S:-60} * 4 ))); do
    curl -fs -o /dev/null --max-time 2 "$HEALTH/readyz" && { echo "bridge ready: $HEALTH/metrics"; return 0; }
    is_running bridge || { echo "bridge died; last log lines:" >&2; tail -n 40 "$LOG_DIR/bridge.log" >&2; exit 1; }
    sleep 0.25
  done
  echo "bridge running but not ready yet ($HEALTH/readyz); see $LOG_DIR/bridge.log" >&2
}

stop() { stop_bg bridge TERM "${BRIDGE_STOP_TIMEOUT_S:-40}"; }

status() { status_line bridge "$HEALTH/readyz"; }

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
