#!/usr/bin/env bash
# Raw PostgreSQL queue limits, measured with pgbench on a given server, for comparison with
# floxy's Postgres store (benches/benches/all/postgres.rs, part `ceilings` of
# `cargo bench -p floxy-benches`, runs this script against its own server so both columns
# come from the same run).
#
#   scripts/pgbench-raw.sh <database-url> [seconds-per-run] [clients...]
#
# Two workloads on a queue table in schema floxy_raw (pre-filled with enough ready jobs for
# the whole run; the claim uses a partial index in claim order, like floxy's):
#   single   one transaction claiming one job (UPDATE ... WHERE id = (SELECT ... ORDER BY
#            run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)), then one completing it
#   batch100 one transaction claiming 100 jobs the same way, then one
#            UPDATE ... WHERE id = ANY($ids) completing them
# Output, one line per run:  raw <workload> clients=<n> tps=<x> jobs_per_s=<y>
# Needs pgbench (PostgreSQL client tools) on PATH or in FLOXY_PG_BIN.
set -euo pipefail
url=${1:?usage: $0 <database-url> [seconds] [clients...]}
secs=${2:-10}
shift $(( $# >= 2 ? 2 : 1 ))
clients=("$@")
[ ${#clients[@]} -gt 0 ] || clients=(1 4 16)
bin=${FLOXY_PG_BIN:-/usr/lib/postgresql/15/bin}
pgbench=pgbench
[ -x "$bin/pgbench" ] && pgbench="$bin/pgbench"
psql=psql
[ -x "$bin/psql" ] && psql="$bin/psql"
command -v "$pgbench" >/dev/null || { echo "pgbench not found (apt-get install -y postgresql-client-15)" >&2; exit 1; }

export PGOPTIONS='-c client_min_messages=warning'
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT

claim_where="handler = 'noop' AND lease_owner IS NULL AND NOT done AND run_at <= 1"
cat > "$dir/single.sql" <<SQL
BEGIN;
UPDATE floxy_raw.jobs SET lease_owner = 'w', lease_expires_at = 60000, attempt = attempt + 1 WHERE id = (SELECT id FROM floxy_raw.jobs WHERE $claim_where ORDER BY run_at, id LIMIT 1 FOR UPDATE SKIP LOCKED) RETURNING id \gset
COMMIT;
BEGIN;
UPDATE floxy_raw.jobs SET done = true WHERE id = :id;
COMMIT;
SQL
cat > "$dir/batch100.sql" <<SQL
BEGIN;
WITH c AS (UPDATE floxy_raw.jobs SET lease_owner = 'w', lease_expires_at = 60000, attempt = attempt + 1 WHERE id IN (SELECT id FROM floxy_raw.jobs WHERE $claim_where ORDER BY run_at, id LIMIT 100 FOR UPDATE SKIP LOCKED) RETURNING id) SELECT array_agg(id)::text AS ids FROM c \gset
COMMIT;
BEGIN;
UPDATE floxy_raw.jobs SET done = true WHERE id = ANY(:ids::bigint[]);
COMMIT;
SQL

prepare() {
  local rows=$1
  "$psql" -q -X -v ON_ERROR_STOP=1 "$url" <<SQL >/dev/null
DROP SCHEMA IF EXISTS floxy_raw CASCADE;
CREATE SCHEMA floxy_raw;
CREATE TABLE floxy_raw.jobs (
  id bigserial PRIMARY KEY, handler text NOT NULL, run_at bigint NOT NULL,
  attempt int NOT NULL DEFAULT 0, lease_owner text, lease_expires_at bigint,
  done boolean NOT NULL DEFAULT false) WITH (fillfactor = 70);
INSERT INTO floxy_raw.jobs (handler, run_at) SELECT 'noop', 0 FROM generate_series(1, $rows);
CREATE INDEX jobs_ready ON floxy_raw.jobs (handler, run_at, id) WHERE lease_owner IS NULL AND NOT done;
VACUUM ANALYZE floxy_raw.jobs;
CHECKPOINT;
SQL
}

run() {
  local name=$1 per=$2 c=$3 rows=$4
  prepare "$rows"
  local threads=$(( c < 2 ? c : 2 ))
  local out
  out=$("$pgbench" -n -M prepared -T "$secs" -c "$c" -j "$threads" -f "$dir/$name.sql" "$url" 2>&1) || {
    echo "$out" >&2; exit 1; }
  local tps
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p' | head -1)
  echo "raw $name clients=$c tps=$tps jobs_per_s=$(awk -v t="$tps" -v p="$per" 'BEGIN{printf "%.0f", t*p}')"
}

for c in "${clients[@]}"; do
  run single 1 "$c" $(( 100000 + 20000 * secs ))
done
for c in "${clients[@]}"; do
  run batch100 100 "$c" $(( 200000 + 100000 * secs ))
done
"$psql" -q -X "$url" -c "DROP SCHEMA IF EXISTS floxy_raw CASCADE" >/dev/null
