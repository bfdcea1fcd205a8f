#!/usr/bin/env bash
# Local S3-compatible object store: versitygw (Versity S3 Gateway, POSIX backend: buckets are folders of
# .run/s3/data) built with `go install` from the Go module proxy into .cache/tools/bin, on 127.0.0.1:$S3_PORT,
# with the bucket $S3_BUCKET holding the sample photos. A real S3 server (SigV4, ETags, ranges, errors), not a mock.
#   scripts/s3.sh build|start|stop|status|running|seed|run CMD...   (run: CMD with the local store's FETCH_*/AWS_* env)
# The root key pair is made once into .run/s3/credentials (AWS shared credentials file; lib.sh's local_s3_env
# points boto3's standard chain at it) and reaches versitygw through its environment, never a command line.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
VERSITYGW_VERSION="v1.8.0"   # pinned; the Go module proxy serves it (cold build: about 4 min, 190 s of CPU)
TOOLS="$ROOT/.cache/tools"
BIN="$TOOLS/bin"
S3_URL="http://$STACK_HOST:$S3_PORT"

build() {
  local stamp="$BIN/.versitygw-$VERSITYGW_VERSION"
  [[ -x "$BIN/versitygw" && -f "$stamp" ]] && return 0
  mkdir -p "$BIN" "$TOOLS/gomod"
  phase "s3: versitygw $VERSITYGW_VERSION built with go install" env GOTOOLCHAIN=local GOFLAGS=-mod=mod \
    GOPATH="$TOOLS/gomod" GOMODCACHE="$TOOLS/gomod/pkg/mod" GOBIN="$BIN" CGO_ENABLED=0 \
    nice -n 10 go install -ldflags "-s -w" "github.com/versity/versitygw/cmd/versitygw@$VERSITYGW_VERSION"
  touch "$stamp"
}

key() { sed -n "s/^$1 = //p" "$S3_DIR/credentials"; }

start() {
  if [[ ! -x "$BIN/versitygw" ]] && ! command -v go >/dev/null; then  # `make up`/`make demo` do not require Go
    echo "s3: skipped: building versitygw needs Go >= 1.26 (https://go.dev/dl/); s3:// references will fail" >&2
    return 0
  fi
  build
  s3_credentials
  mkdir -p "$S3_DIR/data" "$S3_DIR/meta"
  # --keep-alive: versitygw closes every connection after one answer unless told otherwise (AWS S3, MinIO and
  # Ceph keep them open); without it each reference the bridge fetches paid a TCP connect on both sides.
  ROOT_ACCESS_KEY_ID="$(key aws_access_key_id)" ROOT_SECRET_ACCESS_KEY="$(key aws_secret_access_key)" \
    start_bg s3 "$BIN/versitygw" --port "$STACK_HOST:$S3_PORT" --quiet --keep-alive posix --sidecar "$S3_DIR/meta" "$S3_DIR/data"
  # Any HTTP answer means it listens (anonymous requests get S3's 403 AccessDenied).
  for _ in $(seq 1 120); do
    [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$S3_URL/" || true) != 000 ]] && break
    is_running s3 || { echo "s3 died; last log lines:" >&2; tail -n 40 "$LOG_DIR/s3.log" >&2; exit 1; }
    sleep 0.25
  done
  seed
  echo "s3 ready: $S3_URL (bucket $S3_BUCKET)"
}

seed() { local_s3_env; "$PY" -m demo.s3 seed; }

stop() { stop_bg s3; }

status() {
  if is_running s3; then echo "s3: running ($S3_URL, bucket $S3_BUCKET, data $S3_DIR/data)"; else echo "s3: stopped"; fi
}

case "${1:-}" in
  build) build ;;
  start) start ;;
  stop) stop ;;
  status) status ;;
  seed) seed ;;
  run) shift; local_s3_env; exec "$@" ;;
  running) is_running s3 ;;
  *) echo "usage: $0 build|start|stop|status|running|seed|run CMD..." >&2; exit 2 ;;
esac
