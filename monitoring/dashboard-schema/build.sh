#!/usr/bin/env bash
# Builds (once) the dashboard schema validator and prints its path. The binary is cached outside the clone,
# keyed by this directory's sources, go.mod/go.sum (the pinned grafana-foundation-sdk) and the Go version, so
# a second run is instant and works offline; the module comes from the Go module proxy on the first run.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
CACHE="${DASHBOARD_SCHEMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/image-moderation/dashboard-schema}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
export GOMODCACHE="$CACHE/go/mod" GOCACHE="$CACHE/go/build" GOPATH="$CACHE/go/path"

key="$( (cd "$HERE" && cat go.mod go.sum ./*.go && go version) | sha256sum | cut -c1-16)"
bin="$CACHE/bin/dashboard-schema-$key"
if [[ ! -x "$bin" ]]; then
  mkdir -p "$CACHE/bin"
  echo "building the dashboard schema validator ($(sed -n 's/^require //p' "$HERE/go.mod")) ..." >&2
  tmp="$(mktemp "$CACHE/bin/.build.XXXXXX")"
  trap 'rm -f "$tmp"' EXIT
  (cd "$HERE" && nice -n 10 go build -trimpath -ldflags "-s -w" -o "$tmp" .)
  mv -f "$tmp" "$bin"
fi
echo "$bin"
