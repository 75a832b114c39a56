#!/usr/bin/env bash
# Compensation of charge.
set -euo pipefail
echo "refund reason=${FLOXY_REASON:-}" >&2
jq -cn '{refunded: true}'
