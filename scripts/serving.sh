#!/usr/bin/env bash
# Local serving stack, one of two runtimes on the same archives and the same KServe v1/v2 contract on :8080:
#   RUNTIME=torchserve (default): TorchServe (Java frontend + Python workers) behind the KServe-protocol gateway;
#   RUNTIME=kserve: KServe's Python ModelServer with ONNX Runtime (python -m kserve_runtime), REST + gRPC.
#   scripts/serving.sh start|stop|status|restart
# Ports from stack.env; every listener on 127.0.0.1. Archives come from `make models`. The runtime that runs is
# written to .run/runtime, so the bridge (and stop/status) find it without being told.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
TS_DIR="$RUN_DIR/torchserve"
STORE="$ROOT/model-archive/build/model-store"
GATEWAY_URL="http://$STACK_HOST:$INFERENCE_PORT"
RUNTIME="${RUNTIME:-torchserve}"
case "$RUNTIME" in torchserve|kserve) ;; *) echo "RUNTIME must be torchserve or kserve, not '$RUNTIME'" >&2; exit 2 ;; esac

start_torchserve() {
  ls "$STORE"/*.mar >/dev/null 2>&1 || { echo "no archives in $STORE: run 'make models'" >&2; exit 1; }
  mkdir -p "$TS_DIR/logs"
  "$PY" "$ROOT/model-archive/build_archives.py" render-config --out "$TS_DIR/config.properties"
  # LOG_LOCATION/METRICS_LOCATION keep TorchServe's log4j files out of the working tree. The frontend unpacks every
  # .mar into java.io.tmpdir/models/<uuid> and never removes it (~130 MB per start): a private folder, emptied
  # here. TEMP sets java.io.tmpdir (ts/model_server.py); TMPDIR only moves the Python side (pid file, sockets).
  rm -rf "$TS_DIR/tmp" && mkdir -p "$TS_DIR/tmp"
  TMPDIR="$TS_DIR/tmp" TEMP="$TS_DIR/tmp" LOG_LOCATION="$TS_DIR/logs" METRICS_LOCATION="$TS_DIR/logs" \
    start_bg torchserve "$ROOT/.venv/bin/torchserve" --start --foreground --ncs \
      --ts-config "$TS_DIR/config.properties" --model-store "$STORE" --models all --disable-token-auth
}

start_kserve() {
  ls "$STORE"/*.mar >/dev/null 2>&1 || { echo "no archives in $STORE: run 'make models'" >&2; exit 1; }
  rm -rf "$RUN_DIR/kserve" && mkdir -p "$RUN_DIR/kserve"
  # s3:// references read the local object store (scripts/s3.sh) unless FETCH_*/AWS_* say otherwise
  ( local_s3_env; KSERVE_WORKDIR="$RUN_DIR/kserve" start_bg kserve "$PY" -m kserve_runtime )
}

running_runtime() { cat "$RUN_DIR/runtime" 2>/dev/null || echo torchserve; }

start() {
  local other; other=$([[ $RUNTIME == kserve ]] && echo torchserve || echo kserve)
  if [[ $(running_runtime) == "$other" ]] && { is_running "$other" || is_running gateway; }; then
    echo "the $other runtime is running: scripts/serving.sh stop (make down) first" >&2; exit 1
  fi
  echo "$RUNTIME" > "$RUN_DIR/runtime"
  if [[ $RUNTIME == kserve ]]; then
    start_kserve
    wait_http "$GATEWAY_URL/v2/health/ready" "${SERVING_START_TIMEOUT_S:-240}" kserve
    echo "serving ready (KServe ModelServer runtime): $GATEWAY_URL (KServe v1/v2, metrics /metrics)," \
      "OIP v2 gRPC $STACK_HOST:$INFERENCE_GRPC_PORT"
    return
  fi
  start_torchserve
  ( local_s3_env; start_bg gateway "$PY" -m gateway )  # the gateway fetches references (handlers/fetch.py)
  wait_http "$GATEWAY_URL/v2/health/live" 60 gateway
  # Ready = every model has a READY worker (the gateway asks TorchServe's management API).
  wait_http "$GATEWAY_URL/v2/health/ready" "${SERVING_START_TIMEOUT_S:-240}" torchserve
  echo "serving ready: $GATEWAY_URL (KServe v1/v2), metrics http://$STACK_HOST:$TORCHSERVE_METRICS_PORT/metrics"
}

stop() {
  stop_bg kserve TERM 40
  stop_bg gateway
  stop_bg torchserve TERM 60
  rm -f "$RUN_DIR/runtime"
}

status() {
  if [[ $(running_runtime) == kserve ]]; then
    status_line kserve "$GATEWAY_URL/v2/health/ready"
    return
  fi
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
