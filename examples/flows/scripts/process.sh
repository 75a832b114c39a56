#!/usr/bin/env bash
# Floxy Pro README's script handler: doubles .value (0 when absent).
set -euo pipefail
echo "$INPUT" | jq -c '.value = ((.value // 0) * 2)'
