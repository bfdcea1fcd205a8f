#!/usr/bin/env bash
# The local cluster's Kafka broker (cluster/manifests/kafka.yaml): what the chart's bridge consumes from.
#   cluster/kafka.sh install     image imported, StatefulSet + PV applied, broker Ready, topics created
#   cluster/kafka.sh uninstall   namespace and PV deleted (the data folder goes with `make cluster-down`)
#   cluster/kafka.sh bootstrap   the host's bootstrap address (node IP + NodePort)
# In the cluster the broker is kafka.$KAFKA_NAMESPACE.svc.cluster.local:9092 (the chart's
# bridge.kafka.bootstrapServers in ci/local-cluster-values.yaml); the host reaches it on $NODE_IP:$KAFKA_NODE_PORT.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/env.sh
source "$HERE/env.sh"
KUBECTL="$CLUSTER_BIN/kubectl"
PY="${PY:-$ROOT/.venv/bin/python}"
KAFKA_NAMESPACE="${KAFKA_NAMESPACE:-kafka}"
KAFKA_NODE_PORT="${KAFKA_NODE_PORT:-30094}"
# Under .run/cluster: the log survives broker restarts, not `make cluster-down`.
KAFKA_DATA="$CLUSTER_DIR/kafka-data"
KAFKA_UID=1000  # docker/kafka.Dockerfile's USER
BOOTSTRAP="$NODE_IP:$KAFKA_NODE_PORT"

manifest() {
  local image
  image="$("$ROOT/scripts/images.sh" refs | grep '/kafka:')"
  sed -e "s#@NAMESPACE@#$KAFKA_NAMESPACE#g" -e "s#@DATA_PATH@#$KAFKA_DATA#g" -e "s#@NODE@#$NODE_NAME#g" \
    -e "s#@IMAGE@#$image#g" -e "s#@NODE_IP@#$NODE_IP#g" -e "s#@NODE_PORT@#$KAFKA_NODE_PORT#g" \
    -e "s#@DOMAIN@#$CLUSTER_DOMAIN#g" "$HERE/manifests/kafka.yaml"
}

apply() {
  # A hostPath volume is not chowned by fsGroup: the folder belongs to the broker's uid from the start.
  mkdir -p "$KAFKA_DATA"
  chown "$KAFKA_UID:$KAFKA_UID" "$KAFKA_DATA"
  chmod 700 "$KAFKA_DATA"
  rebind_released_pv "kafka-data-$KAFKA_NAMESPACE"
  manifest | "$KUBECTL" apply -f -
  rollout "$KAFKA_NAMESPACE" statefulset/kafka 5m
}

topics() {  # the same topics and sizes as the local stack (bridge/topics.py), created through the NodePort
  (cd "$ROOT" && "$PY" -m bridge.topics --bootstrap "$BOOTSTRAP" --wait 120 ensure)
}

case "${1:-install}" in
  install)
    phase "kafka image imported into the node's containerd" \
      env CONTAINERD_ADDRESS="$CONTAINERD_SOCK" "$ROOT/scripts/images.sh" load kafka
    phase "kafka: StatefulSet + PV in namespace $KAFKA_NAMESPACE, broker Ready" apply
    phase "kafka: topics image_data / image_predictions / image_review / image_data.dlq via $BOOTSTRAP" topics
    ;;
  uninstall)
    phase "kafka: namespace $KAFKA_NAMESPACE and its volume deleted" bash -c \
      "'$KUBECTL' delete namespace '$KAFKA_NAMESPACE' --wait --timeout=120s --ignore-not-found && '$KUBECTL' delete pv kafka-data-$KAFKA_NAMESPACE --ignore-not-found"
    ;;
  bootstrap) echo "$BOOTSTRAP" ;;
  *) echo "usage: $0 install|uninstall|bootstrap" >&2; exit 2 ;;
esac
