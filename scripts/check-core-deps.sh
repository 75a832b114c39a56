#!/usr/bin/env bash
# floxy-core must stay pure: no async runtime, no database crates, in any feature combination.
set -euo pipefail
cd "$(dirname "$0")/.."
forbidden='^(tokio|sqlx|sqlx-core|redb|mio|async-std|tokio-postgres|rusqlite) '
tree=$(cargo tree -p floxy-core --all-features -e normal,build --prefix none --format '{p}' 2>/dev/null | sort -u)
if echo "$tree" | grep -E "$forbidden"; then
  echo "ERROR: floxy-core depends on a forbidden crate (above). The core must stay sans-IO." >&2
  exit 1
fi
# No clock reads or spawning in the core's source either.
if grep -rnE 'SystemTime::now|Instant::now|tokio::(spawn|time|runtime)|thread::spawn|rand::' floxy-core/src; then
  echo "ERROR: floxy-core reads a clock, spawns or uses entropy (above)." >&2
  exit 1
fi
echo "floxy-core dependency check: ok"
