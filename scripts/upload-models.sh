#!/usr/bin/env bash
# Upload the KServe model layout built by `make models` to the storage an InferenceService reads
# (helm value predictor.storageUri):   scripts/upload-models.sh STORAGE_URI
#   s3://bucket/prefix   aws cli   (aws s3 sync; credentials/endpoint from the usual AWS_* env or profile)
#   gs://bucket/prefix   gsutil    (gsutil -m rsync -r)
#   pvc://claim[/path]   kubectl   (a short-lived non-root pod mounts the claim; kubectl cp copies; NAMESPACE=…)
# The folder then holds config/config.properties, config/metrics.yaml, config/log4j2.xml and model-store/<model>.mar.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD="$ROOT/model-archive/build"
URI="${1:-}"
[[ -n "$URI" ]] || { echo "usage: $0 s3://…|gs://…|pvc://claim[/path]  (make upload-models STORAGE_URI=…)" >&2; exit 2; }
[[ -f "$BUILD/config/config.properties" ]] && ls "$BUILD"/model-store/*.mar >/dev/null 2>&1 \
  || { echo "no archives in $BUILD: run 'make models'" >&2; exit 1; }
need() { command -v "$1" >/dev/null || { echo "$1 is required for $URI" >&2; exit 1; }; }

case "$URI" in
  s3://*)
    need aws
    for d in config model-store; do aws s3 sync --delete --exclude '.*' "$BUILD/$d" "${URI%/}/$d"; done ;;
  gs://*)
    need gsutil
    for d in config model-store; do gsutil -m rsync -r -d -x '^\..*' "$BUILD/$d" "${URI%/}/$d"; done ;;
  pvc://*)
    need kubectl
    rest="${URI#pvc://}"; claim="${rest%%/*}"; sub=""; [[ "$rest" == */* ]] && sub="${rest#*/}"
    ns="${NAMESPACE:-image-moderation}"; pod="upload-models-$$"
    dest="/mnt/models${sub:+/$sub}"
    kubectl -n "$ns" run "$pod" --restart=Never --image=busybox:1.37 \
      --overrides="$(cat <<JSON
{"spec":{"securityContext":{"runAsNonRoot":true,"runAsUser":1000,"fsGroup":1000,"seccompProfile":{"type":"RuntimeDefault"}},
 "containers":[{"name":"upload","image":"busybox:1.37","command":["sleep","600"],
  "securityContext":{"allowPrivilegeEscalation":false,"readOnlyRootFilesystem":true,"capabilities":{"drop":["ALL"]}},
  "volumeMounts":[{"name":"models","mountPath":"/mnt/models"}]}],
 "volumes":[{"name":"models","persistentVolumeClaim":{"claimName":"$claim"}}]}}
JSON
)"
    trap 'kubectl -n "$ns" delete pod "$pod" --wait=false >/dev/null 2>&1 || true' EXIT
    kubectl -n "$ns" wait --for=condition=Ready "pod/$pod" --timeout=120s
    kubectl -n "$ns" exec "$pod" -- mkdir -p "$dest"
    kubectl -n "$ns" exec "$pod" -- rm -rf "$dest/config" "$dest/model-store"
    kubectl -n "$ns" cp "$BUILD/config" "$pod:$dest/config"
    kubectl -n "$ns" cp "$BUILD/model-store" "$pod:$dest/model-store"
    kubectl -n "$ns" exec "$pod" -- ls -lR "$dest" ;;
  *) echo "unsupported storage URI: $URI (s3://, gs://, pvc://)" >&2; exit 2 ;;
esac
echo "uploaded $BUILD/{config,model-store} -> $URI"
