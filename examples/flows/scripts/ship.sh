#!/usr/bin/env bash
# Shipping always fails (exit 3): the saga rolls back.
set -euo pipefail
echo "carrier unavailable" >&2
exit 3
