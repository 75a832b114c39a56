#!/usr/bin/env bash
# Compensation of reserve: records that it ran (FLOXY_REASON: failure or cancel).
set -euo pipefail
echo "release reason=${FLOXY_REASON:-} step=${FLOXY_STEP_NAME:-}" >&2
jq -cn --arg r "${FLOXY_REASON:-}" '{released: true, reason: $r}'
