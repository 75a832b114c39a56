#!/usr/bin/env bash
# Passes its input through, tagged with the step name.
set -euo pipefail
echo "$INPUT" | jq -c --arg s "${FLOXY_STEP_NAME:-}" '. + {($s): true}'
