#!/usr/bin/env bash
# The Spark consumer (python -m streaming, streaming/README.md) as a background service of the local stack, and
# the jars it needs.
#   scripts/spark.sh fetch|start|stop|restart|status|kill
# fetch: spark-sql-kafka-0-10 and its own dependencies (spark/pom.xml) -> .cache/spark/jars (once; idempotent).
# start: the streaming query against the local broker and endpoint (STREAMING_INFERENCE=endpoint|inprocess),
#        checkpoint in .run/spark/checkpoint; returns once its first micro-batch ran (the query is up).
# kill: SIGKILL of the driver (what the crash tests do); `start` again resumes from the checkpoint.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
SPARK_VERSION="$(sed -n 's:.*<spark.version>\(.*\)</spark.version>.*:\1:p' "$ROOT/spark/pom.xml")"
JARS="${STREAMING_KAFKA_JARS:-$ROOT/.cache/spark/jars}"
STAMP="$JARS/.fetched-$SPARK_VERSION"

copy_jars() { maven_copy "$ROOT/spark/pom.xml" "$JARS" -DexcludeTransitive=true; }

fetch() {
  [[ -f "$STAMP" ]] && return 0
  command -v mvn >/dev/null || { echo "mvn not found (apt-get install maven)" >&2; exit 1; }
  rm -rf "$JARS"
  phase "spark: spark-sql-kafka $SPARK_VERSION jars fetched (Maven Central)" copy_jars
  touch "$STAMP"
}

start() {
  fetch
  local url="http://$STACK_HOST:$TORCHSERVE_INFERENCE_PORT" ready=/ping  # as the bridge: TorchServe directly
  if [[ $(cat "$RUN_DIR/runtime" 2>/dev/null) == kserve ]]; then url="http://$STACK_HOST:$INFERENCE_PORT" ready=""; fi
  local_s3_env
  # Spark's scratch (jar copies, block manager) and the Python side's temp files: under .run, not /tmp, because a
  # SIGKILLed driver never removes them (~10 MB per kill); emptied here when no consumer is using them.
  local tmp="$RUN_DIR/spark/tmp"
  is_running spark || rm -rf "$tmp"
  mkdir -p "$tmp"
  : > "$LOG_DIR/spark.log.tmp" && mv "$LOG_DIR/spark.log.tmp" "$LOG_DIR/spark.log"  # readiness reads this run's log
  STREAMING_KAFKA_JARS="$JARS" INFERENCE_URL="${INFERENCE_URL:-$url}" INFERENCE_READY_PATH="${INFERENCE_READY_PATH-$ready}" \
    SPARK_LOCAL_DIRS="$tmp" TMPDIR="$tmp" start_bg spark "$PY" -m streaming
  for _ in $(seq 1 $(( ${SPARK_START_TIMEOUT_S:-180} * 4 ))); do
    grep -qs '"event": "query_started"' "$LOG_DIR/spark.log" && {
      echo "spark ready: Spark UI http://$STACK_HOST:$SPARK_UI_PORT"; return 0; }
    is_running spark || { echo "spark died; last log lines:" >&2; tail -n 40 "$LOG_DIR/spark.log" >&2; exit 1; }
    sleep 0.25
  done
  echo "spark running but its query did not start in ${SPARK_START_TIMEOUT_S:-180}s; see $LOG_DIR/spark.log" >&2
  exit 1
}

stop() { stop_bg spark TERM "${SPARK_STOP_TIMEOUT_S:-60}"; }

status() {
  if is_running spark; then echo "spark: running (Spark UI http://$STACK_HOST:$SPARK_UI_PORT)"; else echo "spark: stopped"; fi
}

case "${1:-}" in
  fetch) fetch ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  kill) stop_bg spark KILL 10 ;;
  *) echo "usage: $0 fetch|start|stop|restart|status|kill" >&2; exit 2 ;;
esac
