#!/usr/bin/env bash
# Always fails (exit 1).
set -euo pipefail
echo "failing on purpose in ${FLOXY_STEP_NAME:-?}" >&2
exit 1
