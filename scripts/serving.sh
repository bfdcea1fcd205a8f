#!/usr/bin/env bash
# Local serving stack: TorchServe (Java frontend + Python workers) behind the KServe-protocol gateway.
#   scripts/serving.sh start|stop|status|restart
# Ports from stack.env; every listener on 127.0.0.1. Archives come from `make models`.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TS_DIR="$RUN_DIR/torchserve"
STORE="$ROOT/model-archive/build/model-store"
GATEWAY_URL="http://$STACK_HOST:$INFERENCE_PORT"

start_torchserve() {
  ls "$STORE"/*.mar >/dev/null 2>&1 || { echo "no archives in $STORE: run 'make models'" >&2; exit 1; }
  mkdir -p "$TS_DIR/logs"
  "$PY" "$ROOT/model-archive/build_archives.py" render-config --out "$TS_DIR/config.properties"
  # LOG_LOCATION/METRICS_LOCATION keep TorchServe's log4j files out of the working tree. TorchServe unpacks every
  # .mar into $TMPDIR/models/<uuid> and never removes it (~130 MB per start): a private TMPDIR, emptied here.
  rm -rf "$TS_DIR/tmp" && mkdir -p "$TS_DIR/tmp"
  TMPDIR="$TS_DIR/tmp" LOG_LOCATION="$TS_DIR/logs" METRICS_LOCATION="$TS_DIR/logs" \
    start_bg torchserve "$ROOT/.venv/bin/torchserve" --start --foreground --ncs \
      --ts-config "$TS_DIR/config.properties" --model-store "$STORE" --models all --disable-token-auth
}

start() {
  start_torchserve
  start_bg gateway "$PY" -m gateway
  wait_http "$GATEWAY_URL/v2/health/live" 60 gateway
  # Ready = every model has a READY worker (the gateway asks TorchServe's management API).
  wait_http "$GATEWAY_URL/v2/health/ready" "${SERVING_START_TIMEOUT_S:-240}" torchserve
  echo "serving ready: $GATEWAY_URL (KServe v1/v2), metrics http://$STACK_HOST:$TORCHSERVE_METRICS_PORT/metrics"
}

stop() {
  stop_bg gateway
  stop_bg torchserve TERM 60
}

status() {
  status_line torchserve "http://$STACK_HOST:$TORCHSERVE_INFERENCE_PORT/ping"
  status_line gateway "$GATEWAY_URL/v2/health/ready"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  *) echo "usage: $0 start|stop|restart|status" >&2; exit 2 ;;
esac
