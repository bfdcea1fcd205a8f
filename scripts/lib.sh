#!/usr/bin/env bash
# Shared process control for the local stack: one pidfile and one log per service under .run/.
# Sourced by scripts/<service>.sh; every service binds to loopback only (see stack.env).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RUN_DIR="${RUN_DIR:-$ROOT/.run}"
LOG_DIR="$RUN_DIR/logs"
mkdir -p "$RUN_DIR" "$LOG_DIR"
# stack.env's ports and host, each overridable by the environment (as handlers/stack.py reads them).
while IFS='=' read -r _key _value; do
  [[ -n ${!_key:-} ]] || export "$_key=$_value"
done < <(grep -E '^[A-Z][A-Z0-9_]*=' "$ROOT/stack.env")
unset _key _value
PY="${PY:-$ROOT/.venv/bin/python}"

pidfile() { echo "$RUN_DIR/$1.pid"; }

maven_copy() {  # maven_copy POM DIR [MVN_ARGS...] : the POM's runtime jars -> DIR, from Maven Central
  local pom="$1" dir="$2"; shift 2
  # Debian's Maven 3.8 writes ANSI resets (ESC[0m) even with -B and style.color=never: stripped from the log.
  mvn -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$dir" "$@" \
    2>&1 | sed 's/\x1b\[[0-9;]*m//g'
}

S3_DIR="$RUN_DIR/s3"
s3_credentials() {  # the local object store's root key pair, made once, in AWS's shared credentials file format
  [[ -s "$S3_DIR/credentials" ]] && return 0
  mkdir -p "$S3_DIR"
  ( umask 077
    printf '[default]\naws_access_key_id = %s\naws_secret_access_key = %s\n' \
      "local$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" "$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')" \
      > "$S3_DIR/credentials" )
}

local_s3_env() {  # fetchers started here (gateway, bridge) read s3:// references from the local store, unless set
  s3_credentials
  export FETCH_S3_ENDPOINT_URL="${FETCH_S3_ENDPOINT_URL-http://$STACK_HOST:$S3_PORT}"
  export FETCH_S3_BUCKETS="${FETCH_S3_BUCKETS-$S3_BUCKET}"
  export FETCH_S3_REGION="${FETCH_S3_REGION-us-east-1}"
  # boto3's standard chain: environment keys win, else this shared credentials file (never on a command line)
  [[ -n ${AWS_ACCESS_KEY_ID:-} ]] || export AWS_SHARED_CREDENTIALS_FILE="${AWS_SHARED_CREDENTIALS_FILE:-$S3_DIR/credentials}"
}

is_running() {  # is_running NAME   (a killed process not yet reaped, a zombie, does not count)
  local f pid; f="$(pidfile "$1")"
  [[ -f "$f" ]] || return 1
  pid="$(cat "$f")"
  kill -0 "$pid" 2>/dev/null && ! grep -qs '^State:[[:space:]]*Z' "/proc/$pid/status"
}

start_bg() {  # start_bg NAME CMD...   (own process group so stop kills children too)
  local name="$1"; shift
  if is_running "$name"; then echo "$name already running (pid $(cat "$(pidfile "$name")"))"; return 0; fi
  setsid "$@" >>"$LOG_DIR/$name.log" 2>&1 < /dev/null 3>&- &  # no inherited fd keeps a caller's pipe open
  echo $! > "$(pidfile "$name")"
  echo "$name started (pid $!, log $LOG_DIR/$name.log)"
}

stop_bg() {  # stop_bg NAME [SIGNAL] [TIMEOUT_S]
  local name="$1" sig="${2:-TERM}" timeout="${3:-30}" f pid
  f="$(pidfile "$name")"
  if ! is_running "$name"; then rm -f "$f"; echo "$name not running"; return 0; fi
  pid="$(cat "$f")"
  kill -"$sig" -- "-$pid" 2>/dev/null || kill -"$sig" "$pid" 2>/dev/null || true
  for _ in $(seq 1 $((timeout * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true; fi
  rm -f "$f"; echo "$name stopped"
}

wait_http() {  # wait_http URL TIMEOUT_S NAME : poll until URL answers 2xx
  local url="$1" timeout="$2" name="$3"
  for _ in $(seq 1 $((timeout * 4))); do
    if curl -fs -o /dev/null --max-time 2 "$url"; then return 0; fi
    if ! is_running "$name"; then echo "$name died; last log lines:" >&2; tail -n 40 "$LOG_DIR/$name.log" >&2; return 1; fi
    sleep 0.25
  done
  echo "$name not ready after ${timeout}s ($url); last log lines:" >&2; tail -n 40 "$LOG_DIR/$name.log" >&2; return 1
}

status_line() {  # status_line NAME URL
  if is_running "$1"; then
    if curl -fsS -o /dev/null --max-time 2 "$2"; then echo "$1: running, ready ($2)"; else echo "$1: running, NOT ready ($2)"; fi
  else echo "$1: stopped"; fi
}

apt_install() {  # apt_install PACKAGE COMMAND... : install a Debian package once, unless its commands exist
  local pkg="$1" cmd missing=0; shift
  for cmd in "$@"; do command -v "$cmd" >/dev/null || missing=1; done
  [[ $missing -eq 0 ]] && return 0
  if [[ $(id -u) -ne 0 ]]; then echo "$* missing: run 'sudo apt-get install -y $pkg'" >&2; return 1; fi
  phase "apt-get: Debian's $pkg installed" _apt_get_install "$pkg"
}

_apt_get_install() {  # _apt_get_install PACKAGE : install, refreshing the package lists only when needed
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q --no-install-recommends "$1" || { apt-get update -q && apt-get install -y -q --no-install-recommends "$1"; }
}

phase() {  # phase LABEL CMD... : CMD's output to a log; prints "LABEL (N s)", or on failure the log's tail and path
  # One line per long step instead of minutes of tool chatter (go: downloading, pip, Maven). In a subshell
  # with errexit, outside any `||` (which would switch errexit off inside a function passed as CMD).
  local label="$1" start=$SECONDS log rc errexit=0; shift
  log="$LOG_DIR/$(printf '%s' "$label" | tr -cs 'a-zA-Z0-9._' '-' | sed 's/^-*//; s/-*$//').log"
  [[ $- == *e* ]] && errexit=1
  [[ -t 1 ]] && printf '%s ...' "$label"  # on a terminal, say what runs now; the result line replaces it
  set +e
  ( set -e; "$@" ) >"$log" 2>&1 </dev/null
  rc=$?
  [[ $errexit -eq 1 ]] && set -e
  [[ -t 1 ]] && printf '\r\033[K'
  if [[ $rc -eq 0 ]]; then
    echo "$label ($((SECONDS - start)) s)"
  else
    { echo "$label FAILED (exit $rc after $((SECONDS - start)) s); last lines of $log:"; tail -n 30 "$log" | sed 's/^/  /'; } >&2
  fi
  return $rc
}
