#!/usr/bin/env bash
# Reserves stock: adds .reserved = true.
set -euo pipefail
echo "$INPUT" | jq -c '. + {reserved: true}'
