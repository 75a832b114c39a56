#!/usr/bin/env bash
# Runs every test of the workspace on a fresh Debian machine: installs what the tests need
# (PostgreSQL 15 server binaries and pg_partman, jq, promtool, Chromium and chromedriver),
# then runs unit, integration, property, conformance, simulation, loom and chaos tests. Test harnesses start their own throwaway
# PostgreSQL clusters and proxies; nothing has to be running beforehand.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

# --- system packages -------------------------------------------------------------------
need_pkgs=()
pg_bin=/usr/lib/postgresql/15/bin
[ -x "$pg_bin/initdb" ] || need_pkgs+=(postgresql-15)
[ -f /usr/share/postgresql/15/extension/pg_partman.control ] || need_pkgs+=(postgresql-15-partman)
# The example flows' scripts use jq; the alert rules are checked with promtool; the web
# console is tested in a real headless Chromium driven through chromedriver.
command -v jq >/dev/null || need_pkgs+=(jq)
command -v promtool >/dev/null || need_pkgs+=(prometheus)
command -v chromium >/dev/null || need_pkgs+=(chromium)
command -v chromedriver >/dev/null || need_pkgs+=(chromium-driver)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  step "installing ${need_pkgs[*]}"
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
export PATH="$pg_bin:$PATH"

# --- checks ----------------------------------------------------------------------------
step "floxy-core stays pure"
./scripts/check-core-deps.sh

# --- tests -----------------------------------------------------------------------------
# The fuzz targets (tests/fuzz_*.rs of floxy-core, floxy-spec, floxy-store-redb) run here
# with fixed case counts (seconds); FLOXY_FUZZ_SCALE=N multiplies them for a longer run.
step "workspace tests (unit, integration, property, fuzz, conformance, simulation)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --all-features --no-fail-fast
else
  cargo test --workspace --all-features --no-fail-fast
fi
step "chaos: short profile on memory, redb, PostgreSQL (proxy faults + one immediate restart), SIGKILLed workers"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run -p floxy-chaos --all-features --test short_profile --run-ignored ignored-only
else
  cargo test -p floxy-chaos --all-features --test short_profile -- --ignored
fi

step "doc tests"
cargo test --workspace --all-features --doc

step "examples (each exits non-zero if its saga does not end as documented)"
for ex in order_saga savepoint fork_join conditions human_approval dlq_requeue cancel_abort; do
  echo "-- example $ex"
  cargo run -q -p floxy --example "$ex" >/dev/null
done
# The README's first command: the order saga on a redb file, twice (the second run reopens it).
redb_dir=$(mktemp -d)
for run in 1 2; do
  echo "-- example order_saga on redb (run $run)"
  cargo run -q -p floxy --features redb --example order_saga -- --redb "$redb_dir/orders.redb" >/dev/null
done
rm -rf "$redb_dir"

step "loom model of the memory store's claim path"
RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p floxy-store-memory --test loom_claim --release

step "loom model of the runtime's lease table (registration, cancels, heartbeat wake-ups and answers)"
RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p floxy --test loom_leases --release

step "loom model of the redb writer's hand-over (batches between the preparing and the committing thread)"
RUSTFLAGS="--cfg floxy_loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p floxy-store-redb --test loom_writer --release

echo
echo "all tests passed"
