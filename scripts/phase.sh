#!/usr/bin/env bash
# scripts/phase.sh LABEL CMD... : lib.sh's `phase` for Make recipes (one line with the duration, the output
# in .run/logs/LABEL.log, its tail on failure).
set -euo pipefail
# shellcheck source=lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
phase "$@"
