#!/usr/bin/env bash
# One folder of the pinned Python wheels outside the clone (WHEELHOUSE, default ~/.cache/image-moderation/wheels),
# from which `make setup` and the image builds (scripts/images.sh) install offline.
# Why: PyPI's responses reach this machine without Cache-Control (the egress proxy strips it), so pip's own HTTP
# cache keeps nothing, and every fresh .venv downloaded ~4 GB again (PyPI's torch is the CUDA build, with its
# nvidia-* wheels); one interrupted 400 MB download then failed the whole set-up (a CI run did). Here a wheel is
# downloaded once, in a temporary file that only a complete download replaces, resumed and retried.
#   scripts/wheelhouse.sh fill REQUIREMENTS [PIP]   every wheel REQUIREMENTS resolves to, missing ones only
#   scripts/wheelhouse.sh path                      the folder
set -euo pipefail
WHEELHOUSE="${WHEELHOUSE:-$HOME/.cache/image-moderation/wheels}"
ATTEMPTS="${WHEELHOUSE_ATTEMPTS:-4}"  # whole `pip download` runs; each keeps the wheels the last one completed

fill() {  # fill REQUIREMENTS PIP
  local req="$1" pip="$2" attempt
  mkdir -p "$WHEELHOUSE"
  # Offline first: no index request at all when every wheel is already here.
  if "$pip" download --quiet --disable-pip-version-check --no-index --find-links "$WHEELHOUSE" -d "$WHEELHOUSE" \
      -r "$req" >/dev/null 2>&1; then
    echo "wheelhouse: every wheel of $req already in $WHEELHOUSE"
    return 0
  fi
  for ((attempt = 1; attempt <= ATTEMPTS; attempt++)); do
    if "$pip" download --disable-pip-version-check --progress-bar off --resume-retries 10 --retries 10 \
        --timeout 60 --find-links "$WHEELHOUSE" -d "$WHEELHOUSE" -r "$req"; then
      return 0
    fi
    echo "wheelhouse: pip download attempt $attempt of $ATTEMPTS failed; the wheels it completed stay" >&2
    sleep $((attempt * 10))
  done
  return 1
}

case "${1:-}" in
  fill) [[ $# -ge 2 ]] || { echo "usage: $0 fill REQUIREMENTS [PIP]" >&2; exit 2; }
        fill "$2" "${3:-pip}" ;;
  path) echo "$WHEELHOUSE" ;;
  *) echo "usage: $0 fill REQUIREMENTS [PIP] | path" >&2; exit 2 ;;
esac
