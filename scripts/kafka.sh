#!/usr/bin/env bash
# Local Apache Kafka: one KRaft node (broker + controller) from Maven Central jars, Java 17, loopback only.
#   scripts/kafka.sh fetch|kcat|start|stop|restart|status|topics|reset
# fetch: jars pinned in kafka/pom.xml -> .cache/kafka/libs (once; idempotent).
# kcat: Debian's kcat, a Kafka client not written here (interop tests, debugging).
# start: fetch, write .run/kafka/server.properties, format the data dir once, start, create the topics.
# Data lives in .run/kafka/data (`reset` or `make clean` wipes it). Ports come from stack.env.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$ROOT/kafka/pom.xml")"
LIBS="${KAFKA_LIBS:-$ROOT/.cache/kafka/libs}"
STAMP="$LIBS/.fetched-$KAFKA_VERSION"
KDIR="$RUN_DIR/kafka"
DATA="$KDIR/data"
# One size for broker and clients (bridge, CLIs): large photos fit, base64 JSON envelopes too.
export KAFKA_MAX_MESSAGE_BYTES="${KAFKA_MAX_MESSAGE_BYTES:-16777216}"
KAFKA_HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}"
BOOTSTRAP="$STACK_HOST:$KAFKA_PORT"

copy_jars() { maven_copy "$ROOT/kafka/pom.xml" "$LIBS"; }

fetch() {
  [[ -f "$STAMP" ]] && return 0
  command -v mvn >/dev/null || { echo "mvn not found (apt-get install maven)" >&2; exit 1; }
  rm -rf "$LIBS"
  phase "kafka: Apache Kafka $KAFKA_VERSION jars fetched (Maven Central)" copy_jars
  touch "$STAMP"
}

# The broker's configuration, storage format and command line: kafka/broker.sh (shared with the cluster image).
export KAFKA_LIBS="$LIBS" KAFKA_DATA_DIR="$DATA" KAFKA_CONFIG_FILE="$KDIR/server.properties" KAFKA_HEAP_OPTS
export KAFKA_LISTENERS="PLAINTEXT://$STACK_HOST:$KAFKA_PORT,CONTROLLER://$STACK_HOST:$KAFKA_CONTROLLER_PORT"
export KAFKA_ADVERTISED_LISTENERS="PLAINTEXT://$STACK_HOST:$KAFKA_PORT"
export KAFKA_CONTROLLER_VOTER="$STACK_HOST:$KAFKA_CONTROLLER_PORT"
BROKER_SH="$ROOT/kafka/broker.sh"

port_open() { (exec 3<>"/dev/tcp/$STACK_HOST/$KAFKA_PORT") 2>/dev/null; }

topics() {
  "$PY" -m bridge.topics --bootstrap "$BOOTSTRAP" --wait "${KAFKA_START_TIMEOUT_S:-90}" ensure
}

start() {
  fetch
  start_bg kafka "$BROKER_SH" run  # writes server.properties, formats the data dir once, runs the broker
  for _ in $(seq 1 $(( ${KAFKA_START_TIMEOUT_S:-90} * 4 ))); do
    port_open && break
    is_running kafka || { echo "kafka died; last log lines:" >&2; tail -n 40 "$LOG_DIR/kafka.log" >&2; exit 1; }
    sleep 0.25
  done
  topics
  echo "kafka ready: $BOOTSTRAP (KRaft, Apache Kafka $KAFKA_VERSION)"
}

stop() { stop_bg kafka TERM 60; }

status() {
  if is_running kafka; then
    if port_open; then echo "kafka: running, ready ($BOOTSTRAP)"; else echo "kafka: running, NOT ready ($BOOTSTRAP)"; fi
  else echo "kafka: stopped"; fi
}

case "${1:-}" in
  fetch) fetch ;;
  kcat) apt_install kcat kcat ;;
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  topics) topics ;;
  reset) stop; rm -rf "$KDIR" ;;
  *) echo "usage: $0 fetch|kcat|start|stop|restart|status|topics|reset" >&2; exit 2 ;;
esac
