#!/usr/bin/env bash
# Charges the order: adds .charged = .amount.
set -euo pipefail
echo "$INPUT" | jq -c '. + {charged: (.amount // 0)}'
